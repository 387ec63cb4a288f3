package esp

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"

	"golang.org/x/crypto/chacha20poly1305"
)

// Config describes one direction of a CHILD SA.
type Config struct {
	SPI      uint32
	EncrID   uint16 // EncrAESGCM16, EncrChaCha20Poly1305 or EncrAESCBC
	KeyBits  uint16 // optional; when set it must match the key length
	IntegID  uint16 // IntegNone for AEADs, IntegHMACSHA2* for AES-CBC
	EncrKey  []byte // AEADs: key followed by the 4-byte salt
	IntegKey []byte
	ESN      bool // extended sequence numbers (RFC 4304)

	// ReplayWindow is the inbound anti-replay window in packets
	// (DefaultReplayWindow if 0, at most MaxReplayWindow).
	ReplayWindow int

	// Sequence numbers of an SA that continues with its keys (restored,
	// moved). Outbound: OutSeq is the last number used (the first packet
	// carries OutSeq+1) and OutSeqLimit the highest number Seal may use
	// (0: none; see Outbound.SetSeqLimit). Inbound: InSeqLow is the
	// highest number authenticated before; the replay window starts with
	// its top there and every bit set, so numbers <= InSeqLow are refused.
	// Without ESN they must fit in 32 bits.
	OutSeq, OutSeqLimit uint64
	InSeqLow            uint64
}

func checkSeq(c Config, name string, v uint64) error {
	if !c.ESN && v > 0xffffffff {
		return fmt.Errorf("esp: %s %d above 2^32-1 without ESN", name, v)
	}
	return nil
}

// cbcMode is the BlockMode of crypto/cipher whose IV can be reset, which
// saves an allocation per packet (crypto/tls uses the same interface).
type cbcMode interface {
	cipher.BlockMode
	SetIV([]byte)
}

// suite is one SA direction's parameters and, from its first packet on,
// its keyed primitives. An SA that never carries traffic (most of a large
// fleet's idle gateways, between their keepalives) keeps only its key bytes
// and these few fields: what a keyed direction needs (expanded keys,
// GHASH tables, scratch space) is allocated by key.
type suite struct {
	k *keyed // nil until the first packet

	// Until the first packet (key): the keys and what to build. The
	// encryption key is kept in place (no object of its own for the
	// collector to mark in each idle SA); CBC's integrity key is not.
	encrKey    [32]byte
	encrKeyLen uint8
	integKey   []byte
	hash       func() hash.Hash
	encrID     uint16

	salt                 [4]byte
	ivLen, icvLen, align uint8
	esn                  bool
	isAEAD               bool
}

// keyed holds a suite's keyed primitives.
type keyed struct {
	aead   cipher.AEAD  // GCM or ChaCha20-Poly1305
	block  cipher.Block // AES-CBC
	cbcEnc cbcMode
	cbcDec cbcMode
	mac    hash.Hash
	ivGen  cipher.Block // CBC IVs: E_ivkey(seq), unpredictable without the key

	// Scratch space kept in the (heap) SA so that Seal and Open do not
	// allocate: slices of locals passed to interfaces would escape.
	nonce [12]byte
	aad   [12]byte
	sum   [64]byte
	ctr   [16]byte
}

// noCopy makes go vet's copylocks check report copies of the struct that
// holds it.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}

