package ike

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// detRand is a deterministic randomness source for replayable handshakes.
type detRand struct{ r *rand.ChaCha8 }

func newDetRand(seed byte) *detRand {
	var s [32]byte
	s[0] = seed
	return &detRand{rand.NewChaCha8(s)}
}

func (d *detRand) Read(b []byte) (int, error) { return d.r.Read(b) }

var (
	t0       = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	gwAddr   = netip.MustParseAddrPort("10.10.1.2:500")
	natAddr  = netip.MustParseAddrPort("192.168.100.1:500")
	concAddr = netip.MustParseAddrPort("192.168.100.2:500")
	testPSK  = []byte("interop-test-psk-0123456789abcdef")
	gwID     = Identity{Type: IDRFC822Addr, Data: []byte("gw1@iot.example")}
	concID   = Identity{Type: IDFQDN, Data: []byte("conc.example")}
	lanTS    = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("10.20.0.0/24"))}
	coreTS   = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))}
	remoteTS = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("10.20.0.0/16"))}
)

func mustProposals(t testing.TB, esp bool, ss ...string) []ProposalSpec {
	t.Helper()
	var out []ProposalSpec
	for _, s := range ss {
		p, err := ParseProposal(s, esp, false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func responderConfig(t testing.TB, seed byte) Config {
	return Config{
		Local:           Credentials{ID: concID},
		PSKs:            PSKMap{gwID.String(): testPSK},
		IKEProposals:    mustProposals(t, false, "aes256gcm16-prfsha256-x25519", "aes256-sha256-modp2048"),
		ESPProposals:    mustProposals(t, true, "aes256gcm16"),
		LocalTS:         coreTS,
		RemoteTS:        remoteTS,
		ForceEncap:      true,
		CookieThreshold: 1000,
		Rand:            newDetRand(seed),
	}
}

func initiatorEngine(t testing.TB, seed byte) *Engine {
	e, err := NewEngine(Config{IKEProposals: mustProposals(t, false, "aes256gcm16-prfsha256-x25519"), Rand: newDetRand(seed)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func pskInitiation(t testing.TB) Initiation {
	return Initiation{
		Local: gwAddr, Remote: concAddr,
		Creds:        Credentials{ID: gwID},
		RemoteID:     concID,
		PSK:          testPSK,
		IKEProposals: mustProposals(t, false, "aes256gcm16-prfsha256-x25519"),
		ESPProposals: mustProposals(t, true, "aes256gcm16"),
		TSi:          lanTS,
		TSr:          coreTS,
	}
}

// wire carries Send actions between an initiator behind a NAT and a
// responder, rewriting the initiator's address as a NAT would. It applies
// each batch the way the node does: persists are committed at once (unless
// hold says otherwise), then the data plane changes, then the sends.
type wire struct {
	t          testing.TB
	ini, res   *Engine
	now        time.Time
	events     []Event
	installs   []InstallChild
	removes    []RemoveChild
	seqLimits  []SetSeqLimit
	skips      []SkipSeq
	sides      []bool // per install/remove, in order: produced by the initiator
	order      []any
	drop       func(toResponder bool, msg []byte) bool
	natShift   uint16    // a NAT rebinding moves the gateway's public port
	resNAT     bool      // the responder is behind a NAT too: it sees a private address
	persists   []Persist // the responder's
	keepalives int
	// hold, when set, keeps the responder's persists uncommitted: their
	// batches' data-plane changes and sends are held back in held.
	hold bool
	held []*Ready
	// eap answers the responder's EAP backend requests (nil: unanswered,
	// kept in eapReqs).
	eap     func(EAPRequest) EAPAnswer
	eapReqs []EAPRequest
	checks  []CheckTraffic // the responder's, unanswered
}

func (w *wire) nat(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(natAddr.Addr(), a.Port()+10000+w.natShift)
}

type hop struct {
	rd  *Ready
	ini bool
}

// run delivers a batch and what it causes until nothing is left to send.
func (w *wire) run(rd *Ready, fromInitiator bool) { w.runHops(hop{rd, fromInitiator}) }

// establish starts ini from the initiator and runs the wire until both
// sides report the IKE SA established; it returns the initiator's SPI.
func (w *wire) establish(t testing.TB, ini Initiation) uint64 {
	t.Helper()
	acts := &Ready{}
	spi, err := w.ini.Initiate(w.now, ini, acts)
	if err != nil {
		t.Fatal(err)
	}
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("not established: %+v", w.events)
	}
	return spi
}

// commit commits the held responder batches and delivers them.
func (w *wire) commit() {
	held := w.held
	w.held = nil
	w.hold = false
	for _, rd := range held {
		for _, p := range rd.Persist {
			w.res.Committed(p.SPI, p.Version)
		}
		w.runHops(hop{&Ready{DataPlane: rd.DataPlane, Send: rd.Send}, false})
	}
}

// runHops delivers several sides' batches, interleaved, until quiet.
func (w *wire) runHops(hops ...hop) {
	queue := hops
	for steps := 0; len(queue) > 0; steps++ {
		if steps > 100+20*len(hops) {
			w.t.Fatal("message loop")
		}
		h := queue[0]
		queue = queue[1:]
		eng := w.res
		if h.ini {
			eng = w.ini
		}
		w.events = append(w.events, h.rd.Events...)
		if !h.ini {
			for _, req := range h.rd.EAP {
				w.eapReqs = append(w.eapReqs, req)
				if w.eap != nil {
					ans := w.eap(req)
					queue = append(queue, hop{R(func(rd *Ready) { w.res.EAPAnswer(w.now, req.SPI, req.Round, ans, rd) }), false})
				}
			}
		}
		if len(h.rd.Persist) > 0 {
			if !h.ini {
				w.persists = append(w.persists, h.rd.Persist...)
				if w.hold {
					w.held = append(w.held, h.rd)
					continue
				}
			}
			for _, p := range h.rd.Persist {
				eng.Committed(p.SPI, p.Version)
			}
		}
		for _, a := range h.rd.DataPlane {
			switch a := a.(type) {
			case InstallChild:
				w.installs = append(w.installs, a)
				w.order = append(w.order, a)
				w.sides = append(w.sides, h.ini)
			case RemoveChild:
				w.removes = append(w.removes, a)
				w.order = append(w.order, a)
				w.sides = append(w.sides, h.ini)
			case SetSeqLimit:
				if !h.ini {
					w.seqLimits = append(w.seqLimits, a)
				}
			case SkipSeq:
				w.skips = append(w.skips, a)
			case CheckTraffic:
				if !h.ini {
					w.checks = append(w.checks, a)
				}
			}
		}
		for _, a := range h.rd.Send {
			if a.Keepalive {
				w.keepalives++
				continue
			}
			for _, m := range a.Messages {
				if w.drop != nil && w.drop(h.ini, m) {
					continue
				}
				if h.ini {
					local := a.Remote
					if w.resNAT {
						local = netip.AddrPortFrom(netip.MustParseAddr("172.16.0.5"), a.Remote.Port())
					}
					pkt := Packet{Local: local, Remote: w.nat(a.Local), Data: append([]byte(nil), m...)}
					queue = append(queue, hop{R(func(rd *Ready) { w.res.Handle(w.now, pkt, rd) }), false})
				} else {
					remote := a.Local
					if w.resNAT {
						remote = netip.AddrPortFrom(concAddr.Addr(), a.Local.Port())
					}
					pkt := Packet{Local: netip.AddrPortFrom(gwAddr.Addr(), a.Remote.Port()-10000-w.natShift), Remote: remote, Data: append([]byte(nil), m...)}
					queue = append(queue, hop{R(func(rd *Ready) { w.ini.Handle(w.now, pkt, rd) }), true})
				}
			}
		}
	}
}

func (w *wire) count(k EventKind) int {
	n := 0
	for _, e := range w.events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

func newWire(t testing.TB, rcfg Config) *wire {
	res, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	return &wire{t: t, ini: initiatorEngine(t, 2), res: res, now: t0}
}

func TestHandshakePSK(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	acts := &Ready{}
	spi, err := w.ini.Initiate(w.now, pskInitiation(t), acts)
	if err != nil {
		t.Fatal(err)
	}
	w.run(acts, true)
	if got := w.count(EventIKEEstablished); got != 2 {
		t.Fatalf("established events = %d, want 2 (both sides); events: %+v", got, w.events)
	}
	if len(w.installs) != 2 {
		t.Fatalf("child installs = %d, want 2", len(w.installs))
	}
	ic, rc := w.installs[1].Child, w.installs[0].Child
	if w.installs[0].SPIr == 0 || ic.InSPI != rc.OutSPI || ic.OutSPI != rc.InSPI {
		t.Fatalf("SPIs do not pair: initiator %08x/%08x responder %08x/%08x", ic.InSPI, ic.OutSPI, rc.InSPI, rc.OutSPI)
	}
	if string(ic.KeyOut().Encr) != string(rc.KeyIn().Encr) || string(ic.KeyIn().Encr) != string(rc.KeyOut().Encr) {
		t.Fatal("CHILD keys do not pair")
	}
	if len(ic.KeyOut().Encr) != 36 {
		t.Fatalf("AES-GCM-256 key with salt is %d bytes, want 36", len(ic.KeyOut().Encr))
	}
	if FormatSelectors(rc.RemoteTS) != "10.20.0.0/24" || FormatSelectors(rc.LocalTS) != "10.30.0.0/24" {
		t.Fatalf("responder TS %s === %s", FormatSelectors(rc.LocalTS), FormatSelectors(rc.RemoteTS))
	}
	if !rc.Encap || rc.Remote.Port() != 4500+10000 || rc.Local.Port() != 4500 {
		t.Fatalf("responder child not UDP-encapsulated on 4500: %+v %v %v", rc.Encap, rc.Local, rc.Remote)
	}
	sa := w.ini.SA(spi)
	if sa == nil || !sa.Established() {
		t.Fatal("initiator SA not established")
	}
	if w.res.Stats().HalfOpen != 0 {
		t.Fatalf("half-open = %d after establishment", w.res.Stats().HalfOpen)
	}
	// Delete from the initiator: both sides drop the SA.
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	if w.ini.Len() != 0 || w.res.Len() != 0 {
		t.Fatalf("after delete: initiator %d SAs, responder %d", w.ini.Len(), w.res.Len())
	}
	if w.count(EventIKEDeleted) != 2 {
		t.Fatalf("deleted events = %d, want 2", w.count(EventIKEDeleted))
	}
}

func TestHandshakeWrongPSK(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	ini := pskInitiation(t)
	ini.PSK = []byte("not the right key")
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 0 {
		t.Fatal("established with a wrong PSK")
	}
	var resFail, iniFail bool
	for _, e := range w.events {
		if e.Kind == EventIKEFailed && e.Notify == AUTHENTICATION_FAILED {
			if e.Initiator {
				iniFail = true
			} else {
				resFail = true
			}
		}
	}
	if !resFail || !iniFail {
		t.Fatalf("want AUTHENTICATION_FAILED on both sides: %+v", w.events)
	}
	if w.res.Len() != 0 || w.ini.Len() != 0 {
		t.Fatal("failed SAs left in the tables")
	}
}

func TestInvalidKERetry(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.IKEProposals = mustProposals(t, false, "aes256gcm16-prfsha256-ecp256")
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.IKEProposals = mustProposals(t, false, "aes256gcm16-prfsha256-x25519-ecp256")
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("no establishment after INVALID_KE_PAYLOAD retry: %+v", w.events)
	}
	if got := w.res.Stats().Failed[INVALID_KE_PAYLOAD]; got != 1 {
		t.Fatalf("INVALID_KE_PAYLOAD sent %d times, want 1", got)
	}
}

func TestNoProposalChosen(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	ini := pskInitiation(t)
	ini.IKEProposals = mustProposals(t, false, "aes128gcm16-prfsha512-ecp384")
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	ok := false
	for _, e := range w.events {
		ok = ok || (e.Kind == EventIKEFailed && e.Initiator && e.Notify == NO_PROPOSAL_CHOSEN)
	}
	if !ok {
		t.Fatalf("initiator did not see NO_PROPOSAL_CHOSEN: %+v", w.events)
	}
}

func TestCookies(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = 0 // always demand a cookie
	w := newWire(t, rcfg)
	acts := &Ready{}
	w.ini.Initiate(w.now, pskInitiation(t), acts)
	w.run(acts, true)
	if w.count(EventCookieSent) != 1 || w.count(EventIKEEstablished) != 2 {
		t.Fatalf("cookie exchange: %+v", w.events)
	}
}

func TestTSUnacceptable(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	ini := pskInitiation(t)
	ini.TSi = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("172.16.0.0/24"))}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 0 {
		t.Fatalf("want IKE SA without CHILD SA: %+v", w.events)
	}
	found := false
	for _, e := range w.events {
		found = found || (e.Kind == EventChildFailed && e.Initiator && e.Notify == TS_UNACCEPTABLE)
	}
	if !found {
		t.Fatalf("initiator did not see TS_UNACCEPTABLE: %+v", w.events)
	}
}

func TestVirtualIP(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.Pool = NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	rcfg.RemoteTS = nil
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.RequestVIP = true
	ini.TSi = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if len(w.installs) != 2 {
		t.Fatalf("installs = %d: %+v", len(w.installs), w.events)
	}
	rc := w.installs[0].Child
	if rc.VirtualIP != netip.MustParseAddr("10.99.0.1") || FormatSelectors(rc.RemoteTS) != "10.99.0.1/32" {
		t.Fatalf("virtual IP %v, remote TS %s", rc.VirtualIP, FormatSelectors(rc.RemoteTS))
	}
	if w.installs[1].Child.VirtualIP != rc.VirtualIP {
		t.Fatal("initiator did not learn its virtual IP")
	}
}

func TestRetransmissions(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	// Lose the first IKE_AUTH response: the initiator retransmits, the
	// responder answers from its cache, and both end up established once.
	lost := false
	w.drop = func(toResponder bool, msg []byte) bool {
		h, _ := DecodeHeader(msg)
		if !toResponder && h.Exchange == IKE_AUTH && !lost {
			lost = true
			return true
		}
		return false
	}
	acts := &Ready{}
	spi, _ := w.ini.Initiate(w.now, pskInitiation(t), acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 1 {
		t.Fatalf("responder should be established, initiator not yet: %+v", w.events)
	}
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
		t.Fatalf("after retransmission: %+v", w.events)
	}
	if w.res.Stats().DuplicateRequests != 1 || w.ini.Stats().Retransmits != 1 {
		t.Fatalf("stats: responder %+v initiator %+v", w.res.Stats(), w.ini.Stats())
	}
	// A peer that never answers: the initiator gives up after its tries.
	w.drop = func(bool, []byte) bool { return true }
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	for i := 0; i < 300 && w.ini.Len() > 0; i++ {
		w.now = w.now.Add(time.Second)
		w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	}
	if w.ini.Len() != 0 {
		t.Fatal("initiator kept an SA whose peer never answered")
	}
}

func TestHalfOpenTimeout(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	w.drop = func(toResponder bool, msg []byte) bool {
		h, _ := DecodeHeader(msg)
		return toResponder && h.Exchange == IKE_AUTH
	}
	acts := &Ready{}
	w.ini.Initiate(w.now, pskInitiation(t), acts)
	w.run(acts, true)
	if w.res.Stats().HalfOpen != 1 {
		t.Fatal("no half-open SA")
	}
	w.now = w.now.Add(DefaultHalfOpenTimeout)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if w.res.Len() != 0 || w.res.Stats().HalfOpen != 0 {
		t.Fatal("half-open SA not expired")
	}
}

// testPKI is a CA with one certificate each for the concentrator and a gateway.
type testPKI struct {
	roots          *x509.CertPool
	conc, gw       *ecdsa.PrivateKey
	concDER, gwDER []byte
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, _ := ecdsa.GenerateKey(elliptic.P256(), newDetRand(9))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(newDetRand(9), tmpl, tmpl, &ca.PublicKey, ca)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, name string, seed byte) (*ecdsa.PrivateKey, []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), newDetRand(seed))
		tm := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(newDetRand(seed), tm, caCert, &k.PublicKey, ca)
		if err != nil {
			t.Fatal(err)
		}
		return k, der
	}
	p := &testPKI{roots: x509.NewCertPool()}
	p.roots.AddCert(caCert)
	p.conc, p.concDER = issue(2, "conc.example", 10)
	p.gw, p.gwDER = issue(3, "gw1.iot.example", 11)
	return p
}

