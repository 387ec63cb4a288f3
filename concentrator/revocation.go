package concentrator

// Online revocation checking (auth.revocation): CRLs fetched from the
// distribution points of the certificates peers present, and OCSP
// (RFC 6960) answers from their AIA responders, cached in memory until the
// answer's nextUpdate and refreshed before it.
//
// The engine never waits for the network: the verifier asks revocations
// (a sig.OnlineChecker) which answers from the cache. On a miss it starts
// a fetch in the background and answers "pending"; the engine then parks
// the IKE_AUTH exchange by leaving the request unanswered, and the peer's
// retransmission (strongSwan: after 4 s) finds the answer in memory. A
// fetch that fails (after auth.revocation.retries attempts within
// auth.revocation.timeout) is remembered for retry_interval: meanwhile the
// status is "unavailable" and fail_open decides.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

const (
	maxOCSPResponseBytes = 64 << 10
	revocationWorkers    = 4
	revocationQueue      = 1024
	// An answer without nextUpdate is refetched after this long.
	revocationDefaultTTL = time.Hour
	ocspNoNextUpdateTTL  = time.Minute
)

// revocationPolicy is the resolved auth.revocation.
type revocationPolicy struct {
	ocsp, crl     string
	failOpen      bool
	timeout       time.Duration
	retries       int
	cacheSize     int
	maxCRLBytes   int
	retryInterval time.Duration
	ocspURL       string
	skew          time.Duration
}

func revocationPolicyOf(c *Config) revocationPolicy {
	r := c.Auth.Revocation
	return revocationPolicy{ocsp: r.OCSP, crl: r.CRL, failOpen: r.FailOpen, timeout: r.Timeout, retries: r.Retries,
		cacheSize: r.CacheSize, maxCRLBytes: r.MaxCRLBytes, retryInterval: r.RetryInterval, ocspURL: r.OCSPURL,
		skew: c.Auth.ClockSkew}
}

// online reports whether anything is fetched at all.
func (p revocationPolicy) online() bool { return p.ocsp != "off" || p.crl == "fetch" }

// revocationCounts are the counters behind the revocation metrics.
type revocationCounts struct {
	hits, misses     [2]atomic.Uint64 // by source (0 ocsp, 1 crl)
	fetchOK, fetchKO [2]atomic.Uint64
	fetchNanos       [2]atomic.Uint64 // summed over completed fetches
	revoked          [2]atomic.Uint64
	unavailable      atomic.Uint64 // refused: no answer, fail closed
	failOpen         atomic.Uint64 // accepted: no answer, fail open
	pending          atomic.Uint64 // answered "pending" (the exchange parks)
}

var revSources = [2]string{"ocsp", "crl"}

const (
	srcOCSP = 0
	srcCRL  = 1
)

// revEntry is one cached answer: a CRL by URL, or an OCSP answer by
// responder URL and certificate.
type revEntry struct {
	key  string
	src  int
	url  string
	cert *x509.Certificate // OCSP: the certificate asked about; CRL: one it covers
	iss  *x509.Certificate

	fetching   bool
	crl        *sig.IndexedCRL
	ocsp       *ocsp.Response
	nextUpdate time.Time // zero: none given
	refreshAt  time.Time
	failedAt   time.Time
	err        error
	lastUsed   time.Time
}

func (e *revEntry) hasAnswer() bool { return e.crl != nil || e.ocsp != nil }

// revocations is the node's online revocation checker.
type revocations struct {
	log    *slog.Logger
	client *http.Client
	now    func() time.Time
	jobs   chan *revEntry
	stop   chan struct{}
	wg     sync.WaitGroup
	counts revocationCounts

	mu      sync.Mutex
	pol     revocationPolicy
	entries map[string]*revEntry
}