// newSuite fills s, which Inbound and Outbound hold by value.
func newSuite(s *suite, c Config) error {
	*s = suite{esn: c.ESN, encrID: c.EncrID}
	keyErr := func(want string) error {
		return fmt.Errorf("esp: %s: key of %d bytes, want %s", encrName(c.EncrID), len(c.EncrKey), want)
	}
	switch c.EncrID {
	case EncrAESGCM16:
		if c.IntegID != IntegNone {
			return fmt.Errorf("esp: AES-GCM takes no integrity transform, got %d", c.IntegID)
		}
		k := len(c.EncrKey) - 4
		if k != 16 && k != 24 && k != 32 {
			return keyErr("16, 24 or 32 plus a 4-byte salt")
		}
		if c.KeyBits != 0 && int(c.KeyBits) != 8*k {
			return keyErr(fmt.Sprintf("%d bits plus a 4-byte salt", c.KeyBits))
		}
		s.setEncrKey(c.EncrKey[:k])
		copy(s.salt[:], c.EncrKey[k:])
		s.ivLen, s.icvLen, s.align, s.isAEAD = 8, 16, 4, true
	case EncrChaCha20Poly1305:
		if c.IntegID != IntegNone {
			return fmt.Errorf("esp: ChaCha20-Poly1305 takes no integrity transform, got %d", c.IntegID)
		}
		if len(c.EncrKey) != chacha20poly1305.KeySize+4 || (c.KeyBits != 0 && c.KeyBits != 256) {
			return keyErr("32 plus a 4-byte salt")
		}
		s.setEncrKey(c.EncrKey[:chacha20poly1305.KeySize])
		copy(s.salt[:], c.EncrKey[chacha20poly1305.KeySize:])
		s.ivLen, s.icvLen, s.align, s.isAEAD = 8, 16, 4, true
	case EncrAESCBC:
		k := len(c.EncrKey)
		if (k != 16 && k != 24 && k != 32) || (c.KeyBits != 0 && int(c.KeyBits) != 8*k) {
			return keyErr("16, 24 or 32")
		}
		var klen int
		switch c.IntegID {
		case IntegHMACSHA256128:
			s.hash, klen, s.icvLen = sha256.New, 32, 16
		case IntegHMACSHA384192:
			s.hash, klen, s.icvLen = sha512.New384, 48, 24
		case IntegHMACSHA512256:
			s.hash, klen, s.icvLen = sha512.New, 64, 32
		default:
			return fmt.Errorf("esp: AES-CBC needs HMAC-SHA2-256/384/512, got integrity transform %d", c.IntegID)
		}
		if len(c.IntegKey) != klen {
			return fmt.Errorf("esp: integrity key of %d bytes, want %d", len(c.IntegKey), klen)
		}
		s.setEncrKey(c.EncrKey)
		s.integKey = bytes.Clone(c.IntegKey)
		s.ivLen, s.align = 16, 16
	default:
		return fmt.Errorf("esp: unsupported encryption transform %d", c.EncrID)
	}
	return nil
}

func (s *suite) setEncrKey(k []byte) {
	s.encrKeyLen = uint8(copy(s.encrKey[:], k))
}

// key builds the keyed primitives on the SA's first packet: an SA that
// never carries traffic (most of a large fleet's idle gateways, between
// their keepalives) costs its key bytes, not its expanded keys and
// tables (about 1.5 KiB for AES-GCM in both directions). Like Seal and
// Open, not safe for concurrent use.
func (s *suite) key() error {
	if s.k != nil {
		return nil
	}
	k := new(keyed)
	encrKey := s.encrKey[:s.encrKeyLen]
	var err error
	switch s.encrID {
	case EncrAESGCM16:
		var b cipher.Block
		if b, err = aes.NewCipher(encrKey); err == nil {
			k.aead, err = cipher.NewGCM(b)
		}
	case EncrChaCha20Poly1305:
		k.aead, err = chacha20poly1305.New(encrKey)
	case EncrAESCBC:
		if k.block, err = aes.NewCipher(encrKey); err != nil {
			break
		}
		var zero [16]byte
		enc, ok1 := cipher.NewCBCEncrypter(k.block, zero[:]).(cbcMode)
		dec, ok2 := cipher.NewCBCDecrypter(k.block, zero[:]).(cbcMode)
		if !ok1 || !ok2 {
			return errors.New("esp: crypto/cipher CBC mode cannot reset its IV")
		}
		k.cbcEnc, k.cbcDec = enc, dec
		k.mac = hmac.New(s.hash, s.integKey)
		var ivKey [16]byte
		if _, err = rand.Read(ivKey[:]); err != nil {
			break
		}
		k.ivGen, err = aes.NewCipher(ivKey[:])
	}
	if err != nil {
		return fmt.Errorf("esp: %s: %w", encrName(s.encrID), err)
	}
	copy(k.nonce[:4], s.salt[:])
	clear(s.encrKey[:])
	clear(s.integKey)
	s.encrKeyLen, s.integKey, s.hash, s.k = 0, nil, nil, k
	return nil
}

