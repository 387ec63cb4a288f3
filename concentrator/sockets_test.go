package concentrator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	q := newShardQueue(4, 3, 8, 0)
	pkt := func(b []byte, tag int) ike.Packet {
		return ike.Packet{Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(tag)), Data: b}
	}
	initMsg := header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator)
	authMsg := header(1, 2, ike.IKE_AUTH, ike.FlagInitiator)
	for i := 0; i < 8; i++ {
		if !q.push(pkt(initMsg, i), queueNew) {
			t.Fatalf("INIT %d refused before the queue was full", i)
		}
	}
	if q.push(pkt(initMsg, 99), queueNew) {
		t.Fatal("a ninth INIT was queued in a queue of 8")
	}
	// A mass restart: cookie-proven requests queued before the
	// established SAs' messages are still served after them.
	for i := 0; i < 3; i++ {
		if !q.push(pkt(initMsg, 50+i), queueProven) {
			t.Fatalf("proven INIT %d refused while only the INIT queue was full", i)
		}
	}
	if q.push(pkt(initMsg, 98), queueProven) {
		t.Fatal("a fourth proven INIT was queued in a queue of 3")
	}
	for i := 0; i < 4; i++ {
		if !q.push(pkt(authMsg, 100+i), queuePrio) {
			t.Fatalf("IKE_AUTH %d refused while only the INIT queues were full", i)
		}
	}
	if q.push(pkt(authMsg, 200), queuePrio) {
		t.Fatal("a fifth IKE_AUTH was queued in a queue of 4")
	}
	if f := q.fill(); f != 1 {
		t.Fatalf("fill %.2f with every queue full", f)
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
	want := "auth100 auth101 auth102 auth103 init50 init51 init52 init0 init1 init2 init3 init4 init5 init6 init7"
	if got := strings.Join(order, " "); got != want {
		t.Fatalf("served %s\nwant   %s", got, want)
	}
}

// A full queue of IKE_AUTH and established SAs' messages, or of
// cookie-proven new IKE_SA_INITs, spills over without waiting, up to its
// octets, and the shard serves the spill after the queue, in order; what
// comes while packets wait in the spill goes behind them even when the
// queue has room again. The queue of other new SAs does not spill.
func TestShardQueueSpills(t *testing.T) {
	for _, c := range []struct {
		kind  queueKind
		msg   []byte
		ch    func(*shardQueue) chan ike.Packet
		spill func(*shardQueue) *spillQueue
	}{
		{queuePrio, header(1, 2, ike.IKE_AUTH, ike.FlagInitiator),
			func(q *shardQueue) chan ike.Packet { return q.prio }, func(q *shardQueue) *spillQueue { return q.spill }},
		{queueProven, header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator),
			func(q *shardQueue) chan ike.Packet { return q.proven }, func(q *shardQueue) *spillQueue { return q.provenSpill }},
	} {
		t.Run(c.kind.String(), func(t *testing.T) {
			cost := len(c.msg) + spillOverhead
			q := newShardQueue(2, 2, 1, 4*cost)
			pkt := func(tag int) ike.Packet {
				return ike.Packet{Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(tag)), Data: c.msg}
			}
			for i := 1; i <= 5; i++ {
				if !q.push(pkt(i), c.kind) {
					t.Fatalf("packet %d refused: a queue of 2 with room for 4 more", i)
				}
			}
			sp := c.spill(&q)
			if !sp.pending() {
				t.Fatal("nothing pending in the spill")
			}
			select {
			case <-sp.wake:
			default:
				t.Fatal("the spill did not signal the shard")
			}
			var got []int
			take := func() {
				p, ok := q.next()
				if !ok {
					t.Fatal("nothing queued")
				}
				got = append(got, int(p.Remote.Port()))
			}
			take() // 1, from the channel: room in it again
			if !q.push(pkt(6), c.kind) {
				t.Fatal("packet 6 refused")
			}
			if len(c.ch(&q)) != 1 {
				t.Fatal("packet 6 went into the channel ahead of the spilled ones")
			}
			if q.push(pkt(7), c.kind) {
				t.Fatal("packet 7 was queued past the spill's octets")
			}
			for range 5 {
				take()
			}
			if want := []int{1, 2, 3, 4, 5, 6}; !slices.Equal(got, want) {
				t.Fatalf("served %v, want %v", got, want)
			}
			if _, ok := q.next(); ok || sp.pending() || sp.bytes != 0 || sp.pkts != nil {
				t.Fatalf("after all were served: pending %v, %d octets, array kept %v", sp.pending(), sp.bytes, sp.pkts != nil)
			}
			if !q.push(pkt(8), queueNew) || q.push(pkt(9), queueNew) || q.spill.pending() || q.provenSpill.pending() {
				t.Fatal("a full queue of other new SAs spilled")
			}
		})
	}
}

