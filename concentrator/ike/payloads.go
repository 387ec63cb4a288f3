package ike

import (
	"net/netip"
	"strconv"

	"golang.org/x/crypto/cryptobyte"
)

// Payload is one IKEv2 payload. Each type marshals only its body; the
// generic payload header (next payload, critical bit, length) is written by
// the message encoder.
type Payload interface {
	Type() PayloadType
	appendBody(b []byte) []byte
}

// ---- SA (RFC 7296 §3.3) ----

// Attribute types.
const AttrKeyLength uint16 = 14

// Transform is one transform substructure.
type Transform struct {
	Type   uint8
	ID     uint16
	KeyLen uint16 // key length attribute in bits; 0 when absent
	// Unknown attributes make the transform unusable (RFC 7296 §3.3.6);
	// the parser records that instead of failing the message.
	UnknownAttrs bool
}

// Proposal is one proposal substructure.
type Proposal struct {
	Num        uint8
	Protocol   ProtocolID
	SPI        []byte
	Transforms []Transform
}

// SA is the Security Association payload.
type SA struct{ Proposals []Proposal }

func (*SA) Type() PayloadType { return PayloadSA }

func (p *SA) appendBody(b []byte) []byte {
	for i, pr := range p.Proposals {
		last := uint8(2)
		if i == len(p.Proposals)-1 {
			last = 0
		}
		start := len(b)
		b = append(b, last, 0, 0, 0, pr.Num, uint8(pr.Protocol), uint8(len(pr.SPI)), uint8(len(pr.Transforms)))
		b = append(b, pr.SPI...)
		for j, t := range pr.Transforms {
			tl := uint8(3)
			if j == len(pr.Transforms)-1 {
				tl = 0
			}
			n := 8
			if t.KeyLen != 0 {
				n += 4
			}
			b = append(b, tl, 0, byte(n>>8), byte(n), t.Type, 0, byte(t.ID>>8), byte(t.ID))
			if t.KeyLen != 0 {
				b = append(b, 0x80|byte(AttrKeyLength>>8), byte(AttrKeyLength), byte(t.KeyLen>>8), byte(t.KeyLen))
			}
		}
		putLen16(b[start+2:], len(b)-start)
	}
	return b
}

func parseSA(body cryptobyte.String) (*SA, error) {
	sa := &SA{}
	fail := func(r string) (*SA, error) { return nil, &ParseError{Payload: PayloadSA, Reason: r} }
	last := uint8(2)
	for !body.Empty() {
		if last == 0 {
			return fail("data after the last proposal")
		}
		var plen uint16
		var reserved uint8
		if !body.ReadUint8(&last) || !body.ReadUint8(&reserved) || !body.ReadUint16(&plen) {
			return fail("truncated proposal header")
		}
		if last != 0 && last != 2 {
			return fail("bad proposal last-substructure value")
		}
		var pb cryptobyte.String
		if plen < 8 || !body.ReadBytes((*[]byte)(&pb), int(plen)-4) {
			return fail("bad proposal length")
		}
		var pr Proposal
		var proto, spiSize, nt uint8
		if !pb.ReadUint8(&pr.Num) || !pb.ReadUint8(&proto) || !pb.ReadUint8(&spiSize) || !pb.ReadUint8(&nt) {
			return fail("truncated proposal")
		}
		pr.Protocol = ProtocolID(proto)
		var spi []byte
		if !pb.ReadBytes(&spi, int(spiSize)) {
			return fail("truncated proposal SPI")
		}
		if spiSize > 0 {
			pr.SPI = append([]byte(nil), spi...)
		}
		if int(nt) > maxTransformsPerProposal {
			return fail("too many transforms")
		}
		pr.Transforms = make([]Transform, 0, nt)
		tlast := uint8(3)
		for i := 0; i < int(nt); i++ {
			if tlast == 0 {
				return fail("transform count exceeds the last transform")
			}
			var tlen uint16
			var tb cryptobyte.String
			var t Transform
			var r1, r2 uint8
			if !pb.ReadUint8(&tlast) || !pb.ReadUint8(&r1) || !pb.ReadUint16(&tlen) ||
				tlen < 8 || !pb.ReadBytes((*[]byte)(&tb), int(tlen)-4) {
				return fail("truncated transform")
			}
			if tlast != 0 && tlast != 3 {
				return fail("bad transform last-substructure value")
			}
			if !tb.ReadUint8(&t.Type) || !tb.ReadUint8(&r2) || !tb.ReadUint16(&t.ID) {
				return fail("truncated transform")
			}
			for !tb.Empty() {
				var at uint16
				if !tb.ReadUint16(&at) {
					return fail("truncated transform attribute")
				}
				if at&0x8000 != 0 {
					var v uint16
					if !tb.ReadUint16(&v) {
						return fail("truncated transform attribute")
					}
					if at&0x7fff == AttrKeyLength {
						t.KeyLen = v
					} else {
						t.UnknownAttrs = true
					}
				} else {
					var v []byte
					if !tb.ReadUint16LengthPrefixed((*cryptobyte.String)(&v)) {
						return fail("truncated transform attribute")
					}
					t.UnknownAttrs = true
				}
			}
			pr.Transforms = append(pr.Transforms, t)
		}
		if tlast != 0 {
			return fail("last transform not marked last")
		}
		if !pb.Empty() {
			return fail("trailing bytes in proposal")
		}
		if len(sa.Proposals) >= maxProposals {
			return fail("too many proposals")
		}
		sa.Proposals = append(sa.Proposals, pr)
	}
	if last != 0 {
		return fail("last proposal not marked last")
	}
	return sa, nil
}

