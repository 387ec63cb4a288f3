package ike

import (
	"errors"
	"net/netip"
	"time"
)

// Admission of new IKE SAs: what a flood of IKE_SA_INIT requests can make
// the responder keep.
//
//   - Above CookieThreshold half-open SAs a request needs a valid cookie
//     (RFC 7296 §2.6) before any key exchange is computed.
//   - A request whose cookie proved its source address is refused once that
//     address's prefix holds its quota of half-open SAs: MaxHalfOpenPerPrefix
//     plus the prefix's credit. The per-prefix bound applies only to
//     requests that echoed a cookie, so a spoofing flood cannot fill another
//     address's quota, and it is generous so that many gateways behind one
//     carrier-grade NAT address do not lock each other out.
//   - Credit: an SA of a prefix that had a request refused (while the SA
//     was half-open) and then authenticated raises the prefix's quota by
//     one for CreditWindow. Gateways behind one NAT address that start
//     together (a mass restart) thus get in by doubling waves instead of one
//     quota per retransmission; a host that only echoes cookies never
//     authenticates and keeps the base quota. Beyond the base quota a
//     prefix may hold at most half of MaxHalfOpen and half of
//     MaxHalfOpenBytes, so earned credit never lets one prefix take the
//     node's half-open capacity.
//   - MaxHalfOpen half-open SAs, MaxHalfOpenBytes of kept messages and
//     MaxSAs IKE SAs in all are hard caps: beyond them requests are dropped.
//
// A refused request is dropped without an answer (the peer retransmits
// and gets in once the pressure is gone) and counted in Stats.

// Admission limits' defaults (per engine: the node divides node-wide
// limits among its shards).
const (
	DefaultMaxMessageSize       = 65535
	DefaultMaxInitSize          = 8192
	DefaultMaxHalfOpen          = 16384
	DefaultMaxHalfOpenPerPrefix = 256
	DefaultMaxHalfOpenBytes     = 64 << 20
	DefaultHalfOpenPrefix4      = 32
	DefaultHalfOpenPrefix6      = 64

	// CreditWindow is how long an authenticated SA counts in its source
	// prefix's credit.
	CreditWindow = 30 * time.Second

	// halfOpenOverhead approximates what a half-open SA costs besides the
	// two IKE_SA_INIT messages it keeps (keys, nonces, maps, timers).
	halfOpenOverhead = 1024
)

// Reasons for refusing an IKE_SA_INIT request.
var (
	ErrInitTooLarge   = errors.New("IKE_SA_INIT request larger than ike.max_init_message_size")
	ErrHalfOpenFull   = errors.New("half-open IKE SAs at ike.max_half_open")
	ErrHalfOpenPrefix = errors.New("half-open IKE SAs from this source prefix at ike.max_half_open_per_prefix")
	ErrHalfOpenMemory = errors.New("half-open IKE SAs at ike.max_half_open_bytes")
	ErrTooManySAs     = errors.New("IKE SAs at ike.max_sas")
)