func newRevocations(cfg *Config, log *slog.Logger, now func() time.Time) *revocations {
	r := &revocations{log: log, now: now, pol: revocationPolicyOf(cfg), entries: map[string]*revEntry{},
		jobs: make(chan *revEntry, revocationQueue), stop: make(chan struct{}),
		client: &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	for range revocationWorkers {
		r.wg.Add(1)
		go r.worker()
	}
	return r
}

func (r *revocations) close() {
	if r == nil {
		return
	}
	close(r.stop)
	r.wg.Wait()
}

// setPolicy applies a reloaded auth.revocation; cached answers stay.
func (r *revocations) setPolicy(cfg *Config) {
	r.mu.Lock()
	r.pol = revocationPolicyOf(cfg)
	r.mu.Unlock()
}

func (r *revocations) policy() revocationPolicy {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pol
}

// CheckOnline implements sig.OnlineChecker: OCSP first (prefer: falling
// back to CRLs when the responder cannot answer), then the CRLs of the
// certificate's distribution points, in order.
func (r *revocations) CheckOnline(cert, issuer *x509.Certificate, now time.Time) sig.OnlineResult {
	pol := r.policy()
	var unavailable []string
	if pol.ocsp != "off" {
		u := pol.ocspURL
		if u == "" {
			u = firstHTTP(cert.OCSPServer)
		}
		switch {
		case u != "":
			res := r.lookup(pol, srcOCSP, u, cert, issuer, now)
			if res.Status != sig.OnlineUnavailable {
				return res
			}
			unavailable = append(unavailable, fmt.Sprintf("OCSP %s: %v", u, res.Err))
		case pol.ocsp == "require":
			unavailable = append(unavailable, "no OCSP responder in the certificate (and no auth.revocation.ocsp_url)")
		}
		if pol.ocsp == "require" {
			return r.unavailable(pol, cert, unavailable)
		}
	}
	if pol.crl == "fetch" {
		for _, u := range cert.CRLDistributionPoints {
			if checkHTTPURL(u) != nil {
				continue
			}
			res := r.lookup(pol, srcCRL, u, cert, issuer, now)
			if res.Status != sig.OnlineUnavailable {
				return res
			}
			unavailable = append(unavailable, fmt.Sprintf("CRL %s: %v", u, res.Err))
		}
	}
	if len(unavailable) == 0 {
		return sig.OnlineResult{Status: sig.OnlineGood} // no source applies
	}
	return r.unavailable(pol, cert, unavailable)
}

func (r *revocations) unavailable(pol revocationPolicy, cert *x509.Certificate, why []string) sig.OnlineResult {
	err := errors.New(strings.Join(why, "; "))
	if pol.failOpen {
		r.counts.failOpen.Add(1)
		r.log.Warn("revocation status unavailable: accepting the certificate (auth.revocation.fail_open)",
			"subject", cert.Subject.String(), "serial", cert.SerialNumber.Text(16), "error", err)
		return sig.OnlineResult{Status: sig.OnlineGood}
	}
	r.counts.unavailable.Add(1)
	return sig.OnlineResult{Status: sig.OnlineUnavailable, Err: err}
}

func firstHTTP(urls []string) string {
	for _, u := range urls {
		if checkHTTPURL(u) == nil {
			return u
		}
	}
	return ""
}

func revKey(src int, u string, cert, issuer *x509.Certificate) string {
	if src == srcCRL {
		return "crl " + u
	}
	h := sha256.Sum256(issuer.RawSubjectPublicKeyInfo)
	return fmt.Sprintf("ocsp %s %x %x", u, h[:8], cert.SerialNumber.Bytes())
}

// lookup answers from the cache, starting a fetch when there is no
// current answer. Unavailable results carry the error.
func (r *revocations) lookup(pol revocationPolicy, src int, u string, cert, issuer *x509.Certificate, now time.Time) sig.OnlineResult {
	key := revKey(src, u, cert, issuer)
	wall := r.now()
	r.mu.Lock()
	e := r.entries[key]
	if e == nil {
		e = &revEntry{key: key, src: src, url: u, cert: cert, iss: issuer}
		r.entries[key] = e
		r.evictLocked(pol.cacheSize)
	}
	e.lastUsed = wall
	if e.hasAnswer() {
		res, current := r.answer(pol, e, cert, issuer, now)
		if current {
			if !e.fetching && !wall.Before(e.refreshAt) {
				r.startLocked(e, cert, issuer) // refresh before nextUpdate
			}
			r.mu.Unlock()
			r.counts.hits[src].Add(1)
			return res
		}
	}
	r.counts.misses[src].Add(1)
	switch {
	case e.fetching:
	case e.err != nil && wall.Sub(e.failedAt) < pol.retryInterval:
		err := e.err
		r.mu.Unlock()
		return sig.OnlineResult{Status: sig.OnlineUnavailable, Source: revSources[src], Err: err}
	default:
		if !r.startLocked(e, cert, issuer) {
			r.mu.Unlock()
			return sig.OnlineResult{Status: sig.OnlineUnavailable, Source: revSources[src], Err: errors.New("too many fetches queued")}
		}
	}
	r.mu.Unlock()
	r.counts.pending.Add(1)
	return sig.OnlineResult{Status: sig.OnlinePending, Source: revSources[src]}
}

// answer evaluates a cached answer for cert; current is false when it no
// longer applies (past nextUpdate, or an OCSP answer for another
// certificate).
func (r *revocations) answer(pol revocationPolicy, e *revEntry, cert, issuer *x509.Certificate, now time.Time) (res sig.OnlineResult, current bool) {
	res.Source = revSources[e.src]
	if !e.nextUpdate.IsZero() && now.After(e.nextUpdate.Add(pol.skew)) {
		return res, false
	}
	if e.src == srcCRL {
		err := e.crl.Check(cert, issuer, now, pol.skew)
		var rev *sig.RevokedError
		switch {
		case err == nil:
			res.Status = sig.OnlineGood
		case errors.As(err, &rev):
			res.Status, res.RevokedAt, res.ReasonCode = sig.OnlineRevoked, rev.RevokedAt, rev.ReasonCode
			r.counts.revoked[srcCRL].Add(1)
		case errors.Is(err, sig.ErrStaleCRL):
			return res, false
		default:
			res.Status, res.Err = sig.OnlineUnavailable, err
		}
		return res, true
	}
	o := e.ocsp
	switch o.Status {
	case ocsp.Good:
		res.Status = sig.OnlineGood
	case ocsp.Revoked:
		res.Status, res.RevokedAt, res.ReasonCode = sig.OnlineRevoked, o.RevokedAt, o.RevocationReason
		r.counts.revoked[srcOCSP].Add(1)
	default:
		res.Status, res.Err = sig.OnlineUnavailable, errors.New("OCSP responder: status unknown")
	}
	return res, true
}

// startLocked queues a fetch of e; false if the queue is full.
func (r *revocations) startLocked(e *revEntry, cert, issuer *x509.Certificate) bool {
	select {
	case r.jobs <- e:
		e.fetching = true
		e.cert, e.iss = cert, issuer
		return true
	default:
		return false
	}
}

// evictLocked drops the least recently used entries not being fetched
// when the cache holds more than max.
func (r *revocations) evictLocked(limit int) {
	if len(r.entries) <= limit {
		return
	}
	// Drop an eighth at once so that eviction is amortised.
	all := make([]*revEntry, 0, len(r.entries))
	for _, e := range r.entries {
		if !e.fetching {
			all = append(all, e)
		}
	}
	slices.SortFunc(all, func(a, b *revEntry) int { return a.lastUsed.Compare(b.lastUsed) })
	n := len(r.entries) - limit + limit/8
	for i := 0; i < n && i < len(all); i++ {
		delete(r.entries, all[i].key)
	}
}

func (r *revocations) worker() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case e := <-r.jobs:
			r.fetch(e)
		}
	}
}

