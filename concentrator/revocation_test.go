package concentrator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// revCA is a small CA for revocation tests: it issues certificates naming
// its CRL and OCSP URLs, serves both over HTTP on loopback and counts the
// requests.
type revCA struct {
	t       *testing.T
	cert    *x509.Certificate
	key     crypto.Signer
	srv     *httptest.Server
	mu      sync.Mutex
	revoked map[string]time.Time // by serial (hex)
	now     time.Time
	valid   time.Duration // of CRLs and OCSP answers
	crlHits atomic.Int64
	ocspHit atomic.Int64
	pad     int // bytes of padding appended to the CRL (to exceed limits)
	serial  int64
}

func newRevCA(t *testing.T, now time.Time) *revCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "revocation test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, SubjectKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &revCA{t: t, cert: cert, key: key, revoked: map[string]time.Time{}, now: now, valid: time.Hour, serial: 100}
	ca.srv = httptest.NewServer(http.HandlerFunc(ca.serve))
	t.Cleanup(ca.srv.Close)
	return ca
}

func (ca *revCA) serve(w http.ResponseWriter, r *http.Request) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	switch r.URL.Path {
	case "/ca.crl":
		ca.crlHits.Add(1)
		var entries []x509.RevocationListEntry
		for s, at := range ca.revoked {
			n, _ := new(big.Int).SetString(s, 16)
			entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: at})
		}
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(ca.now.Unix()),
			ThisUpdate: ca.now, NextUpdate: ca.now.Add(ca.valid), RevokedCertificateEntries: entries}, ca.cert, ca.key)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Write(der)
		if ca.pad > 0 {
			w.Write(make([]byte, ca.pad))
		}
	case "/ocsp":
		ca.ocspHit.Add(1)
		body, _ := io.ReadAll(r.Body)
		req, err := ocsp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: ca.now, NextUpdate: ca.now.Add(ca.valid)}
		if at, ok := ca.revoked[req.SerialNumber.Text(16)]; ok {
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, at, ocsp.KeyCompromise
		}
		der, err := ocsp.CreateResponse(ca.cert, ca.cert, tmpl, ca.key)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(der)
	default:
		http.NotFound(w, r)
	}
}

