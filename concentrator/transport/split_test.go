package transport

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/bpf"
)

// ikeHeader is a 28-octet IKE header: initiator SPI 1, the given responder
// SPI and first payload, IKE_SA_INIT request.
func ikeHeader(rspi uint64, first byte) []byte {
	b := make([]byte, 28, 64)
	binary.BigEndian.PutUint64(b, 1)
	binary.BigEndian.PutUint64(b[8:], rspi)
	b[16], b[17], b[18], b[19] = first, 0x20, 34, 0x08
	binary.BigEndian.PutUint32(b[24:], 28)
	return b
}

// The kernel steers each datagram to the socket of its class, on the IKE
// port and on the NAT-T port; a reply from Prio comes from the bound port.
func TestListenSplitSteers(t *testing.T) {
	marker := func(b []byte) []byte { return append([]byte{0, 0, 0, 0}, b...) }
	esp := []byte{0x00, 0x00, 0x12, 0x34, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd}
	for _, network := range []string{"udp4", "udp6"} {
		lo := netip.MustParseAddr("127.0.0.1")
		if network == "udp6" {
			lo = netip.IPv6Loopback()
		}
		for _, c := range []struct {
			name string
			natt bool
			dgm  []byte
			prio bool
		}{
			{"IKE_SA_INIT", false, ikeHeader(0, 33), false},
			{"IKE_SA_INIT with a COOKIE", false, ikeHeader(0, 41), true},
			{"existing SA, low SPI half", false, ikeHeader(7, 46), true},
			{"existing SA, high SPI half", false, ikeHeader(7<<32, 46), true},
			{"runt", false, []byte{1, 2, 3}, false},
			{"NAT-T IKE_SA_INIT", true, marker(ikeHeader(0, 33)), false},
			{"NAT-T IKE_SA_INIT with a COOKIE", true, marker(ikeHeader(0, 41)), true},
			{"NAT-T existing SA", true, marker(ikeHeader(9, 46)), true},
			{"ESP", true, esp, true},
			{"keepalive", true, []byte{0xff}, false},
		} {
			sp, err := UDP{}.ListenSplit(netip.AddrPortFrom(lo, 0), c.natt)
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
			to := sp.Prio.LocalAddr()
			if b := sp.Bulk.LocalAddr(); b != to {
				sp.Prio.Close()
				sp.Bulk.Close()
				t.Fatalf("%s: bulk bound to %s, prio to %s", network, b, to)
			}
			client, err := net.ListenUDP(network, &net.UDPAddr{IP: lo.AsSlice()})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.WriteToUDPAddrPort(c.dgm, to); err != nil {
				t.Fatal(err)
			}
			want, other := sp.Bulk, sp.Prio
			if c.prio {
				want, other = sp.Prio, sp.Bulk
			}
			buf := make([]byte, 128)
			want.c.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound, not a measure
			n, from, err := want.ReadFrom(buf)
			if err != nil || string(buf[:n]) != string(c.dgm) {
				t.Errorf("%s %s: %q, %v on the expected socket", network, c.name, buf[:n], err)
			}
			other.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, _, err := other.ReadFrom(buf); err == nil {
				t.Errorf("%s %s: %q on the other socket too", network, c.name, buf[:n])
			}
			if err == nil {
				if err := sp.Prio.WriteTo([]byte("reply"), from); err != nil {
					t.Fatal(err)
				}
				client.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, src, err := client.ReadFromUDPAddrPort(buf)
				if err != nil || string(buf[:n]) != "reply" || unmap(src) != to {
					t.Errorf("%s %s: reply %q from %s (%v), want from %s", network, c.name, buf[:n], src, err, to)
				}
			}
			client.Close()
			sp.Prio.Close()
			sp.Bulk.Close()
		}
	}
}

// A bound port is not shared: neither a second split nor a plain socket
// binds it, and a split does not bind a port a plain socket holds.
func TestListenSplitPortNotShared(t *testing.T) {
	sp, err := UDP{}.ListenSplit(netip.MustParseAddrPort("127.0.0.1:0"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Prio.Close()
	defer sp.Bulk.Close()
	at := sp.Prio.LocalAddr()
	if _, err := (UDP{}).ListenSplit(at, false); !errors.Is(err, ErrPortInUse) {
		t.Errorf("second split on %s: %v, want ErrPortInUse", at, err)
	}
	if c, err := (UDP{}).Listen(at); err == nil {
		c.Close()
		t.Errorf("plain socket bound %s, held by a split", at)
	}
	plain, err := UDP{}.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := (UDP{}).ListenSplit(plain.LocalAddr(), true); !errors.Is(err, ErrPortInUse) {
		t.Errorf("split on %s held by a plain socket: %v, want ErrPortInUse", plain.LocalAddr(), err)
	}
}

// splitReference is what the steering program decides, written out: the
// socket index for a UDP payload. A read past the end sends it to Bulk,
// as the kernel ends a classic BPF program whose load fails with 0.
func splitReference(b []byte, natt bool) int {
	off := 0
	if natt {
		if len(b) < 4 {
			return splitBulk
		}
		if binary.BigEndian.Uint32(b) != 0 {
			return splitPrio // ESP
		}
		off = 4
	}
	for _, w := range []int{off + 8, off + 12} { // the responder SPI
		if len(b) < w+4 {
			return splitBulk
		}
		if binary.BigEndian.Uint32(b[w:]) != 0 {
			return splitPrio
		}
	}
	if len(b) < off+17 || b[off+16] != payloadNotify {
		return splitBulk
	}
	return splitPrio
}

// The program as attached (assembled, then run by a classic BPF
// interpreter that, like the kernel, returns 0 when a load runs past the
// datagram) decides what splitReference does, for any datagram.
func FuzzSplitProgram(f *testing.F) {
	for _, natt := range []bool{false, true} {
		f.Add([]byte{}, natt)
		f.Add([]byte{0xff}, natt)
		f.Add(ikeHeader(0, 33), natt)
		f.Add(ikeHeader(0, 41), natt)
		f.Add(ikeHeader(5, 46), natt)
		f.Add(ikeHeader(5<<32, 46)[:12], natt)
		f.Add(ikeHeader(5, 46)[:16], natt)
		f.Add(ikeHeader(0, 41)[:17], natt)
		f.Add(append([]byte{0, 0, 0, 0}, ikeHeader(0, 41)...), natt)
		f.Add(append([]byte{0, 0, 0, 0}, ikeHeader(0, 33)...), natt)
		f.Add(append([]byte{0, 0, 0, 0}, ikeHeader(3, 33)[:12]...), natt)
		f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 1}, natt)
	}
	vms := map[bool]*bpf.VM{}
	for _, natt := range []bool{false, true} {
		prog, err := splitProgram(natt)
		if err != nil {
			f.Fatal(err)
		}
		raw := make([]bpf.RawInstruction, len(prog))
		for i, p := range prog {
			raw[i] = bpf.RawInstruction{Op: p.Code, Jt: p.Jt, Jf: p.Jf, K: p.K}
		}
		ins, ok := bpf.Disassemble(raw)
		if !ok {
			f.Fatalf("natt %v: the program does not disassemble", natt)
		}
		vm, err := bpf.NewVM(ins)
		if err != nil {
			f.Fatal(err)
		}
		vms[natt] = vm
	}
	f.Fuzz(func(t *testing.T, b []byte, natt bool) {
		got, err := vms[natt].Run(b)
		if err != nil {
			t.Fatal(err)
		}
		if want := splitReference(b, natt); got != want {
			t.Fatalf("natt %v, % x: socket %d, want %d", natt, b, got, want)
		}
	})
}
