// Package radius is the RADIUS client (RFC 2865) the node uses to pass EAP
// through to an authentication server (RFC 3579), as strongSwan's
// eap-radius does: Access-Request with EAP-Message and
// Message-Authenticator, Access-Challenge carrying the server's next EAP
// request and its State, Access-Accept with the EAP method's key in the
// MS-MPPE-Recv-Key and MS-MPPE-Send-Key attributes (RFC 2548).
package radius

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// Codes (RFC 2865 §3).
const (
	CodeAccessRequest   = 1
	CodeAccessAccept    = 2
	CodeAccessReject    = 3
	CodeAccessChallenge = 11
)

// Attribute types used here.
const (
	AttrUserName             = 1
	AttrNASIPAddress         = 4
	AttrNASPort              = 5
	AttrServiceType          = 6
	AttrFramedMTU            = 12
	AttrReplyMessage         = 18
	AttrState                = 24
	AttrVendorSpecific       = 26
	AttrCalledStationID      = 30
	AttrCallingStationID     = 31
	AttrNASIdentifier        = 32
	AttrNASPortType          = 61
	AttrEAPMessage           = 79
	AttrMessageAuthenticator = 80
	AttrNASIPv6Address       = 95
)

// Microsoft vendor attributes (RFC 2548).
const (
	vendorMicrosoft = 311
	msMPPESendKey   = 16
	msMPPERecvKey   = 17
)

const (
	headerLen = 20
	maxLen    = 4096
)

// Attr is one attribute.
type Attr struct {
	Type  byte
	Value []byte
}

// Packet is one RADIUS packet.
type Packet struct {
	Code          byte
	Identifier    byte
	Authenticator [16]byte
	Attrs         []Attr
}

// ParseError is a malformed packet.
type ParseError struct{ Reason string }

func (e *ParseError) Error() string { return "radius: malformed packet: " + e.Reason }

