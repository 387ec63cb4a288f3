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
	secrets [2]*cookieSecret // current and previous (nil: none yet); never changed once made

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
// ScreenQueue. The reply is appended to dst (a socket reader reuses its
// buffers: under a flood Screen allocates nothing). It never panics on
// any input.
func (c *Cookies) Screen(now time.Time, b []byte, remote netip.Addr, dst []byte) (reply []byte, v Screening) {
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
	cur, cs := c.lookup(version)
	if cur == nil || now.After(cur.until) {
		return nil, ScreenQueue // the engine makes (or renews) the secret
	}
	if len(cookie) > 1 && cs != nil && cs.valid(cookie, nonce, remote, h.SPIi) {
		return nil, ScreenProven
	}
	c.sent.Add(1)
	c.demand(now)
	return appendCookieReply(dst, h.SPIi, cur, nonce, remote), ScreenAnswered
}

// CookieReplyLen is the length of Screen's replies.
const CookieReplyLen = headerLen + genericHeaderLen + 4 + cookieLen

// appendCookieReply appends the IKE_SA_INIT response that demands a
// cookie (RFC 7296 §2.6) to dst: the header and one COOKIE notification
// (the socket reader sends one for every request of a flood).
func appendCookieReply(dst []byte, spii uint64, cs *cookieSecret, ni []byte, peer netip.Addr) []byte {
	h := Message{SPIi: spii, Exchange: IKE_SA_INIT, Flags: FlagResponse}
	start := len(dst)
	b := h.appendHeader(dst, PayloadNotify)
	b = append(b, uint8(PayloadNone), 0, 0, 0, // the notification's generic header
		uint8(ProtoNone), 0, byte(COOKIE>>8), byte(COOKIE&0xff)) // no protocol, no SPI
	b = cs.appendSum(b, ni, peer, spii)
	putLen16(b[start+headerLen+2:], len(b)-start-headerLen)
	finish(b[start:])
	return b
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

// valid reports whether cookie is the one cs gives the request (see sum).
func (cs *cookieSecret) valid(cookie, ni []byte, peer netip.Addr, spii uint64) bool {
	m := cs.mac(ni, peer, spii)
	ok := len(cookie) == cookieLen && cookie[0] == cs.version && hmac.Equal(m.Sum(m.out[:0]), cookie[1:])
	cs.done(m)
	return ok
}

// appendSum appends the cookie (see sum) to dst.
func (cs *cookieSecret) appendSum(dst, ni []byte, peer netip.Addr, spii uint64) []byte {
	m := cs.mac(ni, peer, spii)
	dst = append(append(dst, cs.version), m.Sum(m.out[:0])...)
	cs.done(m)
	return dst
}

// cookieMAC is an HMAC-SHA-256 keyed with a secret, with room for what it
// hashes besides the nonce and for its sum, so that a cookie costs no
// allocation.
type cookieMAC struct {
	hash.Hash
	in  [24]byte // the peer's address (16 octets) and the initiator SPI
	out [sha256.Size]byte
}

// mac is a keyed HMAC from the secret's pool (its pads are computed once,
// not for every request of a flood) that has hashed the request's nonce
// ni, peer and spii; socket readers call it concurrently. The caller
// hands it back with done.
func (cs *cookieSecret) mac(ni []byte, peer netip.Addr, spii uint64) *cookieMAC {
	var m *cookieMAC
	if cs.macs != nil {
		m, _ = cs.macs.Get().(*cookieMAC)
	}
	if m == nil {
		m = newCookieMAC(cs.key)
	}
	m.Write(ni)
	a := peer.As16()
	copy(m.in[:16], a[:])
	binary.BigEndian.PutUint64(m.in[16:], spii)
	m.Write(m.in[:])
	return m
}

func (cs *cookieSecret) done(m *cookieMAC) {
	if cs.macs != nil {
		m.Reset()
		cs.macs.Put(m)
	}
}

func newCookieMAC(key [32]byte) *cookieMAC { return &cookieMAC{Hash: hmac.New(sha256.New, key[:])} }

// macPool hands out cookieMACs keyed with key.
func macPool(key [32]byte) *sync.Pool {
	return &sync.Pool{New: func() any { return newCookieMAC(key) }}
}

// cookieFor is the cookie of a request under the secret with the given
// version, current or previous; nil when there is no such secret.
func (e *Engine) cookieFor(now time.Time, version byte, ni []byte, peer netip.Addr, spii uint64) []byte {
	e.currentCookie(now)
	_, cs := e.cookies.lookup(version)
	if cs == nil {
		return nil
	}
	return cs.sum(ni, peer, spii)
}

// cookieValid reports whether cookie (its version octet first) is the
// one the current or the previous secret gives the request, as Screen
// checks it.
func (e *Engine) cookieValid(now time.Time, cookie, ni []byte, peer netip.Addr, spii uint64) bool {
	if len(cookie) == 0 {
		return false
	}
	e.currentCookie(now)
	_, cs := e.cookies.lookup(cookie[0])
	return cs != nil && cs.valid(cookie, ni, peer, spii)
}

// lookup returns the current secret and the secret with the given
// version, the current or the previous one; nil when there is no such
// secret.
func (c *Cookies) lookup(version byte) (cur, match *cookieSecret) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	cur = c.secrets[0]
	for _, s := range c.secrets {
		if s != nil && s.version == version {
			return cur, s
		}
	}
	return cur, nil
}

// currentCookie returns the current secret's version, making a new secret
// when there is none or it has expired.
func (e *Engine) currentCookie(now time.Time) byte {
	c := e.cookies
	c.mu.RLock()
	cur := c.secrets[0]
	c.mu.RUnlock()
	if cur != nil && !now.After(cur.until) {
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
	next := &cookieSecret{version: 1, until: now.Add(cookieLifetime)}
	e.read(next.key[:])
	if cur != nil {
		next.version = cur.version + 1
	}
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
	cur := c.secrets[0]
	c.mu.RUnlock()
	if cur != nil && now.Before(cur.until.Add(-cookieRenewMargin)) {
		return
	}
	e.newCookieSecret(now)
}

// publishPressure tells Screen whether the half-open SAs are at the
// threshold.
func (e *Engine) publishPressure() { e.cookies.over.Store(e.halfOpen >= e.cfg.CookieThreshold) }