func encrName(id uint16) string {
	switch id {
	case EncrAESGCM16:
		return "AES-GCM-16"
	case EncrChaCha20Poly1305:
		return "ChaCha20-Poly1305"
	case EncrAESCBC:
		return "AES-CBC"
	}
	return fmt.Sprintf("ENCR(%d)", id)
}

// setAAD fills the AEAD additional data: SPI and the sequence number, 64
// bits with ESN (RFC 4106 §5, RFC 7634 §2.1). hdr is the packet's header.
func (s *suite) setAAD(hdr []byte, seq uint64) []byte {
	k := s.k
	copy(k.aad[:4], hdr[:4])
	if s.esn {
		binary.BigEndian.PutUint64(k.aad[4:], seq)
		return k.aad[:12]
	}
	binary.BigEndian.PutUint32(k.aad[4:], uint32(seq))
	return k.aad[:8]
}

// mac computes the truncated HMAC of pkt (header, IV, ciphertext) with the
// high ESN bits appended (RFC 4303 §2.2.1) into the keyed scratch space.
func (s *suite) icv(pkt []byte, seq uint64) []byte {
	k := s.k
	k.mac.Reset()
	k.mac.Write(pkt)
	if s.esn {
		binary.BigEndian.PutUint32(k.ctr[:4], uint32(seq>>32))
		k.mac.Write(k.ctr[:4])
	}
	return k.mac.Sum(k.sum[:0])[:s.icvLen]
}

// Outbound is the sending direction of an SA. It must not be copied (go
// vet says where): a copy would seal with the same sequence numbers, and
// with AES-GCM or ChaCha20-Poly1305 the same nonces.
type Outbound struct {
	_     noCopy
	spi   uint32
	seq   uint64 // last sequence number sent
	limit uint64 // highest sequence number Seal may use; 0: none
	s     suite
}

// NewOutbound keys the sending direction of an SA; its first packet carries
// c.OutSeq+1.
func NewOutbound(c Config) (*Outbound, error) {
	o := new(Outbound)
	if err := o.Init(c); err != nil {
		return nil, err
	}
	return o, nil
}

// Init keys o as NewOutbound does, in place: for a caller that holds the
// direction inside a larger struct (one object per SA fewer).
func (o *Outbound) Init(c Config) error {
	if err := checkSeq(c, "OutSeq", c.OutSeq); err != nil {
		return err
	}
	*o = Outbound{spi: c.SPI, seq: c.OutSeq, limit: c.OutSeqLimit}
	return newSuite(&o.s, c)
}

// SPI returns the SA's SPI (the peer's inbound SPI).
func (o *Outbound) SPI() uint32 { return o.spi }

// Seq returns the last sequence number sent (0: none yet).
func (o *Outbound) Seq() uint64 { return o.seq }

// SetSeq makes the next packet carry seq+1: after a takeover the new owner
// jumps past the persisted high-water mark.
func (o *Outbound) SetSeq(seq uint64) { o.seq = seq }

// SetSeqLimit sets the highest sequence number Seal may use (0: no limit).
// Above it Seal fails with ErrSeqLimit and uses no number, so raising the
// limit later lets the SA carry on where it stopped.
func (o *Outbound) SetSeqLimit(limit uint64) { o.limit = limit }

// SeqLimit returns the limit set by Config.OutSeqLimit or SetSeqLimit.
func (o *Outbound) SeqLimit() uint64 { return o.limit }

// Headroom is the number of bytes Seal puts before the payload.
func (o *Outbound) Headroom() int { return HeaderLen + int(o.s.ivLen) }

// Tailroom is the number of bytes Seal appends to an n-byte payload.
func (o *Outbound) Tailroom(n int) int {
	return o.padLen(n) + 2 + int(o.s.icvLen)
}