// issue returns a leaf naming the CA's CRL (crl) and OCSP (aia) URLs.
func (ca *revCA) issue(crl, aia bool) *x509.Certificate {
	ca.t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: "gw"},
		NotBefore: ca.now.Add(-time.Hour), NotAfter: ca.now.Add(24 * time.Hour), DNSNames: []string{"gw.example"}}
	if crl {
		tmpl.CRLDistributionPoints = []string{ca.srv.URL + "/ca.crl"}
	}
	if aia {
		tmpl.OCSPServer = []string{ca.srv.URL + "/ocsp"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func (ca *revCA) revoke(c *x509.Certificate) {
	ca.mu.Lock()
	ca.revoked[c.SerialNumber.Text(16)] = ca.now.Add(-time.Minute)
	ca.mu.Unlock()
}

func testRevocations(t *testing.T, now func() time.Time, mod func(*Config)) *revocations {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Auth.Revocation.RetryInterval = time.Hour
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.validateRevocation(); err != nil {
		t.Fatal(err)
	}
	r := newRevocations(&cfg, slog.New(slog.DiscardHandler), now)
	t.Cleanup(r.close)
	return r
}

// settle asks until the answer is no longer pending (the fetch runs in the
// background); it fails after a generous bound, it asserts no duration.
func settle(t *testing.T, r *revocations, cert, issuer *x509.Certificate, now time.Time) sig.OnlineResult {
	t.Helper()
	for i := 0; i < 3000; i++ {
		res := r.CheckOnline(cert, issuer, now)
		if res.Status != sig.OnlinePending {
			return res
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("revocation status still pending after 30 s")
	return sig.OnlineResult{}
}

func TestRevocationCRLFetchedCachedAndRevoked(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	r := testRevocations(t, time.Now, func(c *Config) { c.Auth.Revocation.OCSP = "off" })
	good, bad := ca.issue(true, false), ca.issue(true, false)
	ca.revoke(bad)

	if res := r.CheckOnline(good, ca.cert, now); res.Status != sig.OnlinePending {
		t.Fatalf("first sight: %+v, want pending (the fetch runs in the background)", res)
	}
	if res := settle(t, r, good, ca.cert, now); res.Status != sig.OnlineGood || res.Source != "crl" {
		t.Fatalf("good certificate: %+v", res)
	}
	// The same CRL (by URL) answers for the other certificate: no fetch.
	res := r.CheckOnline(bad, ca.cert, now)
	if res.Status != sig.OnlineRevoked || res.Source != "crl" {
		t.Fatalf("revoked certificate: %+v", res)
	}
	for range 100 {
		r.CheckOnline(good, ca.cert, now)
	}
	if n := ca.crlHits.Load(); n != 1 {
		t.Errorf("CRL fetched %d times, want 1", n)
	}
	st := r.stats()
	if st.FetchOK[srcCRL] != 1 || st.Hits[srcCRL] < 101 || st.Revoked[srcCRL] != 1 {
		t.Errorf("stats %+v", st)
	}
	t.Logf("crl: %d hits, %d misses (hit ratio %.3f), %d fetch(es), mean fetch %.2f ms", st.Hits[srcCRL], st.Misses[srcCRL],
		float64(st.Hits[srcCRL])/float64(st.Hits[srcCRL]+st.Misses[srcCRL]), st.FetchOK[srcCRL],
		st.FetchSeconds[srcCRL]/float64(st.FetchOK[srcCRL])*1000)

	// Past nextUpdate the cached CRL no longer answers: a new fetch.
	later := now.Add(2*time.Hour + DefaultClockSkew)
	ca.mu.Lock()
	ca.now = later
	ca.mu.Unlock()
	if res := r.CheckOnline(good, ca.cert, later); res.Status != sig.OnlinePending {
		t.Fatalf("past nextUpdate: %+v, want pending", res)
	}
	if res := settle(t, r, good, ca.cert, later); res.Status != sig.OnlineGood {
		t.Fatalf("after refetch: %+v", res)
	}
	if n := ca.crlHits.Load(); n != 2 {
		t.Errorf("CRL fetched %d times, want 2", n)
	}
}

func TestRevocationOCSPPreferredOverCRL(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	r := testRevocations(t, time.Now, nil)
	good, bad := ca.issue(true, true), ca.issue(true, true)
	ca.revoke(bad)
	if res := settle(t, r, good, ca.cert, now); res.Status != sig.OnlineGood || res.Source != "ocsp" {
		t.Fatalf("good: %+v", res)
	}
	res := settle(t, r, bad, ca.cert, now)
	if res.Status != sig.OnlineRevoked || res.Source != "ocsp" || res.ReasonCode != ocsp.KeyCompromise {
		t.Fatalf("revoked: %+v", res)
	}
	if ca.crlHits.Load() != 0 {
		t.Errorf("CRL fetched although OCSP answered")
	}
	// Cached per certificate until nextUpdate.
	for range 10 {
		r.CheckOnline(bad, ca.cert, now)
	}
	if n := ca.ocspHit.Load(); n != 2 {
		t.Errorf("responder asked %d times, want 2 (one per certificate)", n)
	}
}

func TestRevocationResponderDownFailClosedAndOpen(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	cert := ca.issue(false, true)
	ca.srv.Close() // the responder is down
	for _, failOpen := range []bool{false, true} {
		r := testRevocations(t, time.Now, func(c *Config) {
			c.Auth.Revocation.FailOpen = failOpen
			c.Auth.Revocation.Timeout = 2 * time.Second
		})
		res := settle(t, r, cert, ca.cert, now)
		st := r.stats()
		if st.FetchFailed[srcOCSP] != 1 {
			t.Errorf("fail_open %v: %d failed fetches, want 1", failOpen, st.FetchFailed[srcOCSP])
		}
		if failOpen {
			if res.Status != sig.OnlineGood || st.FailOpen != 1 {
				t.Errorf("fail_open: %+v, %+v", res, st)
			}
			continue
		}
		if res.Status != sig.OnlineUnavailable || st.Refused != 1 || !strings.Contains(res.Err.Error(), "OCSP") {
			t.Errorf("fail closed: %+v, %+v", res, st)
		}
		// The failure stands for retry_interval: no new fetch meanwhile.
		if res := r.CheckOnline(cert, ca.cert, now); res.Status != sig.OnlineUnavailable {
			t.Errorf("within retry_interval: %+v", res)
		}
	}
}

func TestRevocationOCSPRequireWithoutResponder(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	r := testRevocations(t, time.Now, func(c *Config) { c.Auth.Revocation.OCSP = "require" })
	if res := r.CheckOnline(ca.issue(true, false), ca.cert, now); res.Status != sig.OnlineUnavailable {
		t.Fatalf("require without AIA: %+v", res)
	}
	// No source at all (prefer): accepted, like strongSwan.
	r2 := testRevocations(t, time.Now, nil)
	if res := r2.CheckOnline(ca.issue(false, false), ca.cert, now); res.Status != sig.OnlineGood {
		t.Fatalf("no source: %+v", res)
	}
}

func TestRevocationCRLSizeLimit(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	ca.pad = 4096
	r := testRevocations(t, time.Now, func(c *Config) {
		c.Auth.Revocation.OCSP = "off"
		c.Auth.Revocation.MaxCRLBytes = 2048
		c.Auth.Revocation.Retries = 1
	})
	res := settle(t, r, ca.issue(true, false), ca.cert, now)
	if res.Status != sig.OnlineUnavailable || !strings.Contains(res.Err.Error(), "larger than 2048") {
		t.Fatalf("oversized CRL: %+v", res)
	}
}

func TestRevocationRefreshBeforeNextUpdate(t *testing.T) {
	start := time.Now()
	var wall atomic.Int64
	wall.Store(start.UnixNano())
	clk := func() time.Time { return time.Unix(0, wall.Load()) }
	ca := newRevCA(t, start)
	r := testRevocations(t, clk, func(c *Config) { c.Auth.Revocation.OCSP = "off" })
	cert := ca.issue(true, false)
	settle(t, r, cert, ca.cert, start)
	// At 80% of the CRL's hour it is refreshed in the background while
	// the cached one still answers.
	at := start.Add(48 * time.Minute)
	wall.Store(at.UnixNano())
	if res := r.CheckOnline(cert, ca.cert, at); res.Status != sig.OnlineGood {
		t.Fatalf("before nextUpdate: %+v, want the cached answer", res)
	}
	for i := 0; ca.crlHits.Load() < 2 || r.stats().FetchOK[srcCRL] < 2; i++ {
		if i > 3000 {
			t.Fatal("no refresh")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := r.stats(); st.Misses[srcCRL] != 1 {
		t.Errorf("%d misses, want only the first lookup", st.Misses[srcCRL])
	}
}

func TestRevocationCacheBounded(t *testing.T) {
	now := time.Now()
	ca := newRevCA(t, now)
	r := testRevocations(t, time.Now, func(c *Config) { c.Auth.Revocation.CacheSize = 16 })
	for range 40 {
		settle(t, r, ca.issue(false, true), ca.cert, now)
	}
	if n := r.stats().Cached; n > 16 {
		t.Errorf("%d answers cached, cache_size 16", n)
	}
}

func TestRevocationConfigErrorsNameTheField(t *testing.T) {
	for field, mod := range map[string]func(*Config){
		"auth.revocation.ocsp":           func(c *Config) { c.Auth.Revocation.OCSP = "maybe" },
		"auth.revocation.crl":            func(c *Config) { c.Auth.Revocation.CRL = "sometimes" },
		"auth.revocation.timeout":        func(c *Config) { c.Auth.Revocation.Timeout = 0 },
		"auth.revocation.retries":        func(c *Config) { c.Auth.Revocation.Retries = 0 },
		"auth.revocation.cache_size":     func(c *Config) { c.Auth.Revocation.CacheSize = 0 },
		"auth.revocation.max_crl_bytes":  func(c *Config) { c.Auth.Revocation.MaxCRLBytes = 10 },
		"auth.revocation.retry_interval": func(c *Config) { c.Auth.Revocation.RetryInterval = -1 },
		"auth.revocation.ocsp_url":       func(c *Config) { c.Auth.Revocation.OCSPURL = "ldap://x" },
		"auth.clock_skew":                func(c *Config) { c.Auth.ClockSkew = -time.Second },
	} {
		cfg := DefaultConfig()
		mod(&cfg)
		err := cfg.validateRevocation()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
	cfg := DefaultConfig()
	cfg.Auth.CRLs = []string{"x.crl"}
	cfg.Auth.Revocation.CRL = "off"
	if err := cfg.validateRevocation(); err == nil || !strings.Contains(err.Error(), "auth.revocation.crl") {
		t.Errorf("crl off with auth.crls: %v", err)
	}
}

func TestParseConfigRevocation(t *testing.T) {
	c, err := ParseConfig([]byte(`
identity: {id: gw.example}
auth:
  psks: [{id: a@b, secret: "0123456789abcdef0123"}]
  clock_skew: 90s
  revocation: {ocsp: require, fail_open: true, timeout: 1s}
children: {local_ts: [10.0.0.0/24], remote_ts: [10.1.0.0/16]}
`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Auth.Revocation
	if r.OCSP != "require" || !r.FailOpen || r.Timeout != time.Second || r.CRL != "fetch" || r.CacheSize != DefaultRevocationCacheSize || c.Auth.ClockSkew != 90*time.Second {
		t.Errorf("parsed %+v skew %s", r, c.Auth.ClockSkew)
	}
}
