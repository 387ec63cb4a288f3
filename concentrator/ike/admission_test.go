package ike

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// attackerInit is an IKE_SA_INIT request for aes256-sha256-modp2048 with a
// random (never computed) key exchange, as a flood host sends it: pad adds
// a Vendor ID of that many bytes, cookie (if any) goes first.
func attackerInit(spi uint64, cookie []byte, pad int) []byte {
	var ps []Payload
	if cookie != nil {
		ps = append(ps, &Notify{NotifyType: COOKIE, Data: cookie})
	}
	ke := make([]byte, 256)
	binary.BigEndian.PutUint64(ke, spi)
	ke[255] = 7
	ps = append(ps,
		&SA{Proposals: []Proposal{{Num: 1, Protocol: ProtoIKE, Transforms: []Transform{
			{Type: suite.TypeENCR, ID: 12, KeyLen: 256}, {Type: suite.TypePRF, ID: 5},
			{Type: suite.TypeINTEG, ID: 12}, {Type: suite.TypeKE, ID: 14}}}}},
		&KE{Group: 14, Data: ke},
		&Nonce{Data: bytes.Repeat([]byte{byte(spi)}, 32)},
	)
	if pad > 0 {
		ps = append(ps, &Vendor{Data: make([]byte, pad)})
	}
	return (&Message{SPIi: spi, Exchange: IKE_SA_INIT, Flags: FlagInitiator, Payloads: ps}).Encode()
}

// cookieOf returns the COOKIE of a responder's answer, or nil.
func cookieOf(rd *Ready) []byte {
	for _, s := range rd.Send {
		for _, b := range s.Messages {
			m, err := Decode(b)
			if err != nil {
				continue
			}
			if n := findNotify(m.Payloads, COOKIE); n != nil {
				return n.Data
			}
		}
	}
	return nil
}

// echoingFlood sends n cookie-echoing IKE_SA_INIT requests from src.
func echoingFlood(e *Engine, src netip.AddrPort, first uint64, n, pad int) {
	for i := 0; i < n; i++ {
		spi := first + uint64(i)
		pkt := Packet{Local: concAddr, Remote: src, Data: attackerInit(spi, nil, pad)}
		rd := R(func(rd *Ready) { e.Handle(t0, pkt, rd) })
		if c := cookieOf(rd); c != nil {
			pkt.Data = attackerInit(spi, c, pad)
			e.Handle(t0, pkt, &Ready{})
		}
	}
}

// A host using its real address and echoing cookies is bounded by the
// per-prefix quota; a gateway elsewhere still connects.
func TestHalfOpenPerPrefixBound(t *testing.T) {
	w, _ := quotaWire(t, 10, 50)
	attacker := netip.MustParseAddrPort("198.51.100.7:500")
	echoingFlood(w.res, attacker, 1000, 2000, 0)
	st := w.res.Stats()
	if st.HalfOpen > 10+50 {
		t.Fatalf("%d half-open SAs from one address (threshold 10, per-prefix 50)", st.HalfOpen)
	}
	if st.RefusedPrefix == 0 || st.CookiesSent == 0 {
		t.Fatalf("stats %+v", st)
	}
	acts := &Ready{}
	w.ini.Initiate(w.now, pskInitiation(t), acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("genuine gateway under flood: %v", w.events)
	}
}

// Many gateways behind one NAT address connect while a flood host holds
// its quota: the per-prefix bound counts only cookie-proven requests and
// the gateways' own prefix is a different one.
func TestGatewaysBehindOneNATAddress(t *testing.T) {
	w, psks := quotaWire(t, 10, 50)
	echoingFlood(w.res, netip.MustParseAddrPort("198.51.100.7:500"), 1000, 500, 0)
	// 100 gateways start at once (all half-open together). Those over the
	// quota are dropped silently; they retransmit and get in as the others
	// complete.
	waves := massRestart(t, w, psks, 100, 5)
	if n := waves[len(waves)-1]; n != 100 {
		t.Fatalf("%d of 100 gateways behind one address established (stats %+v)", n, w.res.Stats())
	}
}

// A padded IKE_SA_INIT is dropped before parsing: it never makes a
// half-open SA, and a datagram over max_message_size is dropped at once.
func TestOversizedInitDropped(t *testing.T) {
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	b := attackerInit(1, nil, 60<<10)
	rd := R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	if len(rd.Send) != 0 || e.Len() != 0 || e.Stats().Oversized != 1 {
		t.Fatalf("padded request: sends %d, SAs %d, stats %+v", len(rd.Send), e.Len(), e.Stats())
	}
	small := attackerInit(2, nil, 0)
	e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: small}, &Ready{})
	st := e.Stats()
	if st.HalfOpen != 1 || st.HalfOpenBytes <= 0 || st.HalfOpenBytes > int64(2*len(small)+halfOpenOverhead+1024) {
		t.Fatalf("half-open accounting: %+v", st)
	}
	e.Tick(t0.Add(2*DefaultHalfOpenTimeout), &Ready{})
	if st := e.Stats(); st.HalfOpen != 0 || st.HalfOpenBytes != 0 {
		t.Fatalf("after the half-open timeout: %+v", st)
	}
}