func (c *Config) setAdmissionDefaults() {
	if c.MaxMessageSize <= 0 || c.MaxMessageSize > maxMessageSize {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxInitSize <= 0 {
		c.MaxInitSize = DefaultMaxInitSize
	}
	if c.MaxHalfOpen <= 0 {
		c.MaxHalfOpen = DefaultMaxHalfOpen
	}
	if c.MaxHalfOpenPerPrefix <= 0 {
		c.MaxHalfOpenPerPrefix = DefaultMaxHalfOpenPerPrefix
	}
	if c.MaxHalfOpenBytes <= 0 {
		c.MaxHalfOpenBytes = DefaultMaxHalfOpenBytes
	}
	if c.HalfOpenPrefix4 <= 0 || c.HalfOpenPrefix4 > 32 {
		c.HalfOpenPrefix4 = DefaultHalfOpenPrefix4
	}
	if c.HalfOpenPrefix6 <= 0 || c.HalfOpenPrefix6 > 128 {
		c.HalfOpenPrefix6 = DefaultHalfOpenPrefix6
	}
}

// sourcePrefix is the prefix of a when counting half-open SAs per source.
func (e *Engine) sourcePrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := e.cfg.HalfOpenPrefix6
	if a.Is4() {
		bits = e.cfg.HalfOpenPrefix4
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

// underPressure reports whether new IKE_SA_INIT requests need a cookie:
// at the half-open threshold, and for a while after the last demand
// (Cookies.UnderPressure).
func (e *Engine) underPressure() bool {
	return e.halfOpen >= e.cfg.CookieThreshold || e.cookies.UnderPressure(e.now)
}

// HalfOpenWorstCost is what admission counts for one half-open SA whose
// IKE_SA_INIT request has maxInitMessageSize bytes: the request and an
// allowance for the response as large again, plus the SA's own state.
func HalfOpenWorstCost(maxInitMessageSize int) int64 {
	return int64(2*maxInitMessageSize + halfOpenOverhead)
}

// prefixLoad is what one source prefix holds half-open.
type prefixLoad struct {
	halfOpen int32
	refused  bool  // a cookie-proven request was refused since halfOpen was last 0
	bytes    int64 // their halfOpenCost
}

// prefixQuota is how many half-open SAs p may hold at now: the base quota
// plus its unexpired credit, at most max(base, MaxHalfOpen/2).
func (e *Engine) prefixQuota(now time.Time, p netip.Prefix) int {
	base := e.cfg.MaxHalfOpenPerPrefix
	e.pruneCredit(now)
	return max(base, min(base+int(e.credit[p]), e.cfg.MaxHalfOpen/2))
}

// earnCredit counts an authenticated SA of p in its credit.
func (e *Engine) earnCredit(now time.Time, p netip.Prefix) {
	e.pruneCredit(now)
	e.stats.PrefixCredits++
	e.credit[p]++
	e.creditQ.push(p, now.Add(CreditWindow))
}

func (e *Engine) pruneCredit(now time.Time) {
	e.creditQ.prune(now, func(p netip.Prefix, _ time.Time) {
		if c := e.credit[p]; c <= 1 {
			delete(e.credit, p)
		} else {
			e.credit[p] = c - 1
		}
	})
}

// admit decides whether a request that passed the cookie check (if one was
// demanded) may create a half-open SA; cookieProven says a valid cookie
// came with it.
func (e *Engine) admit(now time.Time, remote netip.Addr, reqLen int, cookieProven bool) error {
	switch {
	case e.cfg.MaxSAs > 0 && len(e.sas) >= e.cfg.MaxSAs:
		e.stats.RefusedSAs++
		return ErrTooManySAs
	case e.halfOpen >= e.cfg.MaxHalfOpen:
		e.stats.RefusedHalfOpen++
		return ErrHalfOpenFull
	case e.halfOpenBytes+HalfOpenWorstCost(reqLen) > e.cfg.MaxHalfOpenBytes:
		e.stats.RefusedMemory++
		return ErrHalfOpenMemory
	case cookieProven && !e.prefixAdmits(now, remote, reqLen):
		e.stats.RefusedPrefix++
		return ErrHalfOpenPrefix
	}
	return nil
}

// prefixAdmits reports whether remote's prefix may hold one more half-open
// SA for a request of reqLen bytes, and marks the prefix refused if not.
func (e *Engine) prefixAdmits(now time.Time, remote netip.Addr, reqLen int) bool {
	p := e.sourcePrefix(remote)
	l, ok := e.perPrefix[p]
	if !ok || int(l.halfOpen) < e.cfg.MaxHalfOpenPerPrefix {
		return true
	}
	if int(l.halfOpen) < e.prefixQuota(now, p) && l.bytes+HalfOpenWorstCost(reqLen) <= e.cfg.MaxHalfOpenBytes/2 {
		return true
	}
	l.refused = true
	e.perPrefix[p] = l
	return false
}

// halfOpenAdd counts a new half-open SA.
func (e *Engine) halfOpenAdd(sa *IKESA) {
	sa.halfOpen = true
	sa.hs.halfOpenCost = int32(len(sa.hs.initReq) + len(sa.hs.initResp) + halfOpenOverhead)
	e.halfOpen++
	e.publishPressure()
	e.halfOpenBytes += int64(sa.hs.halfOpenCost)
	p := e.sourcePrefix(sa.hs.initRemote.Addr())
	l := e.perPrefix[p]
	l.halfOpen++
	l.bytes += int64(sa.hs.halfOpenCost)
	e.perPrefix[p] = l
}

// halfOpenGrow counts n more bytes for half-open sa (a cached response).
func (e *Engine) halfOpenGrow(sa *IKESA, n int64) {
	e.halfOpenBytes += n
	sa.hs.halfOpenCost += int32(n)
	p := e.sourcePrefix(sa.hs.initRemote.Addr())
	if l, ok := e.perPrefix[p]; ok {
		l.bytes += n
		e.perPrefix[p] = l
	}
}

// halfOpenDone uncounts a half-open SA: authenticated (established at now)
// or removed. An authenticated SA of a prefix that was refused meanwhile
// earns the prefix credit.
func (e *Engine) halfOpenDone(now time.Time, sa *IKESA, authenticated bool) {
	if !sa.halfOpen {
		return
	}
	sa.halfOpen = false
	e.halfOpen--
	e.publishPressure()
	e.halfOpenBytes -= int64(sa.hs.halfOpenCost)
	p := e.sourcePrefix(sa.hs.initRemote.Addr())
	l := e.perPrefix[p]
	if authenticated && l.refused {
		e.earnCredit(now, p)
	}
	if l.halfOpen <= 1 {
		delete(e.perPrefix, p)
	} else {
		l.halfOpen--
		l.bytes -= int64(sa.hs.halfOpenCost)
		e.perPrefix[p] = l
	}
	sa.hs.halfOpenCost = 0
}