// The shard serves the queues in their order, each channel before its
// spill: IKE_AUTH and established SAs', then cookie-proven new SAs',
// then other new SAs'.
func TestShardQueueOrderWithSpills(t *testing.T) {
	auth, init := header(1, 2, ike.IKE_AUTH, ike.FlagInitiator), header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator)
	q := newShardQueue(1, 1, 2, 1<<20)
	pkt := func(msg []byte, tag int) ike.Packet {
		return ike.Packet{Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(tag)), Data: msg}
	}
	for _, p := range []struct {
		kind queueKind
		pkt  ike.Packet
	}{
		{queueNew, pkt(init, 50)}, {queueProven, pkt(init, 20)}, {queueProven, pkt(init, 21)}, {queuePrio, pkt(auth, 10)},
		{queueNew, pkt(init, 51)}, {queuePrio, pkt(auth, 11)}, {queueProven, pkt(init, 22)}, {queuePrio, pkt(auth, 12)},
	} {
		if !q.push(p.pkt, p.kind) {
			t.Fatalf("%v %d refused", p.kind, p.pkt.Remote.Port())
		}
	}
	var got []int
	for {
		p, ok := q.next()
		if !ok {
			break
		}
		got = append(got, int(p.Remote.Port()))
	}
	if want := []int{10, 11, 12, 20, 21, 22, 50, 51}; !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
	if w := q.waiting(); w != [3]int{} {
		t.Fatalf("waiting %v after all were served", w)
	}
}

