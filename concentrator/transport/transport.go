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
	return &UDPConn{c: c}, nil
}

// UDPConn is a Conn on a UDP socket.
type UDPConn struct{ c *net.UDPConn }

// Socket is the UDP socket, for data planes that configure it (kernel
// ESP-in-UDP decapsulation, buffer sizes).
func (u *UDPConn) Socket() *net.UDPConn { return u.c }

func (u *UDPConn) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	n, from, err := u.c.ReadFromUDPAddrPort(b)
	return n, unmap(from), err
}

func (u *UDPConn) WriteTo(b []byte, to netip.AddrPort) error {
	_, err := u.c.WriteToUDPAddrPort(b, to)
	return err
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
