// Package transport is a node's packet I/O: datagram sockets bound to
// local addresses, over which IKE, NAT-T keepalives and user-space ESP
// leave and arrive. UDP is what a node uses; Network is an in-memory
// network on which several nodes and simulated peers run in one test
// process, without sockets.
package transport

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is one bound datagram socket.
type Conn interface {
	// ReadFrom waits for the next datagram. After Close it returns an
	// error that matches net.ErrClosed.
	ReadFrom(b []byte) (n int, from netip.AddrPort, err error)
	// WriteTo sends b (copied before it returns) to the address.
	WriteTo(b []byte, to netip.AddrPort) error
	// LocalAddr is the bound address (IPv4-mapped addresses unmapped).
	LocalAddr() netip.AddrPort
	Close() error
}

// Transport binds sockets. Port 0 binds an ephemeral port.
type Transport interface {
	Listen(local netip.AddrPort) (Conn, error)
}

// UDP binds real UDP sockets.
type UDP struct{}

// Listen implements Transport.
func (UDP) Listen(local netip.AddrPort) (Conn, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
	if err != nil {
		return nil, err
	}
	u, err := newUDPConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return u, nil
}

// UDPConn is a Conn on a UDP socket.
type UDPConn struct {
	c  *net.UDPConn
	rc syscall.RawConn
	v6 bool // an AF_INET6 socket
}

func newUDPConn(c *net.UDPConn) (*UDPConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	u := &UDPConn{c: c, rc: rc}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("transport: getsockname: %w", serr)
	}
	switch sa.(type) {
	case *unix.SockaddrInet4:
	case *unix.SockaddrInet6: // also net's dual-stack socket of a wildcard address
		u.v6 = true
	default:
		return nil, fmt.Errorf("transport: a UDP socket of address %T", sa)
	}
	return u, nil
}

// Socket is the UDP socket, for data planes that configure it (kernel
// ESP-in-UDP decapsulation, buffer sizes).
func (u *UDPConn) Socket() *net.UDPConn { return u.c }

func (u *UDPConn) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	n, from, err := u.c.ReadFromUDPAddrPort(b)
	return n, unmap(from), err
}

// WriteTo sends with a raw system call (sender.sendto).
func (u *UDPConn) WriteTo(b []byte, to netip.AddrPort) error {
	w := senders.Get().(*sender)
	defer senders.Put(w)
	l, err := encodeSockaddr(&w.sa, to, u.v6)
	if err != nil {
		return &net.OpError{Op: "sendto", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: err}
	}
	w.b, w.salen, w.e = b, l, 0
	err = u.rc.Write(w.send)
	w.b = nil
	if err != nil {
		return err
	}
	if w.e != 0 {
		return &net.OpError{Op: "sendto", Net: "udp", Addr: net.UDPAddrFromAddrPort(to), Err: os.NewSyscallError("sendto", w.e)}
	}
	return nil
}

// A node's sockets are non-blocking, so their sendto, recvmmsg and
// sendmmsg never wait: they are raw system calls (sender.sendto,
// Batch.call), which keep the goroutine's processor. An ordinary one
// gives it up for the call, and the runtime's monitor takes it from a
// call that lasts over about 20 µs (a datagram sent over loopback is
// delivered within the sender's call) and wakes another thread to run
// it, while the monitor itself keeps waking every 20 µs: on a node of one
// core, 19,800 thread switches in 4 s of 1,000 setups a second, against
// 6,500 with raw calls, and 0.904 of the CPU per SA without a state store
// (`benchnode --against`, 8 alternated rounds, cheaper in 8 of 8).

// sender holds one WriteTo's arguments for the function given to the
// socket's RawConn, made once per sender so that a send allocates nothing.
type sender struct {
	b     []byte
	sa    unix.RawSockaddrInet6 // room for either family
	salen uint32
	e     syscall.Errno
	send  func(fd uintptr) bool
}

var senders = sync.Pool{New: func() any {
	w := &sender{}
	w.send = w.sendto
	return w
}}

// sendto is one sendto of w.b; false (to wait for room) on EAGAIN.
func (w *sender) sendto(fd uintptr) bool {
	var p unsafe.Pointer
	if len(w.b) > 0 {
		p = unsafe.Pointer(&w.b[0])
	}
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(p), uintptr(len(w.b)), 0, uintptr(unsafe.Pointer(&w.sa)), uintptr(w.salen))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		w.e = e
		return true
	}
}

func (u *UDPConn) LocalAddr() netip.AddrPort {
	return unmap(u.c.LocalAddr().(*net.UDPAddr).AddrPort())
}

func (u *UDPConn) Close() error { return u.c.Close() }

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// Drops is the kernel's count of datagrams it dropped for this socket
// (SO_MEMINFO: mostly a full receive buffer), since the socket was made.
func (u *UDPConn) Drops() (uint64, error) {
	rc, err := u.c.SyscallConn()
	if err != nil {
		return 0, err
	}
	// struct sock meminfo (linux/sock_diag.h): SK_MEMINFO_DROPS is the 9th.
	var info [9]uint32
	var serr error
	if err := rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(info))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, fmt.Errorf("SO_MEMINFO: %w", serr)
	}
	return uint64(info[8]), nil
}
