package concentrator

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
	"github.com/ikefleet/ikefleet/concentrator/transport"
)

// header builds an IKE header: SPIs, exchange, flags.
func header(spii, spir uint64, exchange ike.ExchangeType, flags uint8) []byte {
	m := ike.Message{SPIi: spii, SPIr: spir, Exchange: exchange, Flags: flags}
	return m.Encode()
}

func TestIsNewSA(t *testing.T) {
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"IKE_SA_INIT request", header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator), true},
		{"IKE_SA_INIT response", header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator|ike.FlagResponse), false},
		{"IKE_SA_INIT from a responder", header(1, 0, ike.IKE_SA_INIT, 0), false},
		{"IKE_SA_INIT with our SPI", header(1, 2, ike.IKE_SA_INIT, ike.FlagInitiator), false},
		{"IKE_AUTH", header(1, 2, ike.IKE_AUTH, ike.FlagInitiator), false},
		{"INFORMATIONAL", header(1, 2, ike.INFORMATIONAL, ike.FlagInitiator), false},
		{"short", header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator)[:27], false},
	} {
		if got := isNewSA(c.b); got != c.want {
			t.Errorf("%s: isNewSA = %v, want %v", c.name, got, c.want)
		}
	}
}

// With both queues full, the shard takes every IKE_AUTH (and message of an
// established SA) before any new IKE_SA_INIT, and a full queue of new SAs
// refuses only new SAs.
func TestShardQueueServesAuthBeforeInit(t *testing.T) {
	q := newShardQueue(4, 8)
	pkt := func(b []byte, tag int) ike.Packet {
		return ike.Packet{Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(tag)), Data: b}
	}
	initMsg := header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator)
	authMsg := header(1, 2, ike.IKE_AUTH, ike.FlagInitiator)
	for i := 0; i < 8; i++ {
		if !q.push(pkt(initMsg, i), isNewSA(initMsg)) {
			t.Fatalf("INIT %d refused before the queue was full", i)
		}
	}
	if q.push(pkt(initMsg, 99), isNewSA(initMsg)) {
		t.Fatal("a ninth INIT was queued in a queue of 8")
	}
	for i := 0; i < 4; i++ {
		if !q.push(pkt(authMsg, 100+i), isNewSA(authMsg)) {
			t.Fatalf("IKE_AUTH %d refused while only the INIT queue was full", i)
		}
	}
	if q.push(pkt(authMsg, 200), false) {
		t.Fatal("a fifth IKE_AUTH was queued in a queue of 4")
	}
	var order []string
	for {
		p, ok := q.next()
		if !ok {
			break
		}
		kind := "init"
		if !isNewSA(p.Data) {
			kind = "auth"
		}
		order = append(order, kind+strconv.Itoa(int(p.Remote.Port())))
	}
	want := "auth100 auth101 auth102 auth103 init0 init1 init2 init3 init4 init5 init6 init7"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("served %s\nwant   %s", got, want)
	}
}

// ike.socket_buffer reaches both sockets (the kernel reports twice the
// size; without CAP_NET_ADMIN it caps at net.core.rmem_max).
func TestSocketBufferApplied(t *testing.T) {
	const size = 3 << 20
	n, _ := startNode(t, 1, fmt.Sprintf("  socket_buffer: %d\n", size))
	want := 2 * size
	if os.Geteuid() != 0 {
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		if err != nil {
			t.Fatal(err)
		}
		max, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		want = 2 * min(size, max)
	}
	n.mu.Lock()
	conns := make([]*net.UDPConn, 0, len(n.conns))
	for _, c := range n.conns {
		conns = append(conns, c.(*transport.UDPConn).Socket())
	}
	n.mu.Unlock()
	if len(conns) != 2 {
		t.Fatalf("%d sockets, want 2", len(conns))
	}
	for _, c := range conns {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got int
		var gerr error
		rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		if got != want {
			t.Errorf("%s: SO_RCVBUF %d, want %d", c.LocalAddr(), got, want)
		}
	}
}

func TestSocketBufferValidated(t *testing.T) {
	_, err := ParseConfig([]byte(nodeConfig(1, "  socket_buffer: -1\n", "")))
	if err == nil || !strings.Contains(err.Error(), "ike.socket_buffer") {
		t.Fatalf("negative ike.socket_buffer: %v, want an error naming the field", err)
	}
}

