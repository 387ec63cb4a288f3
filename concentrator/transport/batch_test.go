package transport

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func listenBatch(t *testing.T, addr string, size int) (*UDPConn, *Batch) {
	t.Helper()
	c, err := UDP{}.Listen(netip.MustParseAddrPort(addr))
	if err != nil {
		if netip.MustParseAddrPort(addr).Addr().Is6() && os.Getenv("CI") != "true" {
			t.Skipf("no IPv6: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	u := c.(*UDPConn)
	b, err := u.NewBatch(size)
	if err != nil {
		t.Fatal(err)
	}
	return u, b
}

func readAll(t *testing.T, b *Batch, want int, bufLen int) []Datagram {
	t.Helper()
	ds := make([]Datagram, b.Cap())
	for i := range ds {
		ds[i].Buf = make([]byte, bufLen)
	}
	var out []Datagram
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < want {
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %d datagrams", len(out), want)
		}
		n, err := b.Read(ds)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[:n] {
			out = append(out, Datagram{Buf: append([]byte(nil), d.Buf[:d.N]...), N: d.N, From: d.From})
		}
	}
	return out
}

// A batch written reaches each destination with its payload, and a
// batch read hands each datagram over with its source, in order; on an
// IPv6 socket bound to the unspecified address, IPv4 peers are written
// to and read from as plain IPv4 addresses.
func TestBatchWriteRead(t *testing.T) {
	for _, c := range []struct{ name, tx, rx1, rx2 string }{
		{"ipv4", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.2:0"},
		{"ipv6", "[::1]:0", "[::1]:0", "[::1]:0"},
		{"dual-stack to ipv4", "[::]:0", "127.0.0.1:0", "127.0.0.3:0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			txc, tx := listenBatch(t, c.tx, 8)
			rx1c, rx1 := listenBatch(t, c.rx1, 8)
			rx2c, rx2 := listenBatch(t, c.rx2, 8)
			txPort := txc.LocalAddr().Port()
			var sent []Datagram
			for i := range 11 {
				to := rx1c.LocalAddr()
				if i%2 == 1 {
					to = rx2c.LocalAddr()
				}
				p := bytes.Repeat([]byte{byte(i)}, 1+i*137)
				sent = append(sent, Datagram{Buf: p, To: to})
			}
			for off := 0; off < len(sent); {
				n, err := tx.Write(sent[off:])
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 || n > tx.Cap() {
					t.Fatalf("wrote %d of %d (batch of %d)", n, len(sent)-off, tx.Cap())
				}
				off += n
			}
			got1 := readAll(t, rx1, 6, 4096)
			got2 := readAll(t, rx2, 5, 4096)
			for i, d := range sent {
				g := got1[i/2]
				if i%2 == 1 {
					g = got2[i/2]
				}
				if !bytes.Equal(g.Buf, d.Buf) || g.N != len(d.Buf) {
					t.Fatalf("datagram %d: got %d octets, sent %d", i, g.N, len(d.Buf))
				}
				if g.From.Port() != txPort || g.From.Addr().Is4In6() || !g.From.Addr().IsLoopback() {
					t.Fatalf("datagram %d: from %s, sent from port %d", i, g.From, txPort)
				}
				if g.From.Addr().Is4() != d.To.Addr().Is4() {
					t.Fatalf("datagram %d to %s came from %s", i, d.To, g.From)
				}
			}
			// And back: the answer's source as the peer wrote it.
			back := netip.AddrPortFrom(rx1c.LocalAddr().Addr(), txPort)
			if n, err := rx1.Write([]Datagram{{Buf: []byte("back"), To: back}}); n != 1 || err != nil {
				t.Fatalf("answer: %d, %v", n, err)
			}
			if g := readAll(t, tx, 1, 64)[0]; string(g.Buf) != "back" || g.From != rx1c.LocalAddr() {
				t.Fatalf("answer %q from %s, want from %s", g.Buf, g.From, rx1c.LocalAddr())
			}
		})
	}
}

// A datagram longer than its buffer is cut to the buffer.
func TestBatchReadTruncates(t *testing.T) {
	rxc, rx := listenBatch(t, "127.0.0.1:0", 4)
	s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(rxc.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write(bytes.Repeat([]byte{7}, 3000)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, rx, 1, 1000)
	if got[0].N != 1000 || got[0].From != netip.MustParseAddrPort(s.LocalAddr().String()) {
		t.Fatalf("got %d octets from %s", got[0].N, got[0].From)
	}
}

// A destination the socket cannot reach fails alone: what comes before it
// is sent, and the next write starts with it and reports it.
func TestBatchWriteBadDestination(t *testing.T) {
	_, tx := listenBatch(t, "127.0.0.1:0", 8)
	rxc, rx := listenBatch(t, "127.0.0.1:0", 8)
	ds := []Datagram{
		{Buf: []byte("a"), To: rxc.LocalAddr()},
		{Buf: []byte("b"), To: netip.MustParseAddrPort("[::1]:500")},
		{Buf: []byte("c")}, // no address
		{Buf: []byte("d"), To: rxc.LocalAddr()},
	}
	n, err := tx.Write(ds)
	if n != 1 || err != nil {
		t.Fatalf("first write: %d, %v; want 1 sent", n, err)
	}
	for _, d := range ds[1:3] {
		if n, err := tx.Write([]Datagram{d}); n != 0 || !errors.Is(err, errAddrFamily) {
			t.Fatalf("write to %q: %d, %v; want %v", d.To, n, err, errAddrFamily)
		}
	}
	if n, err := tx.Write(ds[3:]); n != 1 || err != nil {
		t.Fatalf("last write: %d, %v", n, err)
	}
	got := readAll(t, rx, 2, 16)
	if string(got[0].Buf) != "a" || string(got[1].Buf) != "d" {
		t.Fatalf("got %q, %q", got[0].Buf, got[1].Buf)
	}
}

// Reading and writing allocate nothing (x/net's batches allocated a
// net.UDPAddr for every datagram read).
func TestBatchNoAllocations(t *testing.T) {
	_, tx := listenBatch(t, "127.0.0.1:0", 4)
	rxc, rx := listenBatch(t, "127.0.0.1:0", 4)
	const runs = 50
	out := []Datagram{{Buf: []byte("one"), To: rxc.LocalAddr()}, {Buf: []byte("two"), To: rxc.LocalAddr()}}
	if a := testing.AllocsPerRun(runs, func() {
		if n, err := tx.Write(out); n != 2 || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
	}); a != 0 {
		t.Errorf("Write: %v allocations a batch", a)
	}
	in := []Datagram{{Buf: make([]byte, 64)}, {Buf: make([]byte, 64)}}
	read := 0
	if a := testing.AllocsPerRun(runs, func() {
		n, err := rx.Read(in)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		read += n
	}); a != 0 {
		t.Errorf("Read: %v allocations a batch", a)
	}
	if read < runs+1 {
		t.Fatalf("read %d datagrams", read)
	}
}

// BenchmarkBatchRead: a batch of 16 datagrams of 100 octets sent
// (sendmmsg) and read back on loopback, by Batch.Read and by
// golang.org/x/net's ReadBatch (which the node used before); the
// difference is the read side's own cost.
func BenchmarkBatchRead(b *testing.B) {
	const n = 16
	for _, reader := range []string{"batch", "x-net"} {
		b.Run(reader, func(b *testing.B) {
			c, err := UDP{}.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rx := c.(*UDPConn)
			txc, err := UDP{}.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
			if err != nil {
				b.Fatal(err)
			}
			defer txc.Close()
			tx, _ := txc.(*UDPConn).NewBatch(n)
			out := make([]Datagram, n)
			for i := range out {
				out[i] = Datagram{Buf: make([]byte, 100), To: rx.LocalAddr()}
			}
			br, _ := rx.NewBatch(n)
			in := make([]Datagram, n)
			xin := make([]ipv4.Message, n)
			for i := range in {
				in[i].Buf = make([]byte, 65535)
				xin[i].Buffers = [][]byte{in[i].Buf}
			}
			xr := ipv4.NewPacketConn(rx.Socket())
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if k, err := tx.Write(out); k != n || err != nil {
					b.Fatalf("write: %d, %v", k, err)
				}
				for got := 0; got < n; {
					var k int
					if reader == "batch" {
						k, err = br.Read(in)
					} else {
						k, err = xr.ReadBatch(xin, 0)
					}
					if err != nil {
						b.Fatal(err)
					}
					got += k
				}
			}
		})
	}
}

// WriteTo sends one datagram with a raw sendto: to an IPv4 peer from an
// IPv4 socket, and from the dual-stack socket of the unspecified IPv6
// address to IPv4 and IPv6 peers; a destination the socket cannot reach
// is an error naming it; a send allocates nothing.
func TestWriteTo(t *testing.T) {
	tx, _ := listenBatch(t, "127.0.0.1:0", 1)
	rx4c, rx4 := listenBatch(t, "127.0.0.1:0", 4)
	if err := tx.WriteTo([]byte("v4"), rx4c.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := tx.WriteTo(nil, rx4c.LocalAddr()); err != nil { // an empty datagram is a datagram
		t.Fatal(err)
	}
	got := readAll(t, rx4, 2, 16)
	if string(got[0].Buf) != "v4" || got[0].From != tx.LocalAddr() || got[1].N != 0 {
		t.Fatalf("got %q from %v, then %d octets", got[0].Buf, got[0].From, got[1].N)
	}
	for _, to := range []netip.AddrPort{netip.MustParseAddrPort("[::1]:500"), {}} {
		if err := tx.WriteTo([]byte("x"), to); !errors.Is(err, errAddrFamily) || !strings.Contains(err.Error(), "sendto") {
			t.Fatalf("to %v: %v; want %v", to, err, errAddrFamily)
		}
	}
	again := []byte("again")
	if a := testing.AllocsPerRun(50, func() {
		if err := tx.WriteTo(again, rx4c.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("WriteTo: %v allocations a datagram", a)
	}

	dual, _ := listenBatch(t, "[::]:0", 1)
	rx6c, rx6 := listenBatch(t, "[::1]:0", 4)
	if err := dual.WriteTo([]byte("to v4"), rx4c.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := dual.WriteTo([]byte("to v6"), rx6c.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	var v4 []Datagram
	for _, d := range readAll(t, rx4, 52, 16) {
		if string(d.Buf) == "to v4" {
			v4 = append(v4, d)
		}
	}
	v6 := readAll(t, rx6, 1, 16)
	if len(v4) != 1 || v4[0].From.Port() != dual.LocalAddr().Port() || string(v6[0].Buf) != "to v6" {
		t.Fatalf("from the dual-stack socket: %v, %q", v4, v6[0].Buf)
	}
}