// ike.socket_buffer reaches every socket (the kernel reports twice the
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
	conns := make([]*net.UDPConn, 0, len(n.sockets))
	for _, c := range n.sockets {
		conns = append(conns, c.(*transport.UDPConn).Socket())
	}
	n.mu.Unlock()
	if len(conns) != 4 {
		t.Fatalf("%d sockets, want 4 (IKE and NAT-T ports, split)", len(conns))
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
			conn, err := transport.UDP{}.Listen(netip.AddrPortFrom(netip.MustParseAddr(loop), 0))
			if err != nil {
				if network == "udp6" && os.Getenv("CI") != "true" {
					t.Skipf("no IPv6 loopback: %v", err) // a kernel without IPv6: the IPv4 case still runs
				}
				t.Fatal(err)
			}
			defer conn.Close()
			u := conn.(*transport.UDPConn)
			rx := u.Socket()
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
			br, err := u.NewBatch(readBatchLen)
			if err != nil {
				t.Fatal(err)
			}
			dgs := make([]transport.Datagram, readBatchLen)
			for i := range dgs {
				dgs[i].Buf = make([]byte, maxDatagram)
			}
			var got []dgram
			batches := 0
			for len(got) < len(sent) {
				nm, err := br.Read(dgs)
				if err != nil {
					t.Fatal(err)
				}
				batches++
				for _, d := range dgs[:nm] {
					got = append(got, dgram{d.From, append([]byte(nil), d.Buf[:d.N]...)})
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
// busyShard keeps s's goroutine busy until the returned release is called
// (any number of times): what arrives meanwhile waits in its queues, and
// the socket loop answers alone.
func busyShard(ctx context.Context, n *Node, s *shard) (release func()) {
	started, ch := make(chan struct{}), make(chan struct{})
	go n.do(ctx, s, func() { close(started); <-ch })
	<-started
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// laterMajorVersion is an INFORMATIONAL request of IKE major version 3
// for the SA (spii, spir), with room for its INVALID_MAJOR_VERSION answer
// (never larger than the request).
func laterMajorVersion(spii, spir uint64) []byte {
	b := header(spii, spir, ike.INFORMATIONAL, ike.FlagInitiator)
	b[17] = 0x30
	b = append(b, make([]byte, 32)...)
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)))
	return b
}

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
	// The first demand comes from the engine (the socket loop answers
	// only while the engine demands cookies).
	if cookieIn(exchange(req)) == nil {
		t.Fatal("no cookie demanded")
	}
	// The shard is busy: the socket loop answers alone.
	release := busyShard(ctx, n, s)
	defer release()
	cookie := cookieIn(exchange(req))
	if cookie == nil {
		release()
		t.Fatal("no cookie from the socket loop while the shard is busy")
	}
	// On the NAT-T port, after the non-ESP marker; a burst of requests
	// (several read batches, their answers' buffers reused from batch to
	// batch) gets one answer each, for its own SPI.
	const burst = 3*readBatchLen + 5
	for i := range uint64(burst) {
		if _, err := c.WriteToUDPAddrPort(append([]byte{0, 0, 0, 0}, cookieInit(spi+1+i, nil)...), n.NATTAddr()); err != nil {
			t.Fatal(err)
		}
	}
	answered := map[uint64]bool{}
	for range burst {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		nb, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			release()
			t.Fatalf("%d of %d requests on the NAT-T port answered: %v", len(answered), burst, err)
		}
		if nb < 4 || binary.BigEndian.Uint32(buf) != 0 {
			release()
			t.Fatalf("answer on the NAT-T port without the non-ESP marker: %x", buf[:nb])
		}
		m, err := ike.Decode(append([]byte(nil), buf[4:nb]...))
		if err != nil || cookieIn(m) == nil || m.SPIi <= spi || m.SPIi > spi+burst || answered[m.SPIi] {
			release()
			t.Fatalf("answer on the NAT-T port: %+v, %v (answered so far %d)", m, err, len(answered))
		}
		answered[m.SPIi] = true
	}
	proven := cookieInit(spi, cookie)
	if _, err := c.WriteToUDPAddrPort(proven, n.IKEAddr()); err != nil {
		t.Fatal(err)
	}
	for len(s.q.proven) == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	prio, pq, init := len(s.q.prio), len(s.q.proven), len(s.q.init)
	release()
	if prio != 0 || pq != 1 || init != 0 {
		t.Fatalf("the request with the cookie: %d in the priority queue, %d in the proven queue, %d in the new-SA queue; want 0, 1, 0", prio, pq, init)
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
	if st.CookiesSent != 2+burst || st.HalfOpen != 1 {
		t.Fatalf("cookies sent %d (want %d), half-open %d (want 1)", st.CookiesSent, 2+burst, st.HalfOpen)
	}
}

// cookieClient is a UDP socket on loopback sending IKE_SA_INIT requests
// to a node and reading the cookies demanded.
type cookieClient struct {
	t   *testing.T
	c   *net.UDPConn
	to  netip.AddrPort
	buf []byte
}

func newCookieClient(t *testing.T, to netip.AddrPort) *cookieClient {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := configureSocket(c, 4<<20); err != nil {
		t.Fatal(err)
	}
	return &cookieClient{t: t, c: c, to: to, buf: make([]byte, 65535)}
}

func (cc *cookieClient) send(b []byte) {
	cc.t.Helper()
	if _, err := cc.c.WriteToUDPAddrPort(b, cc.to); err != nil {
		cc.t.Fatal(err)
	}
}

// next reads the next answer (within a bound, not a measure) and returns
// its initiator SPI and the cookie it demands (nil if none).
func (cc *cookieClient) next() (spi uint64, cookie []byte) {
	cc.t.Helper()
	cc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	nb, _, err := cc.c.ReadFromUDPAddrPort(cc.buf)
	if err != nil {
		cc.t.Fatal(err)
	}
	m, err := ike.Decode(append([]byte(nil), cc.buf[:nb]...))
	if err != nil {
		cc.t.Fatal(err)
	}
	for _, p := range m.Payloads {
		if nt, ok := p.(*ike.Notify); ok && nt.NotifyType == ike.COOKIE {
			return m.SPIi, nt.Data
		}
	}
	return m.SPIi, nil
}