// The hard caps: half-open count, half-open memory and IKE SAs in all.
func TestAdmissionCaps(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		stat func(Stats) uint64
		max  int
	}{
		{"max_half_open", func(c *Config) { c.MaxHalfOpen = 20 }, func(s Stats) uint64 { return s.RefusedHalfOpen }, 20},
		{"max_half_open_bytes", func(c *Config) { c.MaxHalfOpenBytes = 30 * 2000 }, func(s Stats) uint64 { return s.RefusedMemory }, 30 * 2000 / halfOpenOverhead},
		{"max_sas", func(c *Config) { c.MaxSAs = 15 }, func(s Stats) uint64 { return s.RefusedSAs }, 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rcfg := responderConfig(t, 1)
			tc.set(&rcfg)
			e, err := NewEngine(rcfg)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 100; i++ {
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 500)
				e.Handle(t0, Packet{Local: concAddr, Remote: src, Data: attackerInit(uint64(i+1), nil, 0)}, &Ready{})
			}
			st := e.Stats()
			if st.HalfOpen > tc.max || tc.stat(st) == 0 || st.HalfOpen+int(tc.stat(st)) != 100 || st.HalfOpenBytes > e.cfg.MaxHalfOpenBytes {
				t.Fatalf("half-open %d (cap %d), stats %+v", st.HalfOpen, tc.max, st)
			}
		})
	}
}

// RFC 7296 §3.10.1: UNSUPPORTED_CRITICAL_PAYLOAD carries the payload type.
func TestUnsupportedCriticalPayloadData(t *testing.T) {
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	b := (&Message{SPIi: 9, Exchange: IKE_SA_INIT, Flags: FlagInitiator, Payloads: []Payload{&Unknown{PType: 201, Data: []byte{1}}}}).Encode()
	b[headerLen+1] |= 0x80
	rd := R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	if len(rd.Send) != 1 {
		t.Fatalf("answers: %v", rd.Send)
	}
	m, err := Decode(rd.Send[0].Messages[0])
	if err != nil {
		t.Fatal(err)
	}
	n := findNotify(m.Payloads, UNSUPPORTED_CRITICAL_PAYLOAD)
	if n == nil || !bytes.Equal(n.Data, []byte{201}) {
		t.Fatalf("notify %+v", m.Payloads)
	}
}

// RFC 7296 §2.5: a request of a later major version gets
// INVALID_MAJOR_VERSION in a version 2 header; responses get nothing.
func TestInvalidMajorVersionAnswered(t *testing.T) {
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	b := attackerInit(42, nil, 0)
	b[17] = 0x30
	rd := R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	if len(rd.Send) != 1 {
		t.Fatalf("answers: %v", rd.Send)
	}
	r := rd.Send[0].Messages[0]
	m, err := Decode(r)
	if err != nil {
		t.Fatal(err)
	}
	if r[17] != Version || !m.IsResponse() || m.FromInitiator() || m.SPIi != 42 || findNotify(m.Payloads, INVALID_MAJOR_VERSION) == nil {
		t.Fatalf("answer %x", r)
	}
	b[19] = FlagResponse
	rd = R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	if len(rd.Send) != 0 {
		t.Fatal("answered a response")
	}
}

// quotaWire is a wire whose responder demands cookies above threshold
// half-open SAs and has perPrefix as its per-prefix quota; more gateways'
// PSKs can go into the map returned.
func quotaWire(t *testing.T, threshold, perPrefix int) (*wire, PSKMap) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = threshold
	rcfg.MaxHalfOpenPerPrefix = perPrefix
	psks := rcfg.PSKs.(PSKMap)
	return newWire(t, rcfg), psks
}

// massRestart starts n gateways behind the wire's NAT address at once and then runs
// the initiators' retransmission rounds; it returns how many responder
// SAs were established after the first exchange and after each round.
func massRestart(t *testing.T, w *wire, psks PSKMap, n, rounds int) []int {
	t.Helper()
	established := func() int { return w.count(EventIKEEstablished) / 2 }
	var batches []hop
	for i := range n {
		ini := pskInitiation(t)
		id, err := ParseIdentity(fmt.Sprintf("gw%d.example.net", i))
		if err != nil {
			t.Fatal(err)
		}
		ini.Creds.ID = id
		psks[id.String()] = testPSK
		ini.Local = netip.AddrPortFrom(gwAddr.Addr(), uint16(1000+i))
		rd := &Ready{}
		if _, err := w.ini.Initiate(w.now, ini, rd); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, hop{rd, true})
	}
	w.runHops(batches...)
	waves := []int{established()}
	for i := 0; i < rounds && established() < n; i++ {
		w.now = w.now.Add(DefaultRetransmitTimeout << i)
		rd := R(func(rd *Ready) { w.ini.Tick(w.now, rd) })
		var hops []hop
		for _, s := range rd.Send {
			hops = append(hops, hop{&Ready{Send: []Send{s}}, true})
		}
		w.runHops(hops...)
		waves = append(waves, established())
	}
	return waves
}