// padLen is the padding that aligns payload, pad length and next header
// to the suite's alignment (a power of two).
func (o *Outbound) padLen(n int) int {
	return -(n + 2) & (int(o.s.align) - 1)
}

// Overhead is the number of bytes an n-byte payload grows by.
func (o *Outbound) Overhead(n int) int { return o.Headroom() + o.Tailroom(n) }

// Seal encrypts the n-byte payload at buf[off:off+n] in place into an ESP
// packet and returns it: buf[off-Headroom() : off+n+Tailroom(n)]. off must
// be at least Headroom() and cap(buf) at least off+n+Tailroom(n).
func (o *Outbound) Seal(buf []byte, off, n int, nextHeader uint8) ([]byte, error) {
	hr := o.Headroom()
	end := off + n + o.Tailroom(n)
	if off < hr || n < 0 || end > cap(buf) {
		return nil, ErrBuffer
	}
	next := o.seq + 1
	if next == 0 || (!o.s.esn && next > 0xffffffff) {
		return nil, ErrSeqOverflow
	}
	if o.limit != 0 && next > o.limit {
		return nil, ErrSeqLimit
	}
	if err := o.s.key(); err != nil {
		return nil, err
	}
	o.seq = next
	return o.seal(buf[off-hr:end], n, nextHeader, nil), nil
}

// AppendSeal appends the ESP packet of payload to dst (for tests and tools;
// the data path uses Seal).
func (o *Outbound) AppendSeal(dst, payload []byte, nextHeader uint8) ([]byte, error) {
	hr := o.Headroom()
	total := hr + len(payload) + o.Tailroom(len(payload))
	start := len(dst)
	dst = append(dst, make([]byte, total)...)
	copy(dst[start+hr:], payload)
	pkt, err := o.Seal(dst[start:], hr, len(payload), nextHeader)
	if err != nil {
		return dst[:start], err
	}
	return dst[:start+len(pkt)], nil
}

// seal builds the packet in pkt (whole packet, payload already at
// Headroom()). iv, if set, overrides the generated IV (known-answer tests).
func (o *Outbound) seal(pkt []byte, n int, nextHeader uint8, iv []byte) []byte {
	s := &o.s
	s.key() // keyed by Seal; here for known-answer tests
	k := s.k
	hr := HeaderLen + int(s.ivLen)
	seq := o.seq
	binary.BigEndian.PutUint32(pkt[0:], o.spi)
	binary.BigEndian.PutUint32(pkt[4:], uint32(seq))
	// Trailer: monotonic padding 1, 2, 3, ... (RFC 4303 §2.4).
	p := hr + n
	pad := o.padLen(n)
	for i := 1; i <= pad; i++ {
		pkt[p] = byte(i)
		p++
	}
	pkt[p] = byte(pad)
	pkt[p+1] = nextHeader
	p += 2
	ivs := pkt[HeaderLen:hr]
	if s.isAEAD {
		// IV = the 64-bit sequence number: unique per key (RFC 4106 §3.1).
		if iv != nil {
			copy(ivs, iv)
		} else {
			binary.BigEndian.PutUint64(ivs, seq)
		}
		copy(k.nonce[4:], ivs) // nonce[:4] is the salt
		pt := pkt[hr:p]
		k.aead.Seal(pt[:0], k.nonce[:], pt, s.setAAD(pkt, seq))
		return pkt[:p+int(s.icvLen)]
	}
	if iv != nil {
		copy(ivs, iv)
	} else {
		binary.BigEndian.PutUint64(k.ctr[:8], seq)
		clear(k.ctr[8:])
		k.ivGen.Encrypt(ivs, k.ctr[:])
	}
	k.cbcEnc.SetIV(ivs)
	k.cbcEnc.CryptBlocks(pkt[hr:p], pkt[hr:p])
	copy(pkt[p:], s.icv(pkt[:p], seq))
	return pkt[:p+int(s.icvLen)]
}

// Inbound is the receiving direction of an SA. It must not be copied: a
// copy would keep a replay window of its own.
type Inbound struct {
	_   noCopy
	spi uint32
	win window
	s   suite
}

