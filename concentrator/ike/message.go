package ike

import (
	"encoding/binary"
	"strconv"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
	"golang.org/x/crypto/cryptobyte"
)

// Message is an IKEv2 message: header and payload chain. For a message
// decoded from the wire with an SK or SKF payload, Payloads holds the
// unencrypted payloads until Decrypt adds the inner ones.
type Message struct {
	SPIi, SPIr uint64
	Exchange   ExchangeType
	Flags      uint8
	MessageID  uint32
	Payloads   []Payload

	raw   []byte // the message as received (Decode keeps it: AUTH signs IKE_SA_INIT)
	skOff int    // offset of the SK/SKF body in raw; 0 when there is none
	sk    *Encrypted
	skf   *Fragment
	// The decrypted inner payload chain (reassembled, if fragmented) and
	// its first payload's type: IKE_INTERMEDIATE messages are authenticated
	// in that form (RFC 9242 §3.3.2).
	inner      []byte
	innerFirst PayloadType
}

// IsResponse reports whether the Response flag is set.
func (m *Message) IsResponse() bool { return m.Flags&FlagResponse != 0 }

// FromInitiator reports whether the original initiator sent the message.
func (m *Message) FromInitiator() bool { return m.Flags&FlagInitiator != 0 }

// Raw returns the bytes the message was decoded from.
func (m *Message) Raw() []byte { return m.raw }

// Encrypted returns the SK payload of a decoded message, or nil.
func (m *Message) Encrypted() *Encrypted { return m.sk }

// Fragment returns the SKF payload of a decoded message, or nil.
func (m *Message) Fragment() *Fragment { return m.skf }

// Header is the fixed part of an IKE message, decoded without the payloads:
// enough to route a packet to its SA.
type Header struct {
	SPIi, SPIr  uint64
	NextPayload PayloadType
	Version     uint8
	Exchange    ExchangeType
	Flags       uint8
	MessageID   uint32
	Length      uint32
}

// DecodeHeader parses the 28-byte IKE header of b and checks the length
// field against len(b).
func DecodeHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < headerLen {
		return h, errShortHeader
	}
	h.SPIi = binary.BigEndian.Uint64(b[0:])
	h.SPIr = binary.BigEndian.Uint64(b[8:])
	h.NextPayload = PayloadType(b[16])
	h.Version = b[17]
	h.Exchange = ExchangeType(b[18])
	h.Flags = b[19]
	h.MessageID = binary.BigEndian.Uint32(b[20:])
	h.Length = binary.BigEndian.Uint32(b[24:])
	if h.Version>>4 != 2 {
		if h.Version>>4 > 2 {
			return h, &Error{Notify: INVALID_MAJOR_VERSION, Reason: "major version " + strconv.Itoa(int(h.Version>>4))}
		}
		return h, ErrNotIKEv2
	}
	if int(h.Length) != len(b) {
		return h, errLengthField
	}
	if h.SPIi == 0 {
		return h, errZeroSPIi
	}
	return h, nil
}

// DecodeHeader's errors for malformed headers, made once (a flood of
// them costs no allocation); never modified.
var (
	errShortHeader = &ParseError{Reason: "shorter than an IKE header"}
	errLengthField = &ParseError{Offset: 24, Reason: "length field does not match the datagram"}
	errZeroSPIi    = &ParseError{Reason: "zero initiator SPI"}
)

// Decode parses an IKE message. The returned message refers to b; callers
// must not reuse b while the message is in use. Encrypted payloads are kept
// for Decrypt.
func Decode(b []byte) (*Message, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return nil, err
	}
	m := &Message{SPIi: h.SPIi, SPIr: h.SPIr, Exchange: h.Exchange, Flags: h.Flags, MessageID: h.MessageID, raw: b}
	payloads, skOff, err := parseChain(h.NextPayload, b, headerLen, true)
	if err != nil {
		return nil, err
	}
	for _, p := range payloads {
		switch p := p.(type) {
		case *Encrypted:
			m.sk = p
		case *Fragment:
			m.skf = p
		default:
			m.Payloads = append(m.Payloads, p)
		}
	}
	m.skOff = skOff
	return m, nil
}

