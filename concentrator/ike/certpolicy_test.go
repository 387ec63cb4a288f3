package ike

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	encasn1 "encoding/asn1"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// fleetCA is a test CA that issues gateway certificates.
type fleetCA struct {
	t      testing.TB
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	serial int64
}

func newFleetCA(t testing.TB, name pkix.Name, seed byte) *fleetCA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), newDetRand(seed))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: name,
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(newDetRand(seed), tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &fleetCA{t: t, key: k, cert: c, serial: 1}
}

// issue signs tmpl (subject, SANs, EKUs, policies set by the caller).
func (ca *fleetCA) issue(tmpl *x509.Certificate) (*ecdsa.PrivateKey, []byte) {
	ca.t.Helper()
	ca.serial++
	k, _ := ecdsa.GenerateKey(elliptic.P256(), newDetRand(byte(ca.serial)))
	tmpl.SerialNumber = big.NewInt(ca.serial)
	tmpl.NotBefore, tmpl.NotAfter = t0.Add(-time.Hour), t0.Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(newDetRand(byte(ca.serial)), tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return k, der
}

func fleetName(ou, cn string) pkix.Name {
	n := pkix.Name{Country: []string{"CH"}, Organization: []string{"Fleet"}, CommonName: cn}
	if ou != "" {
		n.OrganizationalUnit = []string{ou}
	}
	return n
}

func mustCertMatch(t *testing.T, issuer, subject string, sans, ekus, policies []string) *CertMatch {
	t.Helper()
	m := &CertMatch{}
	var err error
	if issuer != "" {
		if m.Issuer, err = ParseDNPattern(issuer); err != nil {
			t.Fatal(err)
		}
	}
	if subject != "" {
		if m.Subject, err = ParseDNPattern(subject); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range sans {
		p, err := ParseSANPattern(s)
		if err != nil {
			t.Fatal(err)
		}
		m.SANs = append(m.SANs, p)
	}
	for _, s := range ekus {
		o, err := ParseOID(s, true)
		if err != nil {
			t.Fatal(err)
		}
		m.EKUs = append(m.EKUs, o)
	}
	for _, s := range policies {
		o, err := ParseOID(s, false)
		if err != nil {
			t.Fatal(err)
		}
		m.Policies = append(m.Policies, o)
	}
	return m
}

func mustOID(t *testing.T, s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// Each attribute of a real certificate, matching and not.
func TestCertMatchAttributes(t *testing.T) {
	ca := newFleetCA(t, fleetName("", "Fleet A CA"), 40)
	u, _ := url.Parse("urn:dev:meter-17")
	_, der := ca.issue(&x509.Certificate{Subject: fleetName("site-zurich", "meter17"),
		DNSNames: []string{"meter17.meters.example"}, EmailAddresses: []string{"ops@Meters.Example"},
		IPAddresses: []net.IP{net.ParseIP("10.77.0.17")}, URIs: []*url.URL{u},
		ExtKeyUsage:        []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		UnknownExtKeyUsage: []encasn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 17}},
		Policies:           []x509.OID{mustOID(t, "1.3.6.1.4.1.99999.1.2")},
	})
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	a := CertAttrsOf(c)
	if a.Issuer != "C=CH, O=Fleet, CN=Fleet A CA" || a.Subject != "C=CH, O=Fleet, OU=site-zurich, CN=meter17" {
		t.Fatalf("DNs %q / %q", a.Issuer, a.Subject)
	}
	for _, tc := range []struct {
		name                 string
		issuer, subject      string
		sans, ekus, policies []string
		want                 bool
	}{
		{"issuer exact", "C=CH, O=Fleet, CN=Fleet A CA", "", nil, nil, nil, true},
		{"issuer spacing normalised", "C=CH,O=Fleet,  CN=Fleet A CA", "", nil, nil, nil, true},
		{"issuer other CA", "C=CH, O=Fleet, CN=Fleet B CA", "", nil, nil, nil, false},
		{"issuer pattern", "C=CH, O=Fleet, CN=Fleet * CA", "", nil, nil, nil, true},
		{"subject OU pattern", "", "C=CH, O=Fleet, OU=site-*, CN=*", nil, nil, nil, true},
		{"subject other OU", "", "C=CH, O=Fleet, OU=depot-*, CN=*", nil, nil, nil, false},
		{"subject prefix is not the DN", "", "C=CH, O=Fleet, OU=site-zurich", nil, nil, nil, false},
		{"san DNS pattern", "", "", []string{"*.meters.example"}, nil, nil, true},
		{"san DNS other domain", "", "", []string{"*.meters.example.net"}, nil, nil, false},
		{"san e-mail, case-insensitive", "", "", []string{"ops@meters.example"}, nil, nil, true},
		{"san IP subnet", "", "", []string{"10.77.0.0/16"}, nil, nil, true},
		{"san IP outside", "", "", []string{"10.78.0.0/16"}, nil, nil, false},
		{"san URI", "", "", []string{"urn:dev:meter-*"}, nil, nil, true},
		{"san any of", "", "", []string{"nope.example", "10.77.0.17"}, nil, nil, true},
		{"eku by name", "", "", nil, []string{"clientAuth", "ipsecIKE"}, nil, true},
		{"eku missing", "", "", nil, []string{"serverAuth"}, nil, false},
		{"policy oid", "", "", nil, nil, []string{"1.3.6.1.4.1.99999.1.2"}, true},
		{"policy oid missing", "", "", nil, nil, []string{"1.3.6.1.4.1.99999.1.3"}, false},
		{"subject free pattern", "", "*, OU=site-zurich, *", nil, nil, nil, true},
		{"all hold", "C=CH, O=Fleet, CN=Fleet A CA", "*OU=site-zurich*", []string{"*.meters.example"}, []string{"clientAuth"}, []string{"1.3.6.1.4.1.99999.1.2"}, true},
		{"one fails", "C=CH, O=Fleet, CN=Fleet A CA", "*OU=site-zurich*", []string{"*.meters.example"}, []string{"serverAuth"}, nil, false},
	} {
		m := mustCertMatch(t, tc.issuer, tc.subject, tc.sans, tc.ekus, tc.policies)
		if got := m.Matches(a); got != tc.want {
			t.Errorf("%s (%s): %v, want %v", tc.name, m, got, tc.want)
		}
		if m.Matches(nil) {
			t.Errorf("%s: matches a peer without a certificate", tc.name)
		}
	}
	for _, bad := range []string{"", "Fleet A CA", "C=CH, XX=1"} {
		if _, err := ParseDNPattern(bad); err == nil {
			t.Errorf("DN pattern %q accepted", bad)
		}
	}
	for _, bad := range []string{"1", "1..2", "clientauth", "1.02"} {
		if _, err := ParseOID(bad, true); err == nil {
			t.Errorf("OID %q accepted", bad)
		}
	}
	if _, err := ParseSANPattern("10.0.0.0/33"); err == nil {
		t.Error("SAN subnet /33 accepted")
	}
}

// Policy order: the first policy whose identity and certificate conditions
// hold decides; a certificate policy never matches a peer without one.
func TestMatchPolicyOrder(t *testing.T) {
	a := &CertAttrs{Issuer: "C=CH, O=Fleet, CN=Fleet A CA", Subject: "C=CH, O=Fleet, OU=site-1, CN=gw1"}
	id := Identity{Type: IDFQDN, Data: []byte("gw1.iot.example")}
	certA := &PeerPolicy{Name: "fleet-a", ID: mustPattern(t, "%any"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet A CA", "", nil, nil, nil)}
	byID := &PeerPolicy{Name: "by-id", ID: mustPattern(t, "*.iot.example")}
	both := &PeerPolicy{Name: "both", ID: mustPattern(t, "gw2.iot.example"), Cert: certA.Cert}
	if p := MatchPolicy([]*PeerPolicy{both, certA, byID}, id, a); p != certA {
		t.Fatalf("got %v, want fleet-a (both's id does not match)", p.Name)
	}
	if p := MatchPolicy([]*PeerPolicy{byID, certA}, id, a); p != byID {
		t.Fatalf("got %v, want by-id (first)", p.Name)
	}
	if p := MatchPolicy([]*PeerPolicy{certA, byID}, id, nil); p != byID {
		t.Fatalf("PSK peer got %v, want by-id", p.Name)
	}
	if p := MatchPolicy([]*PeerPolicy{certA}, id, nil); p != nil {
		t.Fatalf("PSK peer matched %v", p.Name)
	}
}

// certPolicyWire is a responder that authenticates gateways by
// certificate (roots of both CAs) or any PSK, with pols.
func certPolicyWire(t *testing.T, cas []*fleetCA, mod func(*Config), pols ...*PeerPolicy) (*wire, Config) {
	rcfg := responderConfig(t, 1)
	roots := x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca.cert)
	}
	ck, cder := cas[0].issue(&x509.Certificate{Subject: pkix.Name{CommonName: "conc.example"}, DNSNames: []string{"conc.example"}})
	rcfg.Local = Credentials{ID: concID, Signer: ck, Chain: [][]byte{cder}}
	rcfg.Verifier = &sig.Verifier{Roots: roots}
	rcfg.PSKs = fleetPSK{}
	rcfg.RemoteTS = nil
	rcfg.Policies = pols
	rcfg.Selectors = NewSelectorRegistry()
	if mod != nil {
		mod(&rcfg)
	}
	return newWire(t, rcfg), rcfg
}

// certConnect brings up an IKE SA for a gateway with a certificate of ca
// (subject and DNS name given) proposing tsi; it returns the responder's
// CHILD SA failure notify (0: installed) and the responder's SA.
func certConnect(t *testing.T, w *wire, ca *fleetCA, subject pkix.Name, dns string, tsi []TrafficSelector) (NotifyType, *IKESA) {
	t.Helper()
	k, der := ca.issue(&x509.Certificate{Subject: subject, DNSNames: []string{dns}})
	ini := pskInitiation(t)
	ini.PSK = nil
	ini.Creds = Credentials{ID: Identity{Type: IDFQDN, Data: []byte(dns)}, Signer: k, Chain: [][]byte{der}}
	ini.Verifier = &sig.Verifier{Roots: x509.NewCertPool()}
	ini.Verifier.Roots.AddCert(ca.cert)
	ini.TSi = tsi
	return establishFor(t, w, ini)
}

func establishFor(t *testing.T, w *wire, ini Initiation) (NotifyType, *IKESA) {
	t.Helper()
	before := len(w.events)
	initiate(w, ini)
	var n NotifyType
	var spi uint64
	for _, e := range w.events[before:] {
		if e.Kind == EventIKEEstablished && !e.Initiator {
			spi = e.SPIr
		}
		if e.Kind == EventChildFailed && e.Initiator {
			n = e.Notify
		}
	}
	if spi == 0 {
		t.Fatalf("%v: IKE SA not established: %+v", ini.Creds.ID, w.events[before:])
	}
	return n, w.res.SA(spi)
}

// Two CAs and two OUs of one CA get different selectors; a PSK peer whose
// identity would fit gets none of the certificate policies'.
func TestCertPolicySelectors(t *testing.T) {
	caA := newFleetCA(t, fleetName("", "Fleet A CA"), 41)
	caB := newFleetCA(t, fleetName("", "Fleet B CA"), 42)
	w, _ := certPolicyWire(t, []*fleetCA{caA, caB}, nil,
		&PeerPolicy{Name: "b-depot", ID: mustPattern(t, "%any"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet B CA", "C=CH, O=Fleet, OU=depot-*, CN=*", nil, nil, nil), RemoteTS: ts("10.3.0.0/24"), Exclusive: true},
		&PeerPolicy{Name: "a", ID: mustPattern(t, "*.iot.example"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet A CA", "", nil, nil, nil), RemoteTS: ts("10.1.0.0/24"), Exclusive: true},
		&PeerPolicy{Name: "b", ID: mustPattern(t, "%any"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet B CA", "", nil, nil, nil), RemoteTS: ts("10.2.0.0/24"), Exclusive: true},
	)
	wide := ts("10.0.0.0/8")
	n, sa := certConnect(t, w, caA, fleetName("site-1", "gwa"), "gwa.iot.example", wide)
	if n != 0 || sa.peerPolicy(w.res).Name != "a" {
		t.Fatalf("CA A gateway: notify %v, policy %s", n, sa.peerPolicy(w.res).Name)
	}
	n, sa = certConnect(t, w, caB, fleetName("site-2", "gwb"), "gwb.iot.example", wide)
	if n != 0 || sa.peerPolicy(w.res).Name != "b" {
		t.Fatalf("CA B gateway: notify %v, policy %s", n, sa.peerPolicy(w.res).Name)
	}
	n, sa = certConnect(t, w, caB, fleetName("depot-7", "gwd"), "gwd.iot.example", wide)
	if n != 0 || sa.peerPolicy(w.res).Name != "b-depot" {
		t.Fatalf("CA B depot gateway: notify %v, policy %s", n, sa.peerPolicy(w.res).Name)
	}
	for id, want := range map[string]string{"gwa.iot.example": "10.1.0.0/24", "gwb.iot.example": "10.2.0.0/24", "gwd.iot.example": "10.3.0.0/24"} {
		if got := FormatSelectors(installedFor(w, id)); got != want {
			t.Errorf("%s was given %s, want %s", id, got, want)
		}
	}
	// A PSK peer with an identity policy "a" would take: no certificate,
	// no policy.
	ini := pskInitiation(t)
	ini.Creds.ID = Identity{Type: IDFQDN, Data: []byte("gwp.iot.example")}
	ini.TSi = wide
	n, sa = establishFor(t, w, ini)
	if n != TS_UNACCEPTABLE || sa.peerCert != nil || sa.peerPolicy(w.res) != &noPolicy {
		t.Fatalf("PSK peer: notify %v, policy %s", n, sa.peerPolicy(w.res).Name)
	}
}

// A restored SA (another node, a restart) and a resumption ticket keep the
// certificate policy: the attributes travel with the state, and a record
// without them (a peer that had none) does not get the certificate's policy.
func TestCertPolicyRestoreAndTicket(t *testing.T) {
	caA := newFleetCA(t, fleetName("", "Fleet A CA"), 43)
	pols := []*PeerPolicy{
		{Name: "a", ID: mustPattern(t, "%any"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet A CA", "", nil, nil, nil), RemoteTS: ts("10.1.0.0/24"), Exclusive: true},
		{Name: "rest", ID: mustPattern(t, "%any"), RemoteTS: ts("10.9.0.0/24"), Exclusive: true},
	}
	w, rcfg := certPolicyWire(t, []*fleetCA{caA}, nil, pols...)
	n, sa := certConnect(t, w, caA, fleetName("site-1", "gwa"), "gwa.iot.example", ts("10.1.0.0/24"))
	if n != 0 || sa.peerPolicy(w.res).Name != "a" {
		t.Fatalf("notify %v, policy %s", n, sa.peerPolicy(w.res).Name)
	}
	// An IKE rekey first: the successor carries the attributes on.
	var iniSPI uint64
	w.ini.Each(func(s *IKESA) bool { iniSPI = s.localSPI(); return false })
	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, iniSPI, rd) }), true)
	if w.res.Stats().IKERekeys != 1 {
		t.Fatalf("IKE SA not rekeyed: %+v", w.events)
	}
	w.res.Each(func(s *IKESA) bool {
		if s.state == stateEstablished && s != sa {
			sa = s
			return false
		}
		return true
	})
	st, err := sa.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerCert == nil || st.PeerCert.Issuer != "C=CH, O=Fleet, CN=Fleet A CA" {
		t.Fatalf("snapshot certificate attributes %+v", st.PeerCert)
	}
	restore := func(st SAState) *IKESA {
		t.Helper()
		cfg := rcfg
		cfg.Rand = newDetRand(77)
		cfg.Selectors = NewSelectorRegistry()
		e, err := NewEngine(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r, err := e.Restore(t0, st, &Ready{})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Selectors.Held() != 1 {
			t.Fatalf("restored SA holds %d selector ranges", cfg.Selectors.Held())
		}
		return r
	}
	if r := restore(st); r.peerPolicy(r.eng).Name != "a" {
		t.Fatalf("restored SA has policy %s, want a", r.peerPolicy(r.eng).Name)
	}
	noCert := st
	noCert.PeerCert = nil
	if r := restore(noCert); r.peerPolicy(r.eng).Name != "rest" {
		t.Fatalf("restored SA without certificate attributes has policy %s, want rest", r.peerPolicy(r.eng).Name)
	}

	// The ticket carries the attributes; one without them (issued to a
	// PSK peer, or by an older node) still opens.
	tk := &ticketState{expires: t0.Add(time.Hour), proposal: *sa.prop, skd: sa.skd(), peer: sa.PeerID, cert: sa.peerCert}
	got, err := parseTicketState(tk.marshal())
	if err != nil || !got.cert.Equal(sa.peerCert) || !got.peer.Equal(sa.PeerID) {
		t.Fatalf("ticket round trip: %v, %+v", err, got)
	}
	tk.cert = nil
	if got, err = parseTicketState(tk.marshal()); err != nil || got.cert != nil {
		t.Fatalf("ticket without certificate: %v, %+v", err, got)
	}
	b := (&ticketState{expires: t0, proposal: *sa.prop, skd: sa.skd(), peer: sa.PeerID, cert: sa.peerCert}).marshal()
	for cut := 1; cut < 20; cut++ {
		if _, err := parseTicketState(b[:len(b)-cut]); err == nil {
			t.Fatalf("ticket truncated by %d accepted", cut)
		}
	}
}

// A session resumed from a ticket issued to a certificate peer keeps the
// certificate's policy: the ticket carries the attributes.
func TestCertPolicyResumption(t *testing.T) {
	caA := newFleetCA(t, fleetName("", "Fleet A CA"), 44)
	w, _ := certPolicyWire(t, []*fleetCA{caA}, func(c *Config) {
		c.Tickets = testTicketRing(t, 1)
		c.TicketLifetime = time.Hour
	},
		&PeerPolicy{Name: "a", ID: mustPattern(t, "%any"), Cert: mustCertMatch(t, "C=CH, O=Fleet, CN=Fleet A CA", "", nil, nil, nil), RemoteTS: ts("10.1.0.0/24"), Exclusive: true},
		&PeerPolicy{Name: "rest", ID: mustPattern(t, "%any"), RemoteTS: ts("10.9.0.0/24"), Exclusive: true},
	)
	k, der := caA.issue(&x509.Certificate{Subject: fleetName("site-1", "gwa"), DNSNames: []string{"gwa.iot.example"}})
	gwa := Identity{Type: IDFQDN, Data: []byte("gwa.iot.example")}
	ini := pskInitiation(t)
	ini.PSK = nil
	ini.Creds = Credentials{ID: gwa, Signer: k, Chain: [][]byte{der}}
	ini.Verifier = &sig.Verifier{Roots: x509.NewCertPool()}
	ini.Verifier.Roots.AddCert(caA.cert)
	ini.TSi = ts("10.1.0.0/24")
	ini.RequestTicket = true
	spi := initiate(w, ini)
	tk := w.ini.SA(spi).Ticket()
	if tk == nil {
		t.Fatal("no ticket")
	}
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	if w.res.Len() != 0 {
		t.Fatal("responder SA left")
	}
	_, _ = resume(t, w, w.res, tk, func(i *Initiation) {
		i.Creds = Credentials{ID: gwa}
		i.TSi = ts("10.1.0.0/24")
	})
	var got *IKESA
	w.res.Each(func(sa *IKESA) bool { got = sa; return false })
	if got == nil || !got.Resumed() || got.PolicyName() != "a" || got.peerCert == nil {
		t.Fatalf("resumed SA %v: policy %q", got != nil && got.Resumed(), got.PolicyName())
	}
}
