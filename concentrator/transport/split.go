package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Split is a pair of UDP sockets bound to one address and port, between
// which the kernel divides the arriving datagrams (ListenSplit): Bulk
// receives what opens a new IKE SA without having proved its source
// address (IKE_SA_INIT without a COOKIE) and whatever is too short to
// classify; Prio everything else: messages of existing IKE SAs (a non-zero
// responder SPI), IKE_SA_INITs that lead with a COOKIE, ESP-in-UDP. Each
// has its own receive buffer, so a flood of new IKE_SA_INITs that its
// reader cannot keep up with fills Bulk's buffer and the kernel drops
// from it, never from the one the established SAs' traffic waits in.
// Both send from the same address and port; replies go out on Prio.
type Split struct {
	Prio, Bulk *UDPConn
}

// Socket indexes in the SO_REUSEPORT group, in the order the sockets
// join it (bind). Bulk is 0: a classic BPF program whose load runs past
// the datagram's end returns 0, so a datagram too short to classify goes
// there.
const (
	splitBulk = 0
	splitPrio = 1
)

// ErrPortInUse: the address and port are bound already (by another
// process, or another socket of this one).
var ErrPortInUse = errors.New("address and port already in use")

// ListenSplit binds a Split to local. natt: the sockets serve the NAT-T
// port, where IKE follows a 4-octet zero non-ESP marker and anything else
// longer than a keepalive is ESP (RFC 3948). The two sockets form an
// SO_REUSEPORT group whose steering program (SO_ATTACH_REUSEPORT_CBPF,
// Linux 4.5 and later) classifies each datagram by its first octets, at
// no cost to the reader. The port must be free: it is probed with a
// plain bind first, so a second node on the same port fails with
// ErrPortInUse rather than sharing it (a socket bound without
// SO_REUSEPORT is refused by the group too). Port 0 binds an ephemeral
// port for both.
func (UDP) ListenSplit(local netip.AddrPort, natt bool) (*Split, error) {
	if local.Port() != 0 {
		probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(local))
		if err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				return nil, fmt.Errorf("%s: %w", local, ErrPortInUse)
			}
			return nil, err
		}
		probe.Close()
	}
	prog, err := splitProgram(natt)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	listen := func(a netip.AddrPort) (*net.UDPConn, error) {
		pc, err := lc.ListenPacket(context.Background(), "udp", net.UDPAddrFromAddrPort(a).String())
		if err != nil {
			return nil, err
		}
		return pc.(*net.UDPConn), nil
	}
	bulk, err := listen(local)
	if err != nil {
		return nil, err
	}
	rc, err := bulk.SyscallConn()
	if err != nil {
		bulk.Close()
		return nil, err
	}
	var aerr error
	if err := rc.Control(func(fd uintptr) {
		aerr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	}); err != nil {
		aerr = err
	}
	if aerr != nil {
		bulk.Close()
		return nil, fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", aerr)
	}
	// The second socket takes the first one's port (local may have asked
	// for an ephemeral one).
	prio, err := listen(netip.AddrPortFrom(local.Addr(), bulk.LocalAddr().(*net.UDPAddr).AddrPort().Port()))
	if err != nil {
		bulk.Close()
		return nil, err
	}
	pc, err := newUDPConn(prio)
	var bc *UDPConn
	if err == nil {
		bc, err = newUDPConn(bulk)
	}
	if err != nil {
		bulk.Close()
		prio.Close()
		return nil, err
	}
	return &Split{Prio: pc, Bulk: bc}, nil
}

// splitProgram is the steering program: it returns the index of the
// socket a datagram (its UDP payload) goes to.
//
//	[natt: a non-zero first word is ESP → Prio]
//	IKE responder SPI (octets 8-15) not zero → Prio (an existing SA)
//	first payload (octet 16) a Notify → Prio (IKE_SA_INIT with a COOKIE,
//	    which RFC 7296 §2.6 puts first; its validity is the reader's check)
//	else → Bulk
//
// A load past the datagram's end ends the program with 0 (Bulk): NAT-T
// keepalives (one octet) and runts.
func splitProgram(natt bool) ([]unix.SockFilter, error) {
	off := uint32(0)
	var ins []bpf.Instruction
	if natt {
		off = 4
		ins = append(ins,
			bpf.LoadAbsolute{Off: 0, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 7},
		)
	}
	ins = append(ins,
		bpf.LoadAbsolute{Off: off + 8, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 5},
		bpf.LoadAbsolute{Off: off + 12, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 3},
		bpf.LoadAbsolute{Off: off + 16, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: payloadNotify, SkipTrue: 1},
		bpf.RetConstant{Val: splitBulk},
		bpf.RetConstant{Val: splitPrio},
	)
	raw, err := bpf.Assemble(ins)
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// payloadNotify is IKEv2's Notify payload type (RFC 7296 §3.2); the
// transport does not import the codec.
const payloadNotify = 41