// ---- KE (§3.4) ----

// KE is the Key Exchange payload.
type KE struct {
	Group uint16
	Data  []byte
}

func (*KE) Type() PayloadType { return PayloadKE }
func (p *KE) appendBody(b []byte) []byte {
	b = append(b, byte(p.Group>>8), byte(p.Group), 0, 0)
	return append(b, p.Data...)
}

func parseKE(body cryptobyte.String) (*KE, error) {
	p := &KE{}
	var r uint16
	if !body.ReadUint16(&p.Group) || !body.ReadUint16(&r) || body.Empty() {
		return nil, &ParseError{Payload: PayloadKE, Reason: "truncated"}
	}
	p.Data = body
	return p, nil
}

// ---- IDi / IDr (§3.5) ----

// ID is an Identification payload. Body keeps the bytes AUTH signs (IDx').
type ID struct {
	Responder bool // IDr rather than IDi
	IDType    uint8
	Data      []byte
}

func (p *ID) Type() PayloadType {
	if p.Responder {
		return PayloadIDr
	}
	return PayloadIDi
}
func (p *ID) appendBody(b []byte) []byte {
	b = append(b, p.IDType, 0, 0, 0)
	return append(b, p.Data...)
}

// Body returns IDx' of RFC 7296 §2.15: the payload without its generic header.
func (p *ID) Body() []byte { return p.appendBody(make([]byte, 0, 4+len(p.Data))) }

func parseID(t PayloadType, body cryptobyte.String) (*ID, error) {
	p := &ID{Responder: t == PayloadIDr}
	var r []byte
	if !body.ReadUint8(&p.IDType) || !body.ReadBytes(&r, 3) || body.Empty() {
		return nil, &ParseError{Payload: t, Reason: "truncated"}
	}
	p.Data = body
	return p, nil
}

// ---- CERT / CERTREQ (§3.6, §3.7) ----

// Cert is a Certificate payload.
type Cert struct {
	Encoding uint8
	Data     []byte
}

func (*Cert) Type() PayloadType { return PayloadCERT }
func (p *Cert) appendBody(b []byte) []byte {
	return append(append(b, p.Encoding), p.Data...)
}

// CertReq is a Certificate Request payload; for X.509 Data is a list of
// SHA-1 hashes of trusted CAs' public keys.
type CertReq struct {
	Encoding uint8
	Data     []byte
}