// The batched read (recvmmsg) hands over exactly the datagrams sent, in
// order, with their sources: sizes from 1 byte to 9 KB, from two senders.
func TestBatchReadMatchesDatagrams(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			loop := "127.0.0.1"
			if network == "udp6" {
				loop = "::1"
			}
			rx, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(loop)})
			if err != nil {
				if network == "udp6" && os.Getenv("CI") != "true" {
					t.Skipf("no IPv6 loopback: %v", err) // a kernel without IPv6: the IPv4 case still runs
				}
				t.Fatal(err)
			}
			defer rx.Close()
			if err := configureSocket(rx, 4<<20); err != nil {
				t.Fatal(err)
			}
			var senders []*net.UDPConn
			for i := 0; i < 2; i++ {
				s, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(loop)})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				senders = append(senders, s)
			}
			type dgram struct {
				from netip.AddrPort
				data []byte
			}
			var sent []dgram
			to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
			sizes := []int{1, 4, 28, 300, 1200, 1500, 4000, 9000, 64}
			for i := 0; i < 3*readBatchLen+5; i++ {
				s := senders[i%2]
				b := make([]byte, sizes[i%len(sizes)])
				rand.Read(b)
				if _, err := s.WriteToUDPAddrPort(b, to); err != nil {
					t.Fatal(err)
				}
				from := s.LocalAddr().(*net.UDPAddr).AddrPort()
				sent = append(sent, dgram{netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), b})
			}
			local := to
			br := newBatchReader(rx, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()))
			msgs := make([]ipv4.Message, readBatchLen)
			for i := range msgs {
				msgs[i].Buffers = [][]byte{make([]byte, maxDatagram)}
			}
			var got []dgram
			batches := 0
			for len(got) < len(sent) {
				nm, err := br.ReadBatch(msgs, 0)
				if err != nil {
					t.Fatal(err)
				}
				batches++
				for _, m := range msgs[:nm] {
					a := m.Addr.(*net.UDPAddr).AddrPort()
					got = append(got, dgram{netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), append([]byte(nil), m.Buffers[0][:m.N]...)})
				}
			}
			for i := range sent {
				if got[i].from != sent[i].from || !bytes.Equal(got[i].data, sent[i].data) {
					t.Fatalf("datagram %d: got %d bytes from %s, sent %d bytes from %s", i, len(got[i].data), got[i].from, len(sent[i].data), sent[i].from)
				}
			}
			if batches >= len(sent) {
				t.Errorf("%d datagrams took %d reads: not batched", len(sent), batches)
			}
		})
	}
}

// cookieInit is an IKE_SA_INIT request (aes256-sha256-modp2048) with the
// given initiator SPI and, if any, a cookie as its first payload.
func cookieInit(spi uint64, cookie []byte) []byte {
	var ps []ike.Payload
	if cookie != nil {
		ps = append(ps, &ike.Notify{NotifyType: ike.COOKIE, Data: cookie})
	}
	ke := make([]byte, 256)
	rand.Read(ke)
	ps = append(ps,
		&ike.SA{Proposals: []ike.Proposal{{Num: 1, Protocol: ike.ProtoIKE, Transforms: []ike.Transform{
			{Type: suite.TypeENCR, ID: 12, KeyLen: 256}, {Type: suite.TypePRF, ID: 5},
			{Type: suite.TypeINTEG, ID: 12}, {Type: suite.TypeKE, ID: 14}}}}},
		&ike.KE{Group: 14, Data: ke},
		&ike.Nonce{Data: bytes.Repeat([]byte{7}, 32)})
	return (&ike.Message{SPIi: spi, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagInitiator, Payloads: ps}).Encode()
}

// While cookies are demanded, the socket loop answers a cookieless
// IKE_SA_INIT itself, with its shard busy, and queues the request that
// carries the cookie with the established SAs' traffic, not behind new
// requests; the engine then admits it.
func TestSocketLoopAnswersCookies(t *testing.T) {
	n, _ := startNode(t, 1, "  cookie_threshold: 0\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 65535)
	exchange := func(b []byte) *ike.Message {
		t.Helper()
		if _, err := c.WriteToUDPAddrPort(b, n.IKEAddr()); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound, not a measure
		nb, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ike.Decode(append([]byte(nil), buf[:nb]...))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	cookieIn := func(m *ike.Message) []byte {
		for _, p := range m.Payloads {
			if nt, ok := p.(*ike.Notify); ok && nt.NotifyType == ike.COOKIE {
				return nt.Data
			}
		}
		return nil
	}
	const spi = 0x1122334455667788
	req := cookieInit(spi, nil)
	s := n.shardFor(req)
	// The first demand comes from the engine (it makes the secret).
	if cookieIn(exchange(req)) == nil {
		t.Fatal("no cookie demanded")
	}
	// The shard is busy: the socket loop answers alone.
	started, release := make(chan struct{}), make(chan struct{})
	go n.do(ctx, s, func() { close(started); <-release })
	<-started
	cookie := cookieIn(exchange(req))
	if cookie == nil {
		close(release)
		t.Fatal("no cookie from the socket loop while the shard is busy")
	}
	proven := cookieInit(spi, cookie)
	if _, err := c.WriteToUDPAddrPort(proven, n.IKEAddr()); err != nil {
		t.Fatal(err)
	}
	for len(s.q.prio) == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	prio, init := len(s.q.prio), len(s.q.init)
	close(release)
	if prio != 1 || init != 0 {
		t.Fatalf("the request with the cookie: %d in the priority queue, %d in the new-SA queue; want 1, 0", prio, init)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	nb, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ike.Decode(buf[:nb])
	if err != nil {
		t.Fatal(err)
	}
	if m.SPIr == 0 || cookieIn(m) != nil {
		t.Fatalf("the request with the cookie was not admitted: %+v", m)
	}
	st, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.CookiesSent != 2 || st.HalfOpen != 1 {
		t.Fatalf("cookies sent %d (want 2), half-open %d (want 1)", st.CookiesSent, st.HalfOpen)
	}
}