func TestHandshakeECDSA(t *testing.T) {
	pki := newTestPKI(t)
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = nil
	rcfg.Local = Credentials{ID: concID, Signer: pki.conc, Chain: [][]byte{pki.concDER}}
	rcfg.Verifier = &sig.Verifier{Roots: pki.roots}
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.PSK = nil
	gwFQDN := Identity{Type: IDFQDN, Data: []byte("gw1.iot.example")}
	ini.Creds = Credentials{ID: gwFQDN, Signer: pki.gw, Chain: [][]byte{pki.gwDER}}
	ini.Verifier = &sig.Verifier{Roots: pki.roots}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
		t.Fatalf("ECDSA handshake: %+v", w.events)
	}
	if !w.installs[0].PeerID.Equal(gwFQDN) {
		t.Fatalf("responder peer id %v", w.installs[0].PeerID)
	}

	// The same gateway claiming another identity than its certificate's.
	w2 := newWire(t, rcfg)
	ini.Creds.ID = Identity{Type: IDFQDN, Data: []byte("gw2.iot.example")}
	acts = &Ready{}
	_, _ = w2.ini.Initiate(w2.now, ini, acts)
	w2.run(acts, true)
	if w2.count(EventIKEEstablished) != 0 {
		t.Fatal("established with an identity the certificate does not carry")
	}
}

