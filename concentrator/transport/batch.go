package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Datagram is one datagram of a Batch: to read, Buf is the buffer offered
// (its length) and Read sets N and From; to write, Buf is the payload and
// To its destination.
type Datagram struct {
	Buf  []byte
	N    int
	From netip.AddrPort // IPv4 addresses as 4-octet addresses, not mapped
	To   netip.AddrPort
}

// Batch reads and writes a UDP socket's datagrams a batch at a time
// (recvmmsg, sendmmsg) without allocating: the message headers, their
// iovecs and the socket addresses are made once, for at most Cap
// datagrams a call, and each source address is decoded straight into a
// netip.AddrPort. (golang.org/x/net's batches allocate a net.UDPAddr
// for every datagram read: under a flood of 100,000 datagrams a second,
// half of all the node allocated.) A Batch is used by one goroutine at a
// time.
type Batch struct {
	rc    syscall.RawConn
	v6    bool // an AF_INET6 socket: IPv4 peers come and go v4-mapped
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family
	read  func(fd uintptr) bool
	write func(fd uintptr) bool
	n     int   // datagrams of the call under way
	got   int   // its result
	err   error // its error
}

// NewBatch makes a Batch of at most size datagrams a call for u.
func (u *UDPConn) NewBatch(size int) (*Batch, error) {
	if size < 1 {
		return nil, fmt.Errorf("transport: batch of %d", size)
	}
	b := &Batch{rc: u.rc, v6: u.v6, hdrs: make([]unix.Mmsghdr, size), iovs: make([]unix.Iovec, size), names: make([]unix.RawSockaddrInet6, size)}
	b.read = func(fd uintptr) bool { return b.call(fd, unix.SYS_RECVMMSG) }
	b.write = func(fd uintptr) bool { return b.call(fd, unix.SYS_SENDMMSG) }
	return b, nil
}

// Cap is the most datagrams one call reads or writes.
func (b *Batch) Cap() int { return len(b.hdrs) }

// call runs one recvmmsg or sendmmsg of b.n datagrams; false (to wait
// for the socket) on EAGAIN. A raw system call: the socket is
// non-blocking (UDPConn.WriteTo says why).
func (b *Batch) call(fd uintptr, trap uintptr) bool {
	for {
		r, _, e := unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.n), 0, 0, 0)
		switch e {
		case 0:
			b.got, b.err = int(r), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			b.got, b.err = 0, e
			return true
		}
	}
}

// Read reads up to len(ds) datagrams (at most Cap), waiting for the
// first; it fills each one's N and From and returns how many it read. A
// datagram longer than its Buf is cut to it (N is then len(Buf)).
func (b *Batch) Read(ds []Datagram) (int, error) {
	n := b.prepare(ds)
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		b.hdrs[i].Hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
	}
	if err := b.rc.Read(b.read); err != nil {
		return 0, err
	}
	if b.err != nil {
		return 0, &net.OpError{Op: "recvmmsg", Net: "udp", Err: b.err}
	}
	for i := range b.got {
		ds[i].N = int(b.hdrs[i].Len)
		ds[i].From = b.decode(i)
	}
	return b.got, nil
}

// Write sends up to len(ds) datagrams (at most Cap), waiting for room
// for the first, and returns how many the kernel took. An error is about
// the first datagram not sent.
func (b *Batch) Write(ds []Datagram) (int, error) {
	n := b.prepare(ds)
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		l, err := encodeSockaddr(&b.names[i], ds[i].To, b.v6)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			n = i // send what comes before it
			break
		}
		b.hdrs[i].Hdr.Namelen = l
	}
	b.n = n
	if err := b.rc.Write(b.write); err != nil {
		return 0, err
	}
	if b.err != nil {
		return b.got, &net.OpError{Op: "sendmmsg", Net: "udp", Err: b.err}
	}
	return b.got, nil
}

// prepare sets up the headers of the call for ds (at most Cap of them),
// each with its buffer and socket address, and returns how many.
func (b *Batch) prepare(ds []Datagram) int {
	n := min(len(ds), len(b.hdrs))
	b.n, b.got, b.err = n, 0, nil
	for i := range n {
		h := &b.hdrs[i]
		*h = unix.Mmsghdr{}
		h.Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Hdr.Iov = &b.iovs[i]
		h.Hdr.SetIovlen(1)
		if buf := ds[i].Buf; len(buf) > 0 {
			b.iovs[i].Base = &buf[0]
			b.iovs[i].SetLen(len(buf))
		} else {
			b.iovs[i].Base = &zero[0]
			b.iovs[i].SetLen(0)
		}
	}
	return n
}

var zero [1]byte // the iovec base of an empty buffer

// errAddrFamily: a destination the socket cannot reach (IPv6 on an IPv4
// socket, or no address).
var errAddrFamily = errors.New("transport: destination not of the socket's address family")

// encodeSockaddr writes to into sa as the socket address of a socket of
// family AF_INET6 (v6) or AF_INET, and returns its length.
func encodeSockaddr(sa *unix.RawSockaddrInet6, to netip.AddrPort, v6 bool) (uint32, error) {
	a := to.Addr()
	switch {
	case !a.IsValid():
		return 0, errAddrFamily
	case !v6 && a.Is4():
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		putPort(&sa.Port, to.Port())
		return unix.SizeofSockaddrInet4, nil
	case v6:
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		putPort(&sa.Port, to.Port())
		if z := a.Zone(); z != "" {
			sa.Scope_id = zoneIndex(z)
		}
		return unix.SizeofSockaddrInet6, nil
	}
	return 0, errAddrFamily
}

// decode is the source address of datagram i, IPv4 unmapped.
func (b *Batch) decode(i int) netip.AddrPort {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), getPort(&s4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if a.Is4In6() {
			a = a.Unmap()
		} else if sa.Scope_id != 0 {
			a = a.WithZone(zoneName(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, getPort(&sa.Port))
	}
	return netip.AddrPort{}
}

// Ports in socket addresses are in network byte order.
func putPort(p *uint16, v uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(v>>8), byte(v)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// zoneName names an interface index as net.UDPAddr does (link-local
// peers only: it may allocate).
func zoneName(index uint32) string {
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(index), 10)
}

func zoneIndex(zone string) uint32 {
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	n, _ := strconv.ParseUint(zone, 10, 32)
	return uint32(n)
}