// parseChain walks a payload chain starting at b[off:]. In the outer chain
// (outer=true) an SK or SKF payload must be last; its body offset is returned.
func parseChain(next PayloadType, b []byte, off int, outer bool) ([]Payload, int, error) {
	var out []Payload
	skOff := 0
	for next != PayloadNone {
		if len(out) >= maxPayloads {
			return nil, 0, &ParseError{Payload: next, Offset: off, Reason: "too many payloads"}
		}
		if len(b)-off < genericHeaderLen {
			return nil, 0, &ParseError{Payload: next, Offset: off, Reason: "truncated payload header"}
		}
		nxt := PayloadType(b[off])
		critical := b[off+1]&0x80 != 0
		plen := int(b[off+2])<<8 | int(b[off+3])
		if plen < genericHeaderLen || off+plen > len(b) {
			return nil, 0, &ParseError{Payload: next, Offset: off, Reason: "bad payload length"}
		}
		body := cryptobyte.String(b[off+genericHeaderLen : off+plen])
		var p Payload
		var err error
		switch next {
		case PayloadSA:
			p, err = parseSA(body)
		case PayloadKE:
			p, err = parseKE(body)
		case PayloadIDi, PayloadIDr:
			p, err = parseID(next, body)
		case PayloadCERT, PayloadCERTREQ:
			p, err = parseCert(next, body)
		case PayloadAUTH:
			p, err = parseAuth(body)
		case PayloadNonce:
			p, err = parseNonce(body)
		case PayloadNotify:
			p, err = parseNotify(body)
		case PayloadDelete:
			p, err = parseDelete(body)
		case PayloadVendor:
			p = &Vendor{Data: body}
		case PayloadTSi, PayloadTSr:
			p, err = parseTS(next, body)
		case PayloadCP:
			p, err = parseCP(body)
		case PayloadEAP:
			p, err = parseEAP(body)
		case PayloadSK, PayloadSKF:
			if !outer {
				return nil, 0, &ParseError{Payload: next, Offset: off, Reason: "encrypted payload inside an encrypted payload"}
			}
			if off+plen != len(b) {
				return nil, 0, &ParseError{Payload: next, Offset: off, Reason: "encrypted payload is not the last payload"}
			}
			if next == PayloadSK {
				p = &Encrypted{Inner: nxt, Body: body}
				skOff = off + genericHeaderLen
			} else {
				p, err = parseFragment(nxt, body)
				skOff = off + genericHeaderLen + 4
			}
			nxt = PayloadNone
		default:
			if critical {
				return nil, 0, &UnsupportedCriticalError{Type: next}
			}
			p = &Unknown{PType: next, Data: body}
		}
		if err != nil {
			if pe, ok := err.(*ParseError); ok {
				pe.Offset = off
			}
			return nil, 0, err
		}
		out = append(out, p)
		off += plen
		next = nxt
	}
	if off != len(b) {
		return nil, 0, &ParseError{Offset: off, Reason: "trailing bytes after the last payload"}
	}
	return out, skOff, nil
}

// Decrypt verifies and decrypts the SK payload of a decoded message with the
// peer's key and appends the inner payloads to m.Payloads.
func (m *Message) Decrypt(c *suite.SKCipher) error {
	if m.sk == nil {
		return &ParseError{Payload: PayloadSK, Reason: "message has no SK payload"}
	}
	pt, err := c.Open(nil, m.raw[:m.skOff], m.raw[m.skOff:])
	if err != nil {
		return ErrIntegrity
	}
	inner, _, err := parseChain(m.sk.Inner, pt, 0, false)
	if err != nil {
		return err
	}
	m.Payloads = append(m.Payloads, inner...)
	m.inner, m.innerFirst = pt, m.sk.Inner
	return nil
}

// DecryptFragment verifies and decrypts one SKF payload and returns its
// plaintext chunk (not yet parseable on its own).
func (m *Message) DecryptFragment(c *suite.SKCipher) ([]byte, error) {
	if m.skf == nil {
		return nil, &ParseError{Payload: PayloadSKF, Reason: "message has no SKF payload"}
	}
	pt, err := c.Open(nil, m.raw[:m.skOff], m.raw[m.skOff:])
	if err != nil {
		return nil, ErrIntegrity
	}
	return pt, nil
}