// R runs one engine step into a fresh batch and returns it.
func R(f func(rd *Ready)) *Ready {
	rd := &Ready{}
	f(rd)
	return rd
}

// Under load a responder demands a cookie for an IKE_SA_INIT, then has
// room again (and its last cookie demand is a half-open timeout old) when
// the initiator's retransmission of the cookieless request arrives, and
// answers it. The initiator meanwhile sent the request again
// with the cookie, and signs that one in IKE_AUTH: the responder must
// still authenticate it; and the second cookie answer (to the
// retransmission) must not fail the initiator.
func TestCookieRetryRacesRetransmission(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = 1
	res, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	// Forcing encapsulation, as load generators and strongSwan's
	// encap=yes do: its NAT detection claim must survive the cookie retry.
	ini, err := NewEngine(Config{IKEProposals: mustProposals(t, false, "aes256gcm16-prfsha256-x25519"), Rand: newDetRand(2), ForceEncap: true})
	if err != nil {
		t.Fatal(err)
	}
	sends := func(rd *Ready) [][]byte {
		var out [][]byte
		for _, s := range rd.Send {
			out = append(out, s.Messages...)
		}
		return out
	}
	failed := func(rd *Ready) string {
		for _, ev := range rd.Events {
			if ev.Kind == EventIKEFailed {
				return ev.Reason
			}
		}
		return ""
	}
	one := func(what string, msgs [][]byte) []byte {
		t.Helper()
		if len(msgs) != 1 {
			t.Fatalf("%s: %d messages, want 1", what, len(msgs))
		}
		return msgs[0]
	}
	resNow := t0
	toRes := func(b []byte) *Ready {
		return R(func(rd *Ready) { res.Handle(resNow, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	}
	toIni := func(b []byte) *Ready {
		return R(func(rd *Ready) { ini.Handle(t0, Packet{Local: gwAddr, Remote: concAddr, Data: b}, rd) })
	}

	// Another gateway's half-open SA puts the responder at its threshold.
	other := initiatorEngine(t, 3)
	acts := &Ready{}
	other.Initiate(t0, pskInitiation(t), acts)
	otherResp := one("other's INIT response", sends(toRes(one("other's INIT", sends(acts)))))
	otherSPIr := binary.BigEndian.Uint64(otherResp[8:])

	acts = &Ready{}
	spi, err := ini.Initiate(t0, pskInitiation(t), acts)
	if err != nil {
		t.Fatal(err)
	}
	init1 := one("INIT", sends(acts))
	cookieResp := one("cookie", sends(toRes(init1)))
	if h, _ := DecodeHeader(cookieResp); h.SPIr != 0 {
		t.Fatal("the responder answered the first INIT instead of demanding a cookie")
	}
	init2 := one("INIT with cookie", sends(toIni(cookieResp)))
	if bytes.Equal(init1, init2) {
		t.Fatal("the retry carries no cookie")
	}
	// The other gateway's SA goes; the cookieless retransmission arrives
	// (init2 is still on its way) and is answered.
	res.Forget(otherSPIr, &Ready{})
	resNow = t0.Add(res.Config().HalfOpenTimeout + time.Second)
	resp1 := one("INIT response", sends(toRes(init1)))
	if h, _ := DecodeHeader(resp1); h.SPIr == 0 {
		t.Fatal("the retransmission got a cookie again")
	}
	// The cookie answer to a retransmission reaches the initiator late.
	if r := failed(toIni(cookieResp)); r != "" {
		t.Fatalf("a second identical cookie failed the initiator: %s", r)
	}
	auth := one("IKE_AUTH", sends(toIni(resp1)))
	racts := toRes(auth)
	if r := failed(racts); r != "" {
		t.Fatalf("responder: %s", r)
	}
	toIni(one("IKE_AUTH response", sends(racts)))
	if sa := ini.SA(spi); sa == nil || !sa.Established() {
		t.Fatal("the initiator's IKE SA is not established")
	}
	// INIT with the cookie arrives at last: a duplicate, changes nothing.
	toRes(init2)
	if st := res.Stats(); st.Established != 1 {
		t.Fatalf("responder: %d established, want 1", st.Established)
	}
}

// A copy of an IKE_SA_INIT that arrives after its SA was established (a
// retransmission or cookie retry that waited in a queue) starts no
// half-open SA: one would never see an IKE_AUTH and would hold its
// source's half-open quota until it timed out. Seen in a burst of 10,000
// gateways behind one address: 1,024 such orphans filled the quota and
// the rest waited 60 s for their fifth retransmission.
func TestLateInitCopyAfterEstablishment(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	var init []byte
	w.drop = func(fromInitiator bool, msg []byte) bool {
		if h, _ := DecodeHeader(msg); fromInitiator && h.Exchange == IKE_SA_INIT && init == nil {
			init = append([]byte(nil), msg...)
		}
		return false
	}
	w.establish(t, pskInitiation(t))
	late := Packet{Local: concAddr, Remote: w.nat(gwAddr), Data: init}
	before := w.res.Stats()
	w.run(R(func(rd *Ready) { w.res.Handle(w.now, late, rd) }), false)
	if s := w.res.Stats(); s.HalfOpen != 0 || s.DuplicateRequests != before.DuplicateRequests+1 || w.res.Len() != 1 {
		t.Fatalf("after a late copy: %d half-open, %d duplicates (was %d), %d SAs", s.HalfOpen, s.DuplicateRequests, before.DuplicateRequests, w.res.Len())
	}
	// Once HalfOpenTimeout has passed, the same SPI from that peer is a
	// new request again.
	w.now = w.now.Add(DefaultHalfOpenTimeout + time.Second)
	w.run(R(func(rd *Ready) { w.res.Handle(w.now, late, rd) }), false)
	if s := w.res.Stats(); s.HalfOpen != 1 {
		t.Fatalf("a copy after the window: %d half-open, want 1", s.HalfOpen)
	}
}