// fetch fetches e's answer with bounded attempts within the timeout and
// stores the result.
func (r *revocations) fetch(e *revEntry) {
	pol := r.policy()
	r.mu.Lock()
	cert, issuer, src, u := e.cert, e.iss, e.src, e.url
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), pol.timeout)
	defer cancel()
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := r.now()
	var (
		crl  *sig.IndexedCRL
		resp *ocsp.Response
		err  error
	)
	for attempt := 0; attempt < pol.retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(100<<attempt) * time.Millisecond):
			}
			if ctx.Err() != nil {
				break
			}
		}
		if src == srcCRL {
			crl, err = r.fetchCRL(ctx, pol, u, issuer)
		} else {
			resp, err = r.fetchOCSP(ctx, u, cert, issuer)
		}
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	wall := r.now()
	r.counts.fetchNanos[src].Add(uint64(wall.Sub(start)))
	r.mu.Lock()
	defer r.mu.Unlock()
	e.fetching = false
	if err != nil {
		r.counts.fetchKO[src].Add(1)
		e.err, e.failedAt = err, wall
		// A previous answer stays usable until its own nextUpdate.
		if e.hasAnswer() {
			e.refreshAt = wall.Add(pol.retryInterval)
		}
		r.log.Warn("revocation fetch failed", "source", revSources[src], "url", u, "error", err)
		return
	}
	r.counts.fetchOK[src].Add(1)
	e.err = nil
	var this, next time.Time
	if crl != nil {
		e.crl, e.ocsp = crl, nil
		this, next = crl.CRL().ThisUpdate, crl.CRL().NextUpdate
	} else {
		e.ocsp, e.crl = resp, nil
		this, next = resp.ThisUpdate, resp.NextUpdate
	}
	e.nextUpdate = next
	e.refreshAt = refreshTime(wall, this, next, src)
	r.log.Debug("revocation answer fetched", "source", revSources[src], "url", u, "next_update", next, "took", wall.Sub(start))
}

