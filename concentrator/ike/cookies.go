package ike

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Cookies holds an engine's cookie secrets (RFC 7296 §2.6: the current and
// the previous one) and lets the caller's socket reader screen new
// IKE_SA_INIT requests before they are queued for the engine (Screen).
// Unlike the engine, it is safe for concurrent use. The engine alone
// rotates the secrets (it owns the randomness source); Screen only uses
// them.
type Cookies struct {
	mu      sync.RWMutex
	secrets [2]cookieSecret // current and previous

	over     atomic.Bool   // half-open SAs at the engine's threshold
	demanded atomic.Int64  // when a cookie was last demanded (Unix ns)
	hold     time.Duration // how long cookies stay demanded after the last demand
	sent     atomic.Uint64 // cookie demands Screen answered
}

// Screening is what Screen decided about a datagram.
type Screening int

const (
	// ScreenQueue: for the engine (not under pressure, not a plain
	// IKE_SA_INIT request, malformed, or no secret yet).
	ScreenQueue Screening = iota
	// ScreenAnswered: a request without a valid cookie while the engine
	// demands them; the caller sends the reply Screen returned and
	// queues nothing.
	ScreenAnswered
	// ScreenProven: a request carrying a valid cookie (its sender is
	// return-routable): the caller may queue it ahead of new requests.
	ScreenProven
)

// Cookies returns the engine's cookie secrets for its socket reader.
func (e *Engine) Cookies() *Cookies { return e.cookies }

// UnderPressure reports whether the engine demands cookies of new
// IKE_SA_INIT requests at now: while its half-open SAs are at the
// threshold, and for a half-open timeout after the last cookie it
// demanded. Without the hold a steady flood would be let in again, one
// Diffie-Hellman per spoofed request, each time the half-open SAs it made
// time out together.
func (c *Cookies) UnderPressure(now time.Time) bool {
	if c.over.Load() {
		return true
	}
	d := time.Duration(now.UnixNano() - c.demanded.Load())
	return d > -c.hold && d < c.hold
}

// demand notes that a cookie was demanded at now.
func (c *Cookies) demand(now time.Time) { c.demanded.Store(now.UnixNano()) }

// Demand makes the engine and Screen demand cookies from now for a
// half-open timeout, whatever the number of half-open SAs: the caller saw
// the engine's queue of new IKE_SA_INIT requests back up. Below the
// threshold each spoofed request would cost a Diffie-Hellman, and the
// genuine ones would wait behind them.
func (c *Cookies) Demand(now time.Time) { c.demand(now) }

// Screen looks at a datagram b (an IKE message, without the non-ESP
// marker) from remote, as the engine would for an IKE_SA_INIT request
// under pressure, without decoding it into payloads and without touching
// the engine: a request without a valid cookie is answered with one
// (reply), one with a valid cookie is ScreenProven. Anything else,
// and everything while the engine is not under pressure, is
// ScreenQueue. It never panics on any input.
func (c *Cookies) Screen(now time.Time, b []byte, remote netip.Addr) (reply []byte, v Screening) {
	if !c.UnderPressure(now) {
		return nil, ScreenQueue
	}
	h, err := DecodeHeader(b)
	if err != nil || h.Exchange != IKE_SA_INIT || h.SPIr != 0 || h.MessageID != 0 ||
		h.Flags&FlagInitiator == 0 || h.Flags&FlagResponse != 0 {
		return nil, ScreenQueue
	}
	cookie, nonce, ok := scanInit(h.NextPayload, b)
	if !ok {
		return nil, ScreenQueue // the engine answers or drops it
	}
	var version byte
	if len(cookie) > 1 {
		version = cookie[0]
	}
	cur, cs, ok := c.lookup(version)
	if cur.until.IsZero() || now.After(cur.until) {
		return nil, ScreenQueue // the engine makes (or renews) the secret
	}
	if len(cookie) > 1 && ok && hmac.Equal(cs.sum(nonce, remote, h.SPIi), cookie) {
		return nil, ScreenProven
	}
	c.sent.Add(1)
	c.demand(now)
	return cookieReply(h.SPIi, &cur, nonce, remote), ScreenAnswered
}

// cookieReply is the IKE_SA_INIT response that demands a cookie (RFC 7296
// §2.6): the header and one COOKIE notification, in one allocation (the
// socket reader sends one for every request of a flood).
func cookieReply(spii uint64, cs *cookieSecret, ni []byte, peer netip.Addr) []byte {
	h := Message{SPIi: spii, Exchange: IKE_SA_INIT, Flags: FlagResponse}
	b := h.appendHeader(make([]byte, 0, headerLen+genericHeaderLen+4+cookieLen), PayloadNotify)
	b = append(b, uint8(PayloadNone), 0, 0, 0, // the notification's generic header
		uint8(ProtoNone), 0, byte(COOKIE>>8), byte(COOKIE&0xff)) // no protocol, no SPI
	b = cs.appendSum(b, ni, peer, spii)
	putLen16(b[headerLen+2:], len(b)-headerLen)
	return finish(b)
}