// ParseInner parses a reassembled plaintext payload chain into m.Payloads.
func (m *Message) ParseInner(first PayloadType, plaintext []byte) error {
	inner, _, err := parseChain(first, plaintext, 0, false)
	if err != nil {
		return err
	}
	m.Payloads = append(m.Payloads, inner...)
	m.inner, m.innerFirst = plaintext, first
	return nil
}

func (m *Message) appendHeader(b []byte, next PayloadType) []byte {
	b = binary.BigEndian.AppendUint64(b, m.SPIi)
	b = binary.BigEndian.AppendUint64(b, m.SPIr)
	b = append(b, uint8(next), Version, uint8(m.Exchange), m.Flags)
	b = binary.BigEndian.AppendUint32(b, m.MessageID)
	return append(b, 0, 0, 0, 0) // length, patched by finish
}

func finish(b []byte) []byte {
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)))
	return b
}

// appendChain encodes ps as a payload chain.
func appendChain(b []byte, ps []Payload) []byte {
	for i, p := range ps {
		next := PayloadNone
		if i+1 < len(ps) {
			next = ps[i+1].Type()
		}
		start := len(b)
		b = append(b, uint8(next), 0, 0, 0)
		b = p.appendBody(b)
		putLen16(b[start+2:], len(b)-start)
	}
	return b
}

func firstType(ps []Payload) PayloadType {
	if len(ps) == 0 {
		return PayloadNone
	}
	return ps[0].Type()
}

// Encode returns the unencrypted wire form of m.
func (m *Message) Encode() []byte {
	b := m.appendHeader(make([]byte, 0, 512), firstType(m.Payloads))
	return finish(appendChain(b, m.Payloads))
}

// EncodeEncrypted returns the wire form of m with all its payloads inside
// one SK payload sealed with c. iv must be c's IV length.
func (m *Message) EncodeEncrypted(c *suite.SKCipher, iv []byte) []byte {
	pt := appendChain(make([]byte, 0, 512), m.Payloads)
	b := m.appendHeader(make([]byte, 0, headerLen+genericHeaderLen+c.Cipher().SealedLen(len(pt))), PayloadSK)
	b = append(b, uint8(firstType(m.Payloads)), 0, 0, 0)
	putLen16(b[headerLen+2:], genericHeaderLen+c.Cipher().SealedLen(len(pt)))
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)+c.Cipher().SealedLen(len(pt))))
	return c.Seal(b, iv, b, pt)
}

// EncodeFragments returns m as RFC 7383 SKF fragments, each at most
// maxSize bytes (the IKE message, without UDP/IP headers or the non-ESP
// marker). ivs supplies one IV per fragment. It returns nil if maxSize is
// too small to carry any data.
func (m *Message) EncodeFragments(c *suite.SKCipher, maxSize int, iv func() []byte) [][]byte {
	pt := appendChain(make([]byte, 0, 1024), m.Payloads)
	over := headerLen + genericHeaderLen + 4 + c.Cipher().SealedLen(0)
	room := maxSize - over
	// SealedLen may round to a block; find the largest chunk that fits.
	for room > 0 && over-c.Cipher().SealedLen(0)+c.Cipher().SealedLen(room) > maxSize {
		room--
	}
	if room <= 0 {
		return nil
	}
	total := (len(pt) + room - 1) / room
	if total == 0 {
		total = 1
	}
	if total > MaxFragments {
		return nil
	}
	out := make([][]byte, 0, total)
	for i := 0; i < total; i++ {
		chunk := pt[i*room : min((i+1)*room, len(pt))]
		next := PayloadNone
		if i == 0 {
			next = firstType(m.Payloads)
		}
		sl := c.Cipher().SealedLen(len(chunk))
		b := m.appendHeader(make([]byte, 0, headerLen+genericHeaderLen+4+sl), PayloadSKF)
		b = append(b, uint8(next), 0, 0, 0, byte((i+1)>>8), byte(i+1), byte(total>>8), byte(total))
		putLen16(b[headerLen+2:], genericHeaderLen+4+sl)
		binary.BigEndian.PutUint32(b[24:], uint32(len(b)+sl))
		out = append(out, c.Seal(b, iv(), b, chunk))
	}
	return out
}