func (*CertReq) Type() PayloadType { return PayloadCERTREQ }
func (p *CertReq) appendBody(b []byte) []byte {
	return append(append(b, p.Encoding), p.Data...)
}

func parseCert(t PayloadType, body cryptobyte.String) (Payload, error) {
	var enc uint8
	if !body.ReadUint8(&enc) {
		return nil, &ParseError{Payload: t, Reason: "truncated"}
	}
	if t == PayloadCERT {
		if body.Empty() {
			return nil, &ParseError{Payload: t, Reason: "empty certificate"}
		}
		return &Cert{Encoding: enc, Data: body}, nil
	}
	return &CertReq{Encoding: enc, Data: body}, nil
}

// ---- AUTH (§3.8) ----

// Auth is the Authentication payload.
type Auth struct {
	Method uint8
	Data   []byte
}

func (*Auth) Type() PayloadType { return PayloadAUTH }
func (p *Auth) appendBody(b []byte) []byte {
	b = append(b, p.Method, 0, 0, 0)
	return append(b, p.Data...)
}

func parseAuth(body cryptobyte.String) (*Auth, error) {
	p := &Auth{}
	var r []byte
	if !body.ReadUint8(&p.Method) || !body.ReadBytes(&r, 3) || body.Empty() {
		return nil, &ParseError{Payload: PayloadAUTH, Reason: "truncated"}
	}
	p.Data = body
	return p, nil
}

// ---- Nonce (§3.9) ----

// Nonce is the Nonce payload (16 to 256 octets).
type Nonce struct{ Data []byte }

func (*Nonce) Type() PayloadType            { return PayloadNonce }
func (p *Nonce) appendBody(b []byte) []byte { return append(b, p.Data...) }

func parseNonce(body cryptobyte.String) (*Nonce, error) {
	if len(body) < 16 || len(body) > 256 {
		return nil, &ParseError{Payload: PayloadNonce, Reason: "nonce must be 16 to 256 octets"}
	}
	return &Nonce{Data: body}, nil
}

// ---- Notify (§3.10) ----

// Notify is a Notify payload.
type Notify struct {
	Protocol   ProtocolID
	SPI        []byte
	NotifyType NotifyType
	Data       []byte
}

func (*Notify) Type() PayloadType { return PayloadNotify }
func (p *Notify) appendBody(b []byte) []byte {
	b = append(b, uint8(p.Protocol), uint8(len(p.SPI)), byte(p.NotifyType>>8), byte(p.NotifyType))
	b = append(b, p.SPI...)
	return append(b, p.Data...)
}

func parseNotify(body cryptobyte.String) (*Notify, error) {
	p := &Notify{}
	var proto, spiSize uint8
	var nt uint16
	if !body.ReadUint8(&proto) || !body.ReadUint8(&spiSize) || !body.ReadUint16(&nt) ||
		!body.ReadBytes(&p.SPI, int(spiSize)) {
		return nil, &ParseError{Payload: PayloadNotify, Reason: "truncated"}
	}
	if spiSize == 0 {
		p.SPI = nil
	}
	p.Protocol, p.NotifyType, p.Data = ProtocolID(proto), NotifyType(nt), body
	if len(p.Data) == 0 {
		p.Data = nil
	}
	return p, nil
}

// ---- Delete (§3.11) ----

// Delete is a Delete payload. For IKE the SPI list is empty.
type Delete struct {
	Protocol ProtocolID
	SPISize  uint8
	SPIs     [][]byte
}

func (*Delete) Type() PayloadType { return PayloadDelete }
func (p *Delete) appendBody(b []byte) []byte {
	n := len(p.SPIs)
	b = append(b, uint8(p.Protocol), p.SPISize, byte(n>>8), byte(n))
	for _, s := range p.SPIs {
		b = append(b, s...)
	}
	return b
}