// Parse decodes a packet. It checks the framing only; Verify checks the
// authenticators.
func Parse(b []byte) (*Packet, error) {
	if len(b) < headerLen {
		return nil, &ParseError{fmt.Sprintf("%d bytes", len(b))}
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	if l < headerLen || l > maxLen || l > len(b) {
		return nil, &ParseError{fmt.Sprintf("length field %d for %d bytes", l, len(b))}
	}
	p := &Packet{Code: b[0], Identifier: b[1]}
	copy(p.Authenticator[:], b[4:20])
	rest := b[headerLen:l]
	for len(rest) > 0 {
		if len(rest) < 2 || rest[1] < 2 || int(rest[1]) > len(rest) {
			return nil, &ParseError{"attribute overruns the packet"}
		}
		p.Attrs = append(p.Attrs, Attr{Type: rest[0], Value: append([]byte(nil), rest[2:rest[1]]...)})
		rest = rest[rest[1]:]
	}
	return p, nil
}

// Encode lays the packet out as is (authenticators as they stand).
func (p *Packet) Encode() ([]byte, error) {
	b := make([]byte, headerLen, 256)
	b[0], b[1] = p.Code, p.Identifier
	copy(b[4:20], p.Authenticator[:])
	for _, a := range p.Attrs {
		if len(a.Value) > 253 {
			return nil, fmt.Errorf("radius: attribute %d of %d bytes", a.Type, len(a.Value))
		}
		b = append(b, a.Type, byte(2+len(a.Value)))
		b = append(b, a.Value...)
	}
	if len(b) > maxLen {
		return nil, fmt.Errorf("radius: packet of %d bytes exceeds %d", len(b), maxLen)
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	return b, nil
}

// Get returns the first attribute of type t, or nil.
func (p *Packet) Get(t byte) []byte {
	for _, a := range p.Attrs {
		if a.Type == t {
			return a.Value
		}
	}
	return nil
}

// Add appends an attribute.
func (p *Packet) Add(t byte, v []byte) { p.Attrs = append(p.Attrs, Attr{t, v}) }

// EAPMessage joins the EAP-Message attributes (RFC 3579 §3.1).
func (p *Packet) EAPMessage() []byte {
	var m []byte
	for _, a := range p.Attrs {
		if a.Type == AttrEAPMessage {
			m = append(m, a.Value...)
		}
	}
	return m
}

// AddEAPMessage splits an EAP packet over EAP-Message attributes.
func (p *Packet) AddEAPMessage(m []byte) {
	for len(m) > 0 {
		n := min(len(m), 253)
		p.Add(AttrEAPMessage, append([]byte(nil), m[:n]...))
		m = m[n:]
	}
}

// EncodeRequest lays out an Access-Request with a Message-Authenticator
// (RFC 3579 §3.2) keyed by secret; p.Authenticator must hold the random
// Request Authenticator.
func (p *Packet) EncodeRequest(secret []byte) ([]byte, error) {
	q := *p
	q.Attrs = append(append([]Attr(nil), p.Attrs...), Attr{AttrMessageAuthenticator, make([]byte, 16)})
	b, err := q.Encode()
	if err != nil {
		return nil, err
	}
	mac := hmac.New(md5.New, secret)
	mac.Write(b)
	copy(b[len(b)-16:], mac.Sum(nil))
	return b, nil
}

// Errors of Verify.
var (
	ErrResponseAuthenticator = errors.New("radius: response authenticator does not verify (wrong shared secret?)")
	ErrMessageAuthenticator  = errors.New("radius: Message-Authenticator missing or wrong")
)

// VerifyResponse checks a response b (raw bytes) to the request whose
// Request Authenticator is reqAuth: its Response Authenticator (RFC 2865
// §3) and, as RFC 3579 §3.2 demands for EAP, its Message-Authenticator.
func VerifyResponse(b []byte, reqAuth [16]byte, secret []byte) error {
	if len(b) < headerLen {
		return &ParseError{"short"}
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	if l < headerLen || l > len(b) {
		return &ParseError{"length"}
	}
	b = b[:l]
	h := md5.New()
	h.Write(b[:4])
	h.Write(reqAuth[:])
	h.Write(b[headerLen:])
	h.Write(secret)
	if subtle.ConstantTimeCompare(h.Sum(nil), b[4:20]) != 1 {
		return ErrResponseAuthenticator
	}
	// Message-Authenticator: HMAC-MD5 over the packet with the Request
	// Authenticator in place and the attribute's value zeroed.
	off := -1
	for i := headerLen; i+2 <= l; {
		al := int(b[i+1])
		if al < 2 || i+al > l {
			return &ParseError{"attribute overruns the packet"}
		}
		if b[i] == AttrMessageAuthenticator && al == 18 {
			off = i + 2
		}
		i += al
	}
	if off < 0 {
		return ErrMessageAuthenticator
	}
	c := append([]byte(nil), b...)
	copy(c[4:20], reqAuth[:])
	clear(c[off : off+16])
	mac := hmac.New(md5.New, secret)
	mac.Write(c)
	if !hmac.Equal(mac.Sum(nil), b[off:off+16]) {
		return ErrMessageAuthenticator
	}
	return nil
}

// MSK is the EAP Master Session Key of an Access-Accept: MS-MPPE-Recv-Key
// followed by MS-MPPE-Send-Key (RFC 3748 / RFC 2548), decrypted with the
// shared secret and the Request Authenticator; nil if the server sent
// neither.
func (p *Packet) MSK(secret []byte, reqAuth [16]byte) ([]byte, error) {
	var recv, send []byte
	for _, a := range p.Attrs {
		if a.Type != AttrVendorSpecific || len(a.Value) < 6 || binary.BigEndian.Uint32(a.Value[:4]) != vendorMicrosoft {
			continue
		}
		sub := a.Value[4:]
		for len(sub) >= 2 {
			vt, vl := sub[0], int(sub[1])
			if vl < 2 || vl > len(sub) {
				return nil, &ParseError{"vendor attribute overruns"}
			}
			var err error
			switch vt {
			case msMPPERecvKey:
				recv, err = decryptMPPE(sub[2:vl], secret, reqAuth)
			case msMPPESendKey:
				send, err = decryptMPPE(sub[2:vl], secret, reqAuth)
			}
			if err != nil {
				return nil, err
			}
			sub = sub[vl:]
		}
	}
	if recv == nil && send == nil {
		return nil, nil
	}
	if recv == nil || send == nil {
		return nil, errors.New("radius: only one of MS-MPPE-Recv-Key and MS-MPPE-Send-Key")
	}
	return append(recv, send...), nil
}

// decryptMPPE undoes RFC 2548 §2.4.2: salt(2) || ciphertext, where
// plaintext = key length(1) || key || padding, in 16-byte blocks
// b(1) = MD5(S + R + salt), b(i) = MD5(S + c(i-1)).
func decryptMPPE(v, secret []byte, reqAuth [16]byte) ([]byte, error) {
	if len(v) < 2+16 || (len(v)-2)%16 != 0 || v[0]&0x80 == 0 {
		return nil, &ParseError{"MS-MPPE key attribute"}
	}
	salt, c := v[:2], v[2:]
	p := make([]byte, len(c))
	prev := append(append([]byte(nil), reqAuth[:]...), salt...)
	for i := 0; i < len(c); i += 16 {
		h := md5.New()
		h.Write(secret)
		h.Write(prev)
		b := h.Sum(nil)
		for j := range 16 {
			p[i+j] = c[i+j] ^ b[j]
		}
		prev = c[i : i+16]
	}
	if int(p[0]) > len(p)-1 {
		return nil, &ParseError{"MS-MPPE key length"}
	}
	return p[1 : 1+int(p[0])], nil
}

// encryptMPPE is decryptMPPE's inverse (servers and tests).
func encryptMPPE(key, secret []byte, reqAuth [16]byte, salt [2]byte) []byte {
	p := append([]byte{byte(len(key))}, key...)
	for len(p)%16 != 0 {
		p = append(p, 0)
	}
	salt[0] |= 0x80
	out := append([]byte(nil), salt[:]...)
	prev := append(append([]byte(nil), reqAuth[:]...), salt[:]...)
	for i := 0; i < len(p); i += 16 {
		h := md5.New()
		h.Write(secret)
		h.Write(prev)
		b := h.Sum(nil)
		blk := make([]byte, 16)
		for j := range 16 {
			blk[j] = p[i+j] ^ b[j]
		}
		out = append(out, blk...)
		prev = blk
	}
	return out
}