// scanInit walks an IKE_SA_INIT request's payload chain without decoding
// it: the COOKIE notification's data if it is the first payload, and the
// Nonce's data. ok is false for a malformed chain, a missing or
// ill-sized Nonce, or an encrypted payload.
func scanInit(next PayloadType, b []byte) (cookie, nonce []byte, ok bool) {
	off := headerLen
	for i := 0; next != PayloadNone; i++ {
		if i >= maxPayloads || len(b)-off < genericHeaderLen {
			return nil, nil, false
		}
		plen := int(b[off+2])<<8 | int(b[off+3])
		if plen < genericHeaderLen || off+plen > len(b) {
			return nil, nil, false
		}
		body := b[off+genericHeaderLen : off+plen]
		switch next {
		case PayloadNotify:
			if i == 0 && len(body) >= 4 && NotifyType(binary.BigEndian.Uint16(body[2:])) == COOKIE {
				if spi := int(body[1]); len(body) >= 4+spi {
					cookie = body[4+spi:]
				}
			}
		case PayloadNonce:
			if len(body) < 16 || len(body) > 256 {
				return nil, nil, false
			}
			nonce = body
		case PayloadSK, PayloadSKF:
			return nil, nil, false
		}
		next = PayloadType(b[off])
		off += plen
	}
	return cookie, nonce, nonce != nil
}

// cookieSecret is one secret of the cookies: its version (the cookie's
// first octet), key and expiry.
type cookieSecret struct {
	version byte
	key     [32]byte
	until   time.Time
	macs    *sync.Pool // of HMACs keyed with key (macPool); nil: made per use
}

// cookieLen is a cookie's length: the secret's version octet and an
// HMAC-SHA-256.
const cookieLen = 1 + sha256.Size

// sum is the cookie for a request with nonce ni from peer with initiator
// SPI spii under secret cs: its version octet, then an HMAC.
func (cs *cookieSecret) sum(ni []byte, peer netip.Addr, spii uint64) []byte {
	return cs.appendSum(make([]byte, 0, cookieLen), ni, peer, spii)
}

// appendSum appends the cookie (see sum) to dst. The HMAC comes keyed from
// the secret's pool (its pads are computed once, not for every request of
// a flood); socket readers call it concurrently.
func (cs *cookieSecret) appendSum(dst, ni []byte, peer netip.Addr, spii uint64) []byte {
	var m hash.Hash
	if cs.macs != nil {
		m, _ = cs.macs.Get().(hash.Hash)
	}
	if m == nil {
		m = hmac.New(sha256.New, cs.key[:])
	}
	m.Write(ni)
	a := peer.As16()
	m.Write(a[:])
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], spii)
	m.Write(s[:])
	dst = m.Sum(append(dst, cs.version))
	if cs.macs != nil {
		m.Reset()
		cs.macs.Put(m)
	}
	return dst
}

// macPool hands out HMAC-SHA-256 states keyed with key.
func macPool(key [32]byte) *sync.Pool {
	return &sync.Pool{New: func() any { return hmac.New(sha256.New, key[:]) }}
}

// cookieFor is the cookie of a request under the secret with the given
// version, current or previous; nil when there is no such secret.
func (e *Engine) cookieFor(now time.Time, version byte, ni []byte, peer netip.Addr, spii uint64) []byte {
	e.currentCookie(now)
	_, cs, ok := e.cookies.lookup(version)
	if !ok {
		return nil
	}
	return cs.sum(ni, peer, spii)
}

// lookup returns the current secret and the secret with the given
// version, the current or the previous one; ok is false when there is no
// such secret.
func (c *Cookies) lookup(version byte) (cur, match cookieSecret, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	cur = c.secrets[0]
	switch version {
	case cur.version:
		match = cur
	case c.secrets[1].version:
		match = c.secrets[1]
	default:
		return cur, match, false
	}
	return cur, match, !match.until.IsZero()
}

// currentCookie returns the current secret's version, making a new secret
// when there is none or it has expired.
func (e *Engine) currentCookie(now time.Time) byte {
	c := e.cookies
	c.mu.RLock()
	cur := c.secrets[0]
	c.mu.RUnlock()
	if !cur.until.IsZero() && !now.After(cur.until) {
		return cur.version
	}
	return e.newCookieSecret(now)
}

// newCookieSecret makes a new current secret; the current one becomes the
// previous one.
func (e *Engine) newCookieSecret(now time.Time) byte {
	c := e.cookies
	c.mu.RLock()
	cur := c.secrets[0]
	c.mu.RUnlock()
	var next cookieSecret
	e.read(next.key[:])
	next.version = cur.version + 1
	next.until = now.Add(cookieLifetime)
	next.macs = macPool(next.key)
	c.mu.Lock()
	c.secrets[1], c.secrets[0] = c.secrets[0], next
	c.mu.Unlock()
	return next.version
}

// cookieRenewMargin: RenewCookieSecret replaces the current secret this
// long before it expires, so that Screen always has one to answer with.
const cookieRenewMargin = cookieLifetime / 5

// RenewCookieSecret makes the cookie secret if there is none yet, and
// replaces it (keeping it as the previous one) when it expires within
// cookieRenewMargin. The caller calls it at start and now and then, so
// that the socket reader can answer with cookies (Screen) from the first
// request on, before the engine ever demanded one.
func (e *Engine) RenewCookieSecret(now time.Time) {
	c := e.cookies
	c.mu.RLock()
	until := c.secrets[0].until
	c.mu.RUnlock()
	if !until.IsZero() && now.Before(until.Add(-cookieRenewMargin)) {
		return
	}
	e.newCookieSecret(now)
}

// publishPressure tells Screen whether the half-open SAs are at the
// threshold.
func (e *Engine) publishPressure() { e.cookies.over.Store(e.halfOpen >= e.cfg.CookieThreshold) }