// refreshTime is when an answer fetched at wall is fetched again: at three
// quarters of its validity (so it is renewed before nextUpdate), at least
// ten seconds on.
func refreshTime(wall, this, next time.Time, src int) time.Time {
	if next.IsZero() {
		if src == srcOCSP {
			return wall.Add(ocspNoNextUpdateTTL)
		}
		return wall.Add(revocationDefaultTTL)
	}
	from := this
	if from.IsZero() || from.After(wall) {
		from = wall
	}
	at := from.Add(next.Sub(from) * 3 / 4)
	if min := wall.Add(10 * time.Second); at.Before(min) {
		return min
	}
	return at
}

func (r *revocations) get(ctx context.Context, method, u, ctype string, body []byte, limit int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(data) > limit {
		return nil, fmt.Errorf("answer larger than %d bytes", limit)
	}
	return data, nil
}

func (r *revocations) fetchCRL(ctx context.Context, pol revocationPolicy, u string, issuer *x509.Certificate) (*sig.IndexedCRL, error) {
	data, err := r.get(ctx, http.MethodGet, u, "", nil, pol.maxCRLBytes)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil && b.Type == "X509 CRL" {
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	if !bytes.Equal(crl.RawIssuer, issuer.RawSubject) {
		return nil, fmt.Errorf("CRL issued by %q, not by %q", crl.Issuer, issuer.Subject)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("CRL signature: %w", err)
	}
	return sig.NewIndexedCRL(crl), nil
}

func (r *revocations) fetchOCSP(ctx context.Context, u string, cert, issuer *x509.Certificate) (*ocsp.Response, error) {
	req, err := ocsp.CreateRequest(cert, issuer, nil)
	if err != nil {
		return nil, err
	}
	data, err := r.get(ctx, http.MethodPost, u, "application/ocsp-request", req, maxOCSPResponseBytes)
	if err != nil {
		return nil, err
	}
	// Verifies the signature: by the issuer, or by a responder
	// certificate the issuer signed.
	resp, err := ocsp.ParseResponseForCert(data, cert, issuer)
	if err != nil {
		return nil, fmt.Errorf("OCSP: %w", err)
	}
	if resp.Certificate != nil && !bytes.Equal(resp.Certificate.Raw, issuer.Raw) &&
		!slices.Contains(resp.Certificate.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
		return nil, errors.New("OCSP: delegated responder certificate lacks the OCSPSigning key usage")
	}
	if resp.SerialNumber == nil || resp.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		return nil, errors.New("OCSP: answer for another serial")
	}
	now := r.now()
	if resp.ThisUpdate.After(now.Add(r.policy().skew)) {
		return nil, fmt.Errorf("OCSP: answer from the future (thisUpdate %s)", resp.ThisUpdate.UTC().Format(time.RFC3339))
	}
	if !resp.NextUpdate.IsZero() && now.After(resp.NextUpdate.Add(r.policy().skew)) {
		return nil, fmt.Errorf("OCSP: stale answer (nextUpdate %s)", resp.NextUpdate.UTC().Format(time.RFC3339))
	}
	return resp, nil
}

// stats is a snapshot of the counters for metrics.
func (r *revocations) stats() metrics.Revocation {
	var s metrics.Revocation
	if r == nil {
		return s
	}
	c := &r.counts
	for i := range 2 {
		s.Hits[i], s.Misses[i] = c.hits[i].Load(), c.misses[i].Load()
		s.FetchOK[i], s.FetchFailed[i], s.Revoked[i] = c.fetchOK[i].Load(), c.fetchKO[i].Load(), c.revoked[i].Load()
		s.FetchSeconds[i] = float64(c.fetchNanos[i].Load()) / 1e9
	}
	s.Refused, s.FailOpen, s.Pending = c.unavailable.Load(), c.failOpen.Load(), c.pending.Load()
	r.mu.Lock()
	s.Cached = len(r.entries)
	r.mu.Unlock()
	return s
}

// wireRevocations starts the online checker when certificates are verified
// and something is fetched, and hands it to the verifier. The checker is
// kept across credential reloads (its cache with it); a node that starts
// without it needs a restart to fetch.
func (n *Node) wireRevocations(cfg *Config, v *sig.Verifier) *revocations {
	if v == nil {
		return nil
	}
	r := newRevocations(cfg, n.log, n.clock.Now)
	if r.policy().online() {
		v.Online = r
	}
	return r
}