// A mass restart behind one NAT address: the gateways over the prefix's
// quota are dropped and retransmit, and the ones that authenticate earn
// the address credit, so each retransmission round admits more than the
// last. With the base quota alone (10 a round) 100 gateways would need
// eight rounds, more than an initiator's five retransmissions.
func TestPrefixCreditAfterMassRestart(t *testing.T) {
	w, psks := quotaWire(t, 10, 10)
	waves := massRestart(t, w, psks, 100, 5)
	t.Logf("established after each round: %v; stats %+v", waves, w.res.Stats())
	if last := waves[len(waves)-1]; last != 100 || len(waves) > 4 {
		t.Fatalf("established after each retransmission round: %v, want all 100 within three rounds", waves)
	}
	for i := 1; i < len(waves)-1; i++ {
		if got, prev := waves[i]-waves[i-1], waves[i-1]; got < min(prev, 100-prev) {
			t.Fatalf("round %d admitted %d after %d had authenticated: %v", i, got, prev, waves)
		}
	}
	if w.res.Stats().RefusedPrefix == 0 {
		t.Fatal("the quota never refused a gateway: the test does not exercise credit")
	}
	// The credit is the gateways' prefix's: a cookie-echoing host at
	// another address is still held to the base quota.
	w.res.Tick(w.now, &Ready{})
	before := w.res.Stats().HalfOpen
	echoingFlood(w.res, netip.MustParseAddrPort("198.51.100.7:500"), 1<<20, 200, 0)
	if got := w.res.Stats().HalfOpen - before; got > 10 {
		t.Fatalf("a cookie-echoing host holds %d half-open SAs with a quota of 10", got)
	}
	// Credit lasts CreditWindow.
	p := w.res.sourcePrefix(natAddr.Addr())
	if len(w.res.credit) != 1 || w.res.credit[p] == 0 || w.res.Stats().PrefixCredits != uint64(w.res.credit[p]) {
		t.Fatalf("credit %v (stats %d): want the gateways' NAT address only", w.res.credit, w.res.Stats().PrefixCredits)
	}
	if q := w.res.prefixQuota(w.now, p); q <= 10 {
		t.Fatalf("quota of the gateways' address right after the restart: %d", q)
	}
	if q := w.res.prefixQuota(w.now.Add(CreditWindow), p); q != 10 || len(w.res.credit) != 0 || w.res.creditQ.len() != 0 {
		t.Fatalf("after CreditWindow: quota %d, %d prefixes with credit, %d entries", q, len(w.res.credit), w.res.creditQ.len())
	}
}

// A host that only echoes cookies never authenticates, so however often
// it is refused it earns no credit.
func TestCookieEchoingEarnsNoCredit(t *testing.T) {
	w, _ := quotaWire(t, 10, 50)
	attacker := netip.MustParseAddrPort("198.51.100.7:500")
	echoingFlood(w.res, attacker, 1000, 2000, 0)
	// Its half-open SAs time out, and it tries again.
	w.res.Tick(t0.Add(2*DefaultHalfOpenTimeout), &Ready{})
	echoingFlood(w.res, attacker, 5000, 2000, 0)
	st := w.res.Stats()
	if st.RefusedPrefix == 0 || len(w.res.credit) != 0 || st.PrefixCredits != 0 || st.HalfOpen > 10+50 {
		t.Fatalf("credit %v, stats %+v", w.res.credit, st)
	}
}

// Credit never lets one prefix hold more than half of max_half_open or of
// max_half_open_bytes beyond its base quota.
func TestPrefixCreditBounded(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = 1
	rcfg.MaxHalfOpenPerPrefix = 4
	rcfg.MaxHalfOpen = 20
	w := newWire(t, rcfg)
	p := w.res.sourcePrefix(gwAddr.Addr())
	for range 100 {
		w.res.earnCredit(w.now, p)
	}
	if q := w.res.prefixQuota(w.now, p); q != 10 {
		t.Fatalf("quota with 100 credit, base 4, max_half_open 20: %d, want 10", q)
	}
	// The bytes bound: with room for only five worst-case requests in
	// half of the memory cap, the sixth is refused whatever the credit.
	w.res.cfg.MaxHalfOpenBytes = 5*HalfOpenWorstCost(1000) + HalfOpenWorstCost(1000)/2
	w.res.cfg.MaxHalfOpenBytes *= 2
	held := 0
	for i := range 20 {
		if !w.res.prefixAdmits(w.now, gwAddr.Addr(), 1000) {
			break
		}
		l := w.res.perPrefix[p]
		l.halfOpen++
		l.bytes += HalfOpenWorstCost(1000)
		w.res.perPrefix[p] = l
		held = i + 1
	}
	if held != 5 {
		t.Fatalf("a prefix with credit held %d worst-case half-open SAs; half the memory cap fits 5", held)
	}
}