func parseDelete(body cryptobyte.String) (*Delete, error) {
	p := &Delete{}
	var proto uint8
	var n uint16
	if !body.ReadUint8(&proto) || !body.ReadUint8(&p.SPISize) || !body.ReadUint16(&n) {
		return nil, &ParseError{Payload: PayloadDelete, Reason: "truncated"}
	}
	p.Protocol = ProtocolID(proto)
	if int(p.SPISize)*int(n) != len(body) {
		return nil, &ParseError{Payload: PayloadDelete, Reason: "SPI count does not match the payload length"}
	}
	if p.SPISize == 0 && n != 0 {
		return nil, &ParseError{Payload: PayloadDelete, Reason: "SPIs of size 0"}
	}
	for i := 0; i < int(n); i++ {
		var s []byte
		body.ReadBytes(&s, int(p.SPISize))
		p.SPIs = append(p.SPIs, s)
	}
	return p, nil
}

// ---- Vendor ID (§3.12) ----

// Vendor is a Vendor ID payload.
type Vendor struct{ Data []byte }

func (*Vendor) Type() PayloadType            { return PayloadVendor }
func (p *Vendor) appendBody(b []byte) []byte { return append(b, p.Data...) }

// ---- TSi / TSr (§3.13) ----

// TrafficSelector is one IPv4 or IPv6 address-range selector.
type TrafficSelector struct {
	IPProto            uint8 // 0 = any
	StartPort, EndPort uint16
	Start, End         netip.Addr
}

// TS is a Traffic Selector payload.
type TS struct {
	Responder bool // TSr rather than TSi
	Selectors []TrafficSelector
}

func (p *TS) Type() PayloadType {
	if p.Responder {
		return PayloadTSr
	}
	return PayloadTSi
}
func (p *TS) appendBody(b []byte) []byte {
	b = append(b, uint8(len(p.Selectors)), 0, 0, 0)
	for _, s := range p.Selectors {
		typ, l := TSIPv4AddrRange, 16
		if s.Start.Is6() {
			typ, l = TSIPv6AddrRange, 40
		}
		b = append(b, typ, s.IPProto, byte(l>>8), byte(l),
			byte(s.StartPort>>8), byte(s.StartPort), byte(s.EndPort>>8), byte(s.EndPort))
		b = append(b, s.Start.AsSlice()...)
		b = append(b, s.End.AsSlice()...)
	}
	return b
}

func parseTS(t PayloadType, body cryptobyte.String) (*TS, error) {
	p := &TS{Responder: t == PayloadTSr}
	fail := func(r string) (*TS, error) { return nil, &ParseError{Payload: t, Reason: r} }
	var n uint8
	var r []byte
	if !body.ReadUint8(&n) || !body.ReadBytes(&r, 3) {
		return fail("truncated")
	}
	if n == 0 {
		return fail("no traffic selectors")
	}
	for i := 0; i < int(n); i++ {
		var s TrafficSelector
		var typ uint8
		var l uint16
		if !body.ReadUint8(&typ) || !body.ReadUint8(&s.IPProto) || !body.ReadUint16(&l) ||
			!body.ReadUint16(&s.StartPort) || !body.ReadUint16(&s.EndPort) {
			return fail("truncated selector")
		}
		var alen int
		switch typ {
		case TSIPv4AddrRange:
			alen = 4
		case TSIPv6AddrRange:
			alen = 16
		default:
			return fail("unsupported selector type " + strconv.Itoa(int(typ)))
		}
		if int(l) != 8+2*alen {
			return fail("bad selector length")
		}
		var a, e []byte
		if !body.ReadBytes(&a, alen) || !body.ReadBytes(&e, alen) {
			return fail("truncated selector")
		}
		s.Start, _ = netip.AddrFromSlice(a)
		s.End, _ = netip.AddrFromSlice(e)
		p.Selectors = append(p.Selectors, s)
	}
	if !body.Empty() {
		return fail("trailing bytes")
	}
	return p, nil
}

// ---- CP (§3.15) ----

// CPAttr is one configuration attribute.
type CPAttr struct {
	Type  uint16
	Value []byte
}

// CP is a Configuration payload.
type CP struct {
	CfgType uint8
	Attrs   []CPAttr
}

