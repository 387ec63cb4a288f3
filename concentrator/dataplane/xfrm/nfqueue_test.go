package xfrm

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// udpESP is an IPv4 packet to UDP port 4500 whose payload starts with w.
func udpESP(w ...byte) []byte {
	p := make([]byte, 20+8)
	p[0], p[9] = 0x45, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(p[22:], 4500)
	return append(p, w...)
}

func TestESPInUDPSPI(t *testing.T) {
	v6 := make([]byte, 40+8, 60)
	v6[0], v6[6] = 0x60, unix.IPPROTO_UDP
	v6 = append(v6, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1)
	opts := udpESP()
	opts[0] = 0x46 // 4 bytes of IP options
	opts = append(opts[:20], append([]byte{1, 1, 1, 1}, opts[20:]...)...)
	opts = append(opts, 0xc0, 0, 0, 7, 0, 0, 0, 1)
	for _, c := range []struct {
		name string
		p    []byte
		spi  uint32
		ok   bool
	}{
		{"v4", udpESP(0xc1, 2, 3, 4, 0, 0, 0, 1), 0xc1020304, true},
		{"v4 options", opts, 0xc0000007, true},
		{"v6", v6, 0xdeadbeef, true},
		{"IKE (non-ESP marker)", udpESP(0, 0, 0, 0, 1, 2, 3, 4), 0, false},
		{"keepalive", udpESP(0xff), 0, false},
		{"short", udpESP(1, 2, 3, 4), 0, false},
		{"not UDP", append([]byte{0x45, 0, 0, 0, 0, 0, 0, 0, 0, unix.IPPROTO_TCP}, make([]byte, 40)...), 0, false},
		{"bad IHL", append([]byte{0x41}, make([]byte, 40)...), 0, false},
		{"empty", nil, 0, false},
	} {
		spi, ok := espInUDPSPI(c.p)
		if ok != c.ok || spi != c.spi {
			t.Errorf("%s: %08x %v, want %08x %v", c.name, spi, ok, c.spi, c.ok)
		}
	}
}

// packetMsg is a NFQNL_MSG_PACKET as the kernel sends it.
func packetMsg(id uint32, pkt []byte) []byte {
	hdr := binary.BigEndian.AppendUint32(nil, id)
	hdr = append(hdr, 0x08, 0x00, 1) // hw_protocol, hook
	return nfqMessage(nfqnlMsgPacket, 0, 0, 4500, nfqAttr(nfqaPacketHdr, hdr...), nfqAttr(nfqaPayload, pkt...))
}

func TestNFQueueHandle(t *testing.T) {
	q := &nfQueue{}
	var got []uint32
	q.onSPI(func(spi uint32) { got = append(got, spi) })
	var b []byte
	b = append(b, packetMsg(7, udpESP(0, 0, 1, 1, 0, 0, 0, 1))...)
	b = append(b, packetMsg(8, udpESP(0xff))...) // not ESP: accepted, not reported
	b = append(b, packetMsg(9, udpESP(0, 0, 2, 2, 0, 0, 0, 1))...)
	last, ok := q.handle(b)
	if !ok || last != 9 {
		t.Errorf("verdict up to %d (%v), want 9", last, ok)
	}
	if len(got) != 2 || got[0] != 0x101 || got[1] != 0x202 {
		t.Errorf("reported %x, want [101 202]", got)
	}
	if q.packets.Load() != 3 || q.reported.Load() != 2 || q.malformed.Load() != 1 {
		t.Errorf("counters %d %d %d", q.packets.Load(), q.reported.Load(), q.malformed.Load())
	}
	// Truncated and foreign messages end the walk without panicking.
	if _, ok := q.handle(b[:30]); ok {
		t.Error("a truncated message was taken")
	}
}

func TestNFQueueMessages(t *testing.T) {
	m := nfqBindMessages(4500)
	if len(m) != 2 {
		t.Fatalf("%d bind messages", len(m))
	}
	// nlmsghdr: length, type (subsys queue << 8 | config), flags request|ack.
	for i, b := range m {
		if int(binary.NativeEndian.Uint32(b)) != len(b) || binary.NativeEndian.Uint16(b[4:]) != 0x0302 ||
			binary.NativeEndian.Uint16(b[6:]) != unix.NLM_F_REQUEST|unix.NLM_F_ACK {
			t.Errorf("bind message %d header % x", i, b[:16])
		}
		// nfgenmsg: AF_UNSPEC, version 0, queue 4500 big-endian.
		if string(b[16:20]) != "\x00\x00\x11\x94" {
			t.Errorf("bind message %d nfgenmsg % x", i, b[16:20])
		}
	}
	// The bind command: attribute 1, {BIND, pad, pf 0}.
	if string(m[0][20:]) != "\x08\x00\x01\x00\x01\x00\x00\x00" {
		t.Errorf("bind command % x", m[0][20:])
	}
	// Params: copy range 80 big-endian, copy mode packet, padded.
	if string(m[1][20:32]) != "\x09\x00\x02\x00\x00\x00\x00\x50\x02\x00\x00\x00" {
		t.Errorf("params % x", m[1][20:32])
	}
	v := nfqVerdictBatch(4500, 0x01020304)
	if binary.NativeEndian.Uint16(v[4:]) != 0x0304 || string(v[20:]) != "\x0c\x00\x02\x00\x00\x00\x00\x01\x01\x02\x03\x04" {
		t.Errorf("verdict batch % x", v)
	}
}

func FuzzNFQueueHandle(f *testing.F) {
	f.Add(packetMsg(1, udpESP(1, 2, 3, 4, 5)))
	f.Add(udpESP(0, 0, 0, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		q := &nfQueue{}
		q.onSPI(func(spi uint32) {
			if spi == 0 {
				t.Fatal("SPI 0 reported")
			}
		})
		q.handle(b)
		espInUDPSPI(b)
		parseNFQPacket(b)
	})
}

// An idle queue's reader sleeps in its receive until the timeout (twice
// a second): it does not spin. (It did: the netlink library opens its
// sockets non-blocking, and each receive returned at once.) A count of
// wake-ups, not a time: a spinning reader wakes millions of times in a
// second, a sleeping one two or three.
func TestNFQueueReaderSleepsWhenIdle(t *testing.T) {
	requireRoot(t)
	q, err := openNFQueue(newNS(t), 4599)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	n := q.wakeups.Load()
	q.close()
	if n > 10 {
		t.Fatalf("the idle reader woke %d times in 1.5 s: it spins", n)
	}
	t.Logf("the idle reader woke %d times in 1.5 s", n)
}
