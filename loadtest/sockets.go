package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Every simulated gateway sits behind its own NAT mapping: the engine sees
// it at a private inside address (one per gateway, from 100.64.0.0/10,
// never on the wire) with the standard ports 500 and 4500; on the wire it
// has its own UDP sockets — one for IKE, one for NAT-T, each with its own
// source port. The shard maps between the two, as a NAT does, so a NAT
// rebinding is a new socket and a MOBIKE move a socket on another address.

const (
	virtIKEPort  = 500
	virtNATTPort = 4500
	readBufSize  = 4096 // IKE messages are fragmented below 1280 bytes; ESP test packets are small
)

var virtBase = netip.MustParseAddr("100.64.0.0")

// virtAddr is the inside address of gateway n (1-based); alt selects its
// second address (the other interface for MOBIKE).
func virtAddr(n int, alt bool) netip.Addr {
	b := virtBase.As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(2*(n-1))
	if alt {
		v++
	}
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// gsock is one UDP socket of a gateway.
type gsock struct {
	conn  *net.UDPConn
	gw    *gateway
	virt  netip.AddrPort // what the engine calls it
	real  netip.AddrPort // what the peer sees (before any real NAT)
	natt  bool           // carries the non-ESP marker and ESP
	stale bool           // replaced (NAT rebinding); packets to it are the old mapping's
	// confirm: first packet on this socket confirms a move to it.
	confirm moveKind
}

type moveKind uint8

const (
	moveNone moveKind = iota
	moveRebind
	moveMOBIKE
)

// inbound is one datagram read from a gateway socket.
type inbound struct {
	s    *gsock
	from netip.AddrPort
	data []byte
}

// openSocket binds a UDP socket at addr (port 0: the kernel picks).
func openSocket(addr netip.AddrPort) (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			return nil, fmt.Errorf("%w (raise the open file limit: ulimit -n)", err)
		}
		return nil, err
	}
	return c, nil
}

// fdReserve are the descriptors kept for everything but gateway sockets.
const fdReserve = 256

// fileLimit is the hard limit of open files (0: unknown).
func fileLimit() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Max
}

// raiseFileLimit makes room for need descriptors: the soft limit up to the
// hard limit, the hard limit too when we may (root).
func raiseFileLimit(need uint64) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= need {
		return nil
	}
	want := lim
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err == nil {
		return nil
	}
	if lim.Max > lim.Cur {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	return fmt.Errorf("need %d file descriptors, RLIMIT_NOFILE allows %d (hard %d): raise it (ulimit -n, or run as root), use fewer gateways or --ports-per-gateway 1", need, lim.Cur, lim.Max)
}