func (*CP) Type() PayloadType { return PayloadCP }
func (p *CP) appendBody(b []byte) []byte {
	b = append(b, p.CfgType, 0, 0, 0)
	for _, a := range p.Attrs {
		t := a.Type & 0x7fff
		b = append(b, byte(t>>8), byte(t), byte(len(a.Value)>>8), byte(len(a.Value)))
		b = append(b, a.Value...)
	}
	return b
}

func parseCP(body cryptobyte.String) (*CP, error) {
	p := &CP{}
	var r []byte
	if !body.ReadUint8(&p.CfgType) || !body.ReadBytes(&r, 3) {
		return nil, &ParseError{Payload: PayloadCP, Reason: "truncated"}
	}
	for !body.Empty() {
		var a CPAttr
		var v cryptobyte.String
		if !body.ReadUint16(&a.Type) || !body.ReadUint16LengthPrefixed(&v) {
			return nil, &ParseError{Payload: PayloadCP, Reason: "truncated attribute"}
		}
		a.Type &= 0x7fff
		a.Value = v
		if len(p.Attrs) >= maxCPAttrs {
			return nil, &ParseError{Payload: PayloadCP, Reason: "too many attributes"}
		}
		p.Attrs = append(p.Attrs, a)
	}
	return p, nil
}

// ---- EAP (§3.16) ----

// EAP carries one EAP message (RFC 3748) whose length field must match.
type EAP struct{ Message []byte }

func (*EAP) Type() PayloadType            { return PayloadEAP }
func (p *EAP) appendBody(b []byte) []byte { return append(b, p.Message...) }

func parseEAP(body cryptobyte.String) (*EAP, error) {
	if len(body) < 4 {
		return nil, &ParseError{Payload: PayloadEAP, Reason: "truncated"}
	}
	if int(body[2])<<8|int(body[3]) != len(body) {
		return nil, &ParseError{Payload: PayloadEAP, Reason: "EAP length does not match the payload"}
	}
	return &EAP{Message: body}, nil
}

// ---- SK / SKF (§3.14, RFC 7383) ----

// Encrypted is an SK payload as received: Body is IV||ciphertext||ICV and
// Inner the first inner payload type. After Message.Decrypt the inner
// payloads are in Message.Payloads.
type Encrypted struct {
	Inner PayloadType
	Body  []byte
}

func (*Encrypted) Type() PayloadType            { return PayloadSK }
func (p *Encrypted) appendBody(b []byte) []byte { return append(b, p.Body...) }

// Fragment is an SKF payload (RFC 7383 §2.5). Inner is non-zero only in the
// first fragment.
type Fragment struct {
	Inner  PayloadType
	Number uint16
	Total  uint16
	Body   []byte
}

func (*Fragment) Type() PayloadType { return PayloadSKF }
func (p *Fragment) appendBody(b []byte) []byte {
	b = append(b, byte(p.Number>>8), byte(p.Number), byte(p.Total>>8), byte(p.Total))
	return append(b, p.Body...)
}

func parseFragment(inner PayloadType, body cryptobyte.String) (*Fragment, error) {
	p := &Fragment{Inner: inner}
	if !body.ReadUint16(&p.Number) || !body.ReadUint16(&p.Total) {
		return nil, &ParseError{Payload: PayloadSKF, Reason: "truncated"}
	}
	if p.Number == 0 || p.Total == 0 || p.Number > p.Total {
		return nil, &ParseError{Payload: PayloadSKF, Reason: "bad fragment number"}
	}
	if p.Number != 1 && inner != PayloadNone {
		return nil, &ParseError{Payload: PayloadSKF, Reason: "next payload set in a non-first fragment"}
	}
	p.Body = body
	return p, nil
}

// Unknown is a non-critical payload this implementation does not know; it
// is kept (and ignored) so that the chain can still be walked.
type Unknown struct {
	PType PayloadType
	Data  []byte
}

func (p *Unknown) Type() PayloadType          { return p.PType }
func (p *Unknown) appendBody(b []byte) []byte { return append(b, p.Data...) }

func putLen16(b []byte, n int) { b[0], b[1] = byte(n>>8), byte(n) }