// NewInbound keys the receiving direction of an SA.
func NewInbound(c Config) (*Inbound, error) {
	in := new(Inbound)
	if err := in.Init(c); err != nil {
		return nil, err
	}
	return in, nil
}

// Init keys in as NewInbound does, in place (see Outbound.Init).
func (in *Inbound) Init(c Config) error {
	w := c.ReplayWindow
	if w == 0 {
		w = DefaultReplayWindow
	}
	if w < 1 || w > MaxReplayWindow {
		return fmt.Errorf("esp: replay window %d out of range 1..%d", w, MaxReplayWindow)
	}
	if err := checkSeq(c, "InSeqLow", c.InSeqLow); err != nil {
		return err
	}
	*in = Inbound{spi: c.SPI, win: newWindow(w)}
	if err := newSuite(&in.s, c); err != nil {
		return err
	}
	in.win.setTop(c.InSeqLow)
	return nil
}

// SPI returns the SA's (our) SPI.
func (in *Inbound) SPI() uint32 { return in.spi }

// Seq returns the highest authenticated sequence number received.
func (in *Inbound) Seq() uint64 { return in.win.top }

// Open checks the replay window, authenticates and decrypts the ESP packet
// pkt in place, records its sequence number, and returns the payload (a
// subslice of pkt), its Next Header and its full sequence number. Errors
// are of type Error. A payload with NextHeaderDummy is a TFC dummy packet
// that the caller drops.
func (in *Inbound) Open(pkt []byte) (payload []byte, nextHeader uint8, seq uint64, err error) {
	s := &in.s
	hr, icvLen := HeaderLen+int(s.ivLen), int(s.icvLen)
	if len(pkt) < hr+2+icvLen {
		return nil, 0, 0, ErrMalformed
	}
	if binary.BigEndian.Uint32(pkt) != in.spi {
		return nil, 0, 0, ErrWrongSPI
	}
	low := binary.BigEndian.Uint32(pkt[4:])
	if s.esn {
		var ok bool
		if seq, ok = in.win.inferESN(low); !ok {
			return nil, 0, 0, ErrReplay
		}
	} else {
		seq = uint64(low)
	}
	if !in.win.check(seq) {
		return nil, 0, 0, ErrReplay
	}
	if s.key() != nil {
		return nil, 0, 0, ErrIntegrity // not reached: the keys were checked at NewInbound
	}
	k := s.k
	ctEnd := len(pkt) - icvLen
	if s.isAEAD {
		copy(k.nonce[4:], pkt[HeaderLen:hr]) // nonce[:4] is the salt
		ct := pkt[hr:]
		if _, err := k.aead.Open(ct[:0], k.nonce[:], ct, s.setAAD(pkt, seq)); err != nil {
			return nil, 0, 0, ErrIntegrity
		}
	} else {
		if (ctEnd-hr)%16 != 0 || ctEnd == hr {
			return nil, 0, 0, ErrMalformed
		}
		if subtle.ConstantTimeCompare(s.icv(pkt[:ctEnd], seq), pkt[ctEnd:]) != 1 {
			return nil, 0, 0, ErrIntegrity
		}
		k.cbcDec.SetIV(pkt[HeaderLen:hr])
		k.cbcDec.CryptBlocks(pkt[hr:ctEnd], pkt[hr:ctEnd])
	}
	// Trailer (authenticated, so a bad one is the peer's bug, not noise).
	pt := pkt[hr:ctEnd]
	nextHeader = pt[len(pt)-1]
	pad := int(pt[len(pt)-2])
	if pad+2 > len(pt) {
		return nil, 0, 0, ErrMalformed
	}
	n := len(pt) - 2 - pad
	for i := 0; i < pad; i++ {
		if pt[n+i] != byte(i+1) {
			return nil, 0, 0, ErrMalformed
		}
	}
	if !in.win.accept(seq) {
		return nil, 0, 0, ErrReplay
	}
	return pt[:n], nextHeader, seq, nil
}