// cookie reads the next answer and returns the cookie it demands, nil if
// none.
func (cc *cookieClient) cookie() []byte {
	cc.t.Helper()
	_, c := cc.next()
	return c
}

// answer reads the next answer and returns its initiator SPI and whether
// it demands a cookie.
func (cc *cookieClient) answer() (spi uint64, cookie bool) {
	cc.t.Helper()
	spi, c := cc.next()
	return spi, c != nil
}

// stallReads holds every batch read from a socket for which hold
// reports true until release is called (at the latest when the test
// ends); stalled is closed at the first.
func stallReads(t *testing.T, hold func(transport.Conn) bool) (stalled <-chan struct{}, release func()) {
	st, rel := make(chan struct{}), make(chan struct{})
	var first, once sync.Once
	hook := func(c transport.Conn, _ int) {
		if hold(c) {
			first.Do(func() { close(st) })
			<-rel
		}
	}
	receiveHook.Store(&hook)
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(func() {
		receiveHook.Store(nil)
		release()
	})
	return st, release
}

// A shard whose queue of new IKE_SA_INITs backs up demands cookies, far
// below its half-open threshold: the socket loop answers the next request
// itself while the shard is busy, and the engine then answers the queued
// ones with cookies too instead of computing their key exchanges. The
// backlog is ike.cookie_backlog (default 128); 0 turns the trigger off.
func TestBackloggedShardDemandsCookies(t *testing.T) {
	for _, tc := range []struct {
		name, cfg string
		backlog   int
		cookies   bool
	}{
		{"default", "", defaultCookieBacklog, true},
		{"configured", "  cookie_backlog: 4\n", 4, true},
		{"off", "  cookie_backlog: 0\n", defaultCookieBacklog, false},
	} {
		t.Run(tc.name, func(t *testing.T) { backlogCookies(t, tc.cfg, tc.backlog, tc.cookies) })
	}
}

