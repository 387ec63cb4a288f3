package ike

// RFC 5685 redirect: an initiator that announces REDIRECT_SUPPORTED in its
// IKE_SA_INIT request may be answered with N(REDIRECT) naming another
// gateway instead of an IKE SA; it then starts over there. Stateless and
// pure: the node decides when to redirect and where to (anycast.go, the
// socket loop); nothing is kept.

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
)

// Gateway identity types of REDIRECT (RFC 5685 §10).
const (
	GWIdentIPv4 = 1
	GWIdentIPv6 = 2
	GWIdentFQDN = 3
)

// Redirect is the data of a REDIRECT notify.
type Redirect struct {
	Addr  netip.Addr // the new gateway (IPv4 or IPv6 types)
	FQDN  string     // the new gateway (FQDN type)
	Nonce []byte     // Ni of the request being redirected (IKE_SA_INIT only)
}

// EncodeRedirect is the notification data for r (an address, or an FQDN
// when Addr is invalid).
func EncodeRedirect(r Redirect) ([]byte, error) {
	var b []byte
	switch {
	case r.Addr.Is4() || r.Addr.Is4In6():
		a := r.Addr.Unmap().As4()
		b = append([]byte{GWIdentIPv4, 4}, a[:]...)
	case r.Addr.Is6():
		a := r.Addr.As16()
		b = append([]byte{GWIdentIPv6, 16}, a[:]...)
	case r.FQDN != "" && len(r.FQDN) <= 255:
		b = append([]byte{GWIdentFQDN, byte(len(r.FQDN))}, r.FQDN...)
	default:
		return nil, errors.New("redirect: no gateway identity")
	}
	return append(b, r.Nonce...), nil
}

// ParseRedirect parses REDIRECT notification data.
func ParseRedirect(b []byte) (Redirect, error) {
	var r Redirect
	if len(b) < 2 || len(b)-2 < int(b[1]) {
		return r, fmt.Errorf("redirect: %d bytes: truncated", len(b))
	}
	id, rest := b[2:2+int(b[1])], b[2+int(b[1]):]
	switch b[0] {
	case GWIdentIPv4:
		if len(id) != 4 {
			return r, fmt.Errorf("redirect: IPv4 identity of %d bytes", len(id))
		}
		r.Addr = netip.AddrFrom4([4]byte(id))
	case GWIdentIPv6:
		if len(id) != 16 {
			return r, fmt.Errorf("redirect: IPv6 identity of %d bytes", len(id))
		}
		r.Addr = netip.AddrFrom16([16]byte(id))
	case GWIdentFQDN:
		if len(id) == 0 {
			return r, errors.New("redirect: empty FQDN")
		}
		r.FQDN = string(id)
	default:
		return r, fmt.Errorf("redirect: unknown identity type %d", b[0])
	}
	if len(rest) > 0 {
		r.Nonce = bytes.Clone(rest)
	}
	return r, nil
}

// RedirectInit answers an initial IKE_SA_INIT request b (without a non-ESP
// marker) whose initiator announced REDIRECT_SUPPORTED with
// HDR(SPIi, 0), N(REDIRECT, target, Ni) (RFC 5685 §3). ok is false when b
// is no such request (not IKE_SA_INIT, a response, a retry with a cookie
// is fine) or the initiator does not support redirects: the caller then
// handles it as usual. It never panics on any input.
func RedirectInit(b []byte, target netip.Addr) (resp []byte, ok bool) {
	h, err := DecodeHeader(b)
	if err != nil || h.Exchange != IKE_SA_INIT || h.SPIr != 0 || h.Flags&FlagInitiator == 0 ||
		h.Flags&FlagResponse != 0 || h.MessageID != 0 || !target.IsValid() {
		return nil, false
	}
	m, err := Decode(b)
	if err != nil {
		return nil, false
	}
	var nonce []byte
	supported := false
	for _, p := range m.Payloads {
		switch p := p.(type) {
		case *Nonce:
			nonce = p.Data
		case *Notify:
			if p.NotifyType == REDIRECT_SUPPORTED {
				supported = true
			}
		}
	}
	if !supported || len(nonce) == 0 {
		return nil, false
	}
	data, err := EncodeRedirect(Redirect{Addr: target, Nonce: nonce})
	if err != nil {
		return nil, false
	}
	out := Message{SPIi: h.SPIi, Exchange: IKE_SA_INIT, Flags: FlagResponse,
		Payloads: []Payload{&Notify{NotifyType: REDIRECT, Data: data}}}
	return out.Encode(), true
}
