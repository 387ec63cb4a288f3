package ike

import (
	"errors"
	"net/netip"
)

// Admission of new IKE SAs: what a flood of IKE_SA_INIT requests can make
// the responder keep.
//
//   - Above CookieThreshold half-open SAs a request needs a valid cookie
//     (RFC 7296 §2.6) before any key exchange is computed.
//   - A request whose cookie proved its source address is refused once that
//     address's prefix (MaxHalfOpenPerPrefix) holds this many half-open SAs.
//     The per-prefix bound applies only to requests that echoed a cookie, so
//     a spoofing flood cannot fill another address's quota, and it is
//     generous so that many gateways behind one carrier-grade NAT address do
//     not lock each other out.
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

// admit decides whether a request that passed the cookie check (if one was
// demanded) may create a half-open SA; cookieProven says a valid cookie
// came with it.
func (e *Engine) admit(remote netip.Addr, reqLen int, cookieProven bool) error {
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
	case cookieProven && e.perPrefix[e.sourcePrefix(remote)] >= e.cfg.MaxHalfOpenPerPrefix:
		e.stats.RefusedPrefix++
		return ErrHalfOpenPrefix
	}
	return nil
}

// halfOpenAdd counts a new half-open SA.
func (e *Engine) halfOpenAdd(sa *IKESA) {
	sa.halfOpen = true
	sa.halfOpenCost = int32(len(sa.initReq) + len(sa.initResp) + halfOpenOverhead)
	e.halfOpen++
	e.publishPressure()
	e.halfOpenBytes += int64(sa.halfOpenCost)
	e.perPrefix[e.sourcePrefix(sa.initRemote.Addr())]++
}

// halfOpenDone uncounts a half-open SA (established or removed).
func (e *Engine) halfOpenDone(sa *IKESA) {
	if !sa.halfOpen {
		return
	}
	sa.halfOpen = false
	e.halfOpen--
	e.publishPressure()
	e.halfOpenBytes -= int64(sa.halfOpenCost)
	sa.halfOpenCost = 0
	p := e.sourcePrefix(sa.initRemote.Addr())
	if n := e.perPrefix[p]; n <= 1 {
		delete(e.perPrefix, p)
	} else {
		e.perPrefix[p] = n - 1
	}
}