// backlogCookies queues backlog new requests on a busy shard, then one
// more, and checks who got cookies.
func backlogCookies(t *testing.T, cfg string, backlog int, cookies bool) {
	n, _ := startNode(t, 1, "  cookie_threshold: 1000\n"+cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc := newCookieClient(t, n.IKEAddr())
	s := n.shards[0]
	var reqs [][]byte
	for spi := uint64(1); len(reqs) <= backlog; spi++ {
		if r := cookieInit(spi<<8|0x55, nil); n.shardFor(r) == s {
			reqs = append(reqs, r)
		}
	}
	release := busyShard(ctx, n, s)
	defer release()
	for _, r := range reqs[:backlog] {
		cc.send(r)
	}
	for len(s.q.init) < backlog && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	last := reqs[backlog]
	cc.send(last)
	if !cookies { // the last one joins the queue instead of being answered at once
		deadline := time.Now().Add(10 * time.Second)
		for len(s.q.init) < backlog+1 {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests queued, want %d: the last one was not queued", len(s.q.init), backlog+1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if cookies {
		spi, cookie := cc.answer()
		if want := binary.BigEndian.Uint64(last); spi != want || !cookie {
			t.Fatalf("answer for %016x (cookie %v) while the shard was busy; want a cookie for %016x", spi, cookie, want)
		}
	}
	release()
	answers := backlog
	if !cookies {
		answers++ // the last one was queued too
	}
	for range answers {
		if _, cookie := cc.answer(); cookie != cookies {
			t.Fatalf("a queued request answered with a cookie: %v, want %v", cookie, cookies)
		}
	}
	st, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantHalfOpen, wantCookies := 0, backlog+1
	if !cookies {
		wantHalfOpen, wantCookies = backlog+1, 0
	}
	if st.HalfOpen != wantHalfOpen || st.CookiesSent != uint64(wantCookies) {
		t.Fatalf("half-open %d (want %d), cookies sent %d (want %d)", st.HalfOpen, wantHalfOpen, st.CookiesSent, wantCookies)
	}
}

// Several goroutines read each socket (ike.socket_readers: 2): one
// stalled with its batch does not stop the others, and together they lose
// nothing (every request of a burst answered once).
func TestSocketReadersInParallel(t *testing.T) {
	n, _ := startNode(t, 1, "  cookie_threshold: 0\n  socket_readers: 2\n")
	cc := newCookieClient(t, n.IKEAddr())
	// The engine's first demand starts the socket loop's screening.
	cc.send(cookieInit(1, nil))
	if _, cookie := cc.answer(); !cookie {
		t.Fatal("no cookie demanded")
	}
	var calls atomic.Int32
	stalled, release := stallReads(t, func(transport.Conn) bool { return calls.Add(1) == 1 })
	cc.send(cookieInit(2, nil))
	<-stalled
	cc.send(cookieInit(3, nil))
	if spi, cookie := cc.answer(); spi != 3 || !cookie {
		t.Fatalf("with one reader stalled: answer for %d (cookie %v), want a cookie for 3", spi, cookie)
	}
	release()
	if spi, cookie := cc.answer(); spi != 2 || !cookie {
		t.Fatalf("after the stall: answer for %d (cookie %v), want a cookie for 2", spi, cookie)
	}
	const burst = 2000
	want := map[uint64]bool{}
	for i := range uint64(burst) {
		want[1000+i] = true
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range uint64(burst) {
			if _, err := cc.c.WriteToUDPAddrPort(cookieInit(1000+i, nil), cc.to); err != nil {
				return
			}
		}
	}()
	for range burst {
		spi, cookie := cc.answer()
		if !want[spi] || !cookie {
			t.Fatalf("answer for %d (cookie %v): not asked, or twice", spi, cookie)
		}
		delete(want, spi)
	}
	<-done
	rs := n.ReceiveStats()
	if rs.QueueDropsNew+rs.QueueDropsOther != 0 || len(want) != 0 {
		t.Fatalf("%d unanswered, queue drops %+v", len(want), rs)
	}
}

// ike.socket_readers, else half the CPUs, 1 to 8.
func TestSocketReadersCount(t *testing.T) {
	for _, c := range []struct{ configured, procs, want int }{
		{0, 1, 1}, {0, 2, 1}, {0, 3, 1}, {0, 4, 2}, {0, 16, 8}, {0, 64, 8},
		{2, 1, 2}, {12, 64, 12},
	} {
		if got := socketReaders(c.configured, c.procs); got != c.want {
			t.Errorf("socketReaders(%d, %d) = %d, want %d", c.configured, c.procs, got, c.want)
		}
	}
}

// Datagrams with malformed IKE headers (a length field that disagrees
// with the datagram, IKEv1, no initiator SPI) are dropped by the socket
// loop: with the shard busy they never take a place in the queue the
// established SAs' messages wait in. They count as the engine's drops,
// and a message of a later major version still goes on to the engine,
// which answers it.
func TestMalformedHeadersNeverQueued(t *testing.T) {
	n, _ := startNode(t, 1, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc := newCookieClient(t, n.IKEAddr())
	s := n.shards[0]
	st0, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := busyShard(ctx, n, s)
	defer release()
	const existing = 0x0a0b0c0d0e0f1011
	spir := uint64(s.id)<<spiShardShift | 0x1234
	long := append(header(existing, spir, ike.INFORMATIONAL, ike.FlagInitiator), make([]byte, 40)...) // length field 28
	v1 := header(existing, spir, ike.INFORMATIONAL, ike.FlagInitiator)
	v1[17] = 0x10
	noSPI := header(0, spir, ike.INFORMATIONAL, ike.FlagInitiator)
	for _, b := range [][]byte{long, v1, noSPI} {
		cc.send(b)
	}
	cc.send(laterMajorVersion(existing, spir))
	for (len(s.q.prio) < 1 || n.headerDrops.Load() < 3) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if p, d := len(s.q.prio), n.headerDrops.Load(); p != 1 || d != 3 {
		t.Fatalf("%d queued (want the later major version's alone), %d dropped by the socket loop (want 3)", p, d)
	}
	release()
	if spi, _ := cc.answer(); spi != existing {
		t.Fatalf("answer for %016x, want the later major version's", spi)
	}
	st1, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := st1.Dropped - st0.Dropped; d != 4 { // the three, and the answered major version
		t.Fatalf("%d drops counted, want 4", d)
	}
}

// A mass restart: cookie-proven IKE_SA_INITs (each a key exchange) queued
// before a message for an existing SA are still served after it. The
// message stands in for an established SA's liveness check: a later
// major version, which the engine answers without keys.
func TestProvenRequestsAfterEstablishedTraffic(t *testing.T) {
	n, _ := startNode(t, 1, "  cookie_threshold: 0\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cc := newCookieClient(t, n.IKEAddr())
	s := n.shards[0]
	const restart = 30
	var proven [][]byte
	for spi := uint64(1); len(proven) < restart; spi++ {
		req := cookieInit(spi<<8|0x77, nil)
		if n.shardFor(req) != s {
			continue
		}
		cc.send(req)
		cookie := cc.cookie()
		if cookie == nil {
			t.Fatalf("no cookie demanded of %016x", spi<<8|0x77)
		}
		proven = append(proven, cookieInit(spi<<8|0x77, cookie))
	}
	release := busyShard(ctx, n, s)
	defer release()
	for _, r := range proven {
		cc.send(r)
	}
	for len(s.q.proven) < restart && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	const existing = 0x0a0b0c0d0e0f1011
	cc.send(laterMajorVersion(existing, uint64(s.id)<<spiShardShift|0x1234))
	for len(s.q.prio) < 1 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if p, q := len(s.q.prio), len(s.q.proven); p != 1 || q != restart {
		t.Fatalf("queued: %d in the priority queue (want 1), %d proven (want %d)", p, q, restart)
	}
	release()
	spi, _ := cc.answer()
	if spi != existing {
		t.Fatalf("first answer for %016x: a new SA was served before the existing SA's message", spi)
	}
	for range restart {
		if spi, cookie := cc.answer(); spi == existing || cookie {
			t.Fatalf("answer for %016x (cookie %v), want a proven request's IKE_SA_INIT response", spi, cookie)
		}
	}
	st, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.HalfOpen != restart {
		t.Fatalf("half-open %d, want %d", st.HalfOpen, restart)
	}
}

// The spill is a FIFO through any interleaving of adds and takes (its
// array compacted or grown on the way), and its octets come back to 0.
func TestSpillQueueOrder(t *testing.T) {
	s := newSpillQueue(1 << 30)
	added, taken := 0, 0
	add := func(k int) {
		for range k {
			added++
			if !s.add(ike.Packet{Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 1), Data: binary.BigEndian.AppendUint32(nil, uint32(added))}) {
				t.Fatalf("packet %d refused", added)
			}
		}
	}
	take := func(k int) {
		for range k {
			p, ok := s.take()
			if !ok {
				t.Fatalf("nothing to take after %d of %d", taken, added)
			}
			taken++
			if got := int(binary.BigEndian.Uint32(p.Data)); got != taken {
				t.Fatalf("took packet %d, want %d", got, taken)
			}
		}
	}
	for _, step := range [][2]int{{1000, 1}, {1, 600}, {3000, 2000}, {1, 1}, {5, 1403}, {0, 2}} {
		add(step[0])
		take(step[1])
	}
	if added != taken || s.pending() || s.bytes != 0 {
		t.Fatalf("added %d, taken %d, pending %v, %d octets", added, taken, s.pending(), s.bytes)
	}
}

func TestSpillPerShard(t *testing.T) {
	for _, c := range []struct{ shards, want int }{{0, spillBytes}, {1, spillBytes}, {8, spillBytes}, {16, 4 << 20}, {64, spillMin}, {256, spillMin}} {
		if got := spillPerShard(c.shards); got != c.want {
			t.Errorf("%d shards: %d octets each, want %d", c.shards, got, c.want)
		}
	}
}

// A shard that stops taking (busy with a burst of its own, or kept busy
// by a flood of messages for its SAs) costs its socket's other shards
// nothing: its overflow spills, none of it dropped, and the reader goes
// on reading for the others. (A reader that waited for room in the full
// shard's queue, 50 ms per batch of 16, would have reached the other
// shard's message after about a minute.)
func TestFullShardDoesNotStallItsSocket(t *testing.T) {
	n, _ := startNode(t, 1, "  socket_buffer: 8388608\n")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stuck, other := n.shards[0], n.shards[1]
	release := busyShard(ctx, n, stuck)
	defer release()
	cc := newCookieClient(t, n.IKEAddr())
	const overflow = 20000
	// In rounds the reader keeps up with (a slow one, under the race
	// detector, would let the kernel drop from the socket's buffer, which
	// is not what this test is about).
	const round = 1000
	for sent := 0; sent < shardQueueLen+overflow; {
		for range min(round, shardQueueLen+overflow-sent) {
			sent++
			cc.send(laterMajorVersion(uint64(sent), uint64(stuck.id)<<spiShardShift|0x1234))
		}
		for stuck.q.waiting()[queuePrio] < sent {
			if ctx.Err() != nil {
				t.Fatalf("%d of %d sent reached the stopped shard; receive stats %+v", stuck.q.waiting()[queuePrio], sent, n.ReceiveStats())
			}
			time.Sleep(time.Millisecond)
		}
	}
	const existing = 0x0a0b0c0d0e0f1011
	cc.send(laterMajorVersion(existing, uint64(other.id)<<spiShardShift|0x1234))
	if spi, _ := cc.answer(); spi != existing {
		t.Fatalf("first answer for %016x, want the other shard's %016x", spi, uint64(existing))
	}
	if q, sp := len(stuck.q.prio), stuck.q.spill.n.Load(); q != shardQueueLen || sp != overflow {
		t.Fatalf("the stopped shard holds %d queued and %d spilled, want %d and %d", q, sp, shardQueueLen, overflow)
	}
	if w := stuck.q.waiting(); w != [3]int{shardQueueLen + overflow, 0, 0} {
		t.Fatalf("queue_waiting reads %v", w)
	}
	release()
	for len(stuck.q.prio) > 0 || stuck.q.spill.pending() {
		if ctx.Err() != nil {
			t.Fatalf("the shard, taking again, left %d queued and %d spilled", len(stuck.q.prio), stuck.q.spill.n.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rs := n.ReceiveStats(); rs.QueueDropsOther != 0 || rs.SocketDropsOther != 0 {
		t.Fatalf("dropped: %+v", rs)
	}
}

// With split sockets (the default), a flood of new IKE_SA_INITs that
// fills the receive buffer of the socket they arrive on (its reader
// stalled: a node that cannot keep up) costs the established SAs
// nothing: their messages arrive on the other socket and are answered,
// and so is a gateway's retry with its cookie. Without the split they
// would wait behind the flood in one buffer and be dropped with it.
func TestSplitSocketsServeEstablishedUnderFlood(t *testing.T) {
	n, _ := startNode(t, 1, "  cookie_threshold: 0\n  socket_buffer: 65536\n")
	cc := newCookieClient(t, n.IKEAddr())
	cc.send(cookieInit(1, nil))
	cookie := cc.cookie()
	if cookie == nil {
		t.Fatal("no cookie demanded")
	}

	stalled, release := stallReads(t, func(c transport.Conn) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.bulk[c]
	})
	cc.send(cookieInit(2, nil))
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("no socket of the new IKE_SA_INITs read the request without a cookie")
	}
	// The flood: far more than the stalled socket's buffer holds.
	flood, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	for i := range uint64(3000) {
		if _, err := flood.WriteToUDPAddrPort(cookieInit(1000+i, nil), n.IKEAddr()); err != nil {
			t.Fatal(err)
		}
	}
	drops := func() map[string]uint64 {
		m := map[string]uint64{}
		for _, d := range n.socketDrops() {
			if !d.NATT {
				m[d.Receives] += d.Count
			}
		}
		return m
	}
	if d := drops(); d["new"] == 0 || len(d) != 2 {
		t.Fatalf("IKE port's drops %v: the flood overflowed no buffer of new IKE_SA_INITs, the test proves nothing", d)
	}
	const existing = 0x0a0b0c0d0e0f1011
	cc.send(laterMajorVersion(existing, uint64(n.shards[0].id)<<spiShardShift|0x1234))
	if spi, _ := cc.answer(); spi != existing {
		t.Fatalf("answer for %016x, want the existing SA's", spi)
	}
	cc.send(cookieInit(1, cookie))
	if spi, c := cc.answer(); spi != 1 || c {
		t.Fatalf("answer for %016x (cookie %v), want the IKE_SA_INIT response to the retry with the cookie", spi, c)
	}
	release()
	// The stalled reader goes on: the request it held gets its cookie.
	if spi, c := cc.answer(); spi != 2 || !c {
		t.Fatalf("after the stall: answer for %016x (cookie %v), want a cookie for 2", spi, c)
	}
	if rs := n.ReceiveStats(); rs.QueueDropsOther != 0 {
		t.Fatalf("established SAs' messages dropped from a queue: %+v", rs)
	}
	if d := drops(); d["other"] != 0 {
		t.Fatalf("IKE port's drops %v: the socket of the established SAs dropped", d)
	}
}

// ike.split_sockets: false binds one socket per port, which serves
// everything.
func TestSplitSocketsOff(t *testing.T) {
	n, _ := startNode(t, 1, "  cookie_threshold: 0\n  split_sockets: false\n")
	n.mu.Lock()
	socks, bulk := len(n.sockets), len(n.bulk)
	n.mu.Unlock()
	if socks != 2 || bulk != 0 {
		t.Fatalf("%d sockets (%d for new SAs), want 2 (none)", socks, bulk)
	}
	for _, d := range n.socketDrops() {
		if d.Receives != "all" {
			t.Fatalf("socket drops labelled %q, want all", d.Receives)
		}
	}
	cc := newCookieClient(t, n.IKEAddr())
	cc.send(cookieInit(1, nil))
	if spi, cookie := cc.answer(); spi != 1 || !cookie {
		t.Fatalf("answer for %016x (cookie %v), want a cookie for 1", spi, cookie)
	}
}

// TestCommitAnswersBeforeQueuedPackets: a response held for its state's
// write leaves as soon as the store answers, ahead of the packets that
// queued at the shard meanwhile. In the shard's wait the answer would
// come after up to prioStreak of them (at 1,000 new SAs a second a few
// milliseconds of key exchanges), and only then by the wait's draw.
func TestCommitAnswersBeforeQueuedPackets(t *testing.T) {
	n, _ := startNode(t, 1, "  socket_buffer: 8388608\n")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := n.shards[0]
	cc := newCookieClient(t, n.IKEAddr())
	const held = 0x0badc0de0badc0de
	to := cc.c.LocalAddr().(*net.UDPAddr).AddrPort()
	b := &heldBatch{waiting: 1, send: []ike.Send{{Local: n.IKEAddr(), Remote: to,
		Messages: [][]byte{header(held, 1, ike.INFORMATIONAL, ike.FlagResponse)}}}}
	if err := n.do(ctx, s, func() { s.held = append(s.held, b) }); err != nil {
		t.Fatal(err)
	}
	release := busyShard(ctx, n, s)
	defer release()
	const queued = 2 * prioStreak
	for i := range queued {
		cc.send(laterMajorVersion(uint64(i+1), uint64(s.id)<<spiShardShift|0x1234))
	}
	for s.q.waiting()[queuePrio] < queued {
		if ctx.Err() != nil {
			t.Fatalf("%d of %d sent reached the stopped shard", s.q.waiting()[queuePrio], queued)
		}
		time.Sleep(time.Millisecond)
	}
	s.commits.post(commitResult{b: b, spi: held, version: 1})
	release()
	if spi, _ := cc.answer(); spi != held {
		t.Fatalf("first answer for %016x, want the held response (%016x) before the %d queued packets' answers", spi, uint64(held), queued)
	}
	for range queued {
		cc.answer()
	}
}
