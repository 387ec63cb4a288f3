// Package esp is user-space ESP: the packet codec of ESP (RFC 4303) and
// ESP-in-UDP (RFC 3948), and the SA crypto for tunnel-mode CHILD SAs with
// AES-GCM-16 (RFC 4106), ChaCha20-Poly1305 (RFC 7634) and AES-CBC with
// HMAC-SHA2 (RFC 3602, RFC 4868). Extended sequence numbers (RFC 4304) and
// an anti-replay bitmap window of configurable size are supported; no TFC
// padding is generated and dummy packets (next header 59) are reported to
// the caller.
//
// The package does no I/O and keeps no goroutines. An [Outbound] or
// [Inbound] SA is not safe for concurrent use: the caller pins each SA to one
// goroutine. Seal and Open work in place in the caller's buffer and do not
// allocate.
//
// Packet layout (RFC 4303 §2):
//
//	SPI(4) | Sequence Number(4) | IV | Payload | Padding | Pad Length(1) | Next Header(1) | ICV
package esp

import (
	"encoding/binary"
)

// Transform IDs (IANA IKEv2 "Transform Type 1" and "Transform Type 3").
// They equal the constants of concentrator/ike/suite; esp keeps its own so
// that it depends on the standard library only.
const (
	EncrAESCBC           uint16 = 12
	EncrAESGCM16         uint16 = 20
	EncrChaCha20Poly1305 uint16 = 28

	IntegNone          uint16 = 0
	IntegHMACSHA256128 uint16 = 12
	IntegHMACSHA384192 uint16 = 13
	IntegHMACSHA512256 uint16 = 14
)

// Next Header values this package knows by name (IANA protocol numbers).
const (
	NextHeaderIPv4  uint8 = 4
	NextHeaderIPv6  uint8 = 41
	NextHeaderDummy uint8 = 59 // "no next header": a TFC dummy packet (RFC 4303 §2.6)
)

// Protocol sizes.
const (
	HeaderLen = 8 // SPI and sequence number

	// MaxHeadroom is the most bytes any SA puts before the payload
	// (header and a 16-byte CBC IV); MaxTailroom the most after it
	// (15 bytes of padding, pad length, next header, 32-byte ICV).
	MaxHeadroom = HeaderLen + 16
	MaxTailroom = 15 + 2 + 32

	// NonESPMarkerLen is the zero prefix that marks IKE on the NAT-T port.
	NonESPMarkerLen = 4
)

// Implementation limits.
const (
	DefaultReplayWindow = 1024    // bits
	MaxReplayWindow     = 1 << 16 // bits
)

// Error is a reason to drop a packet. Errors are comparable values, so
// errors.Is works, and they make a small fixed label set for counters.
type Error uint8

const (
	ErrMalformed   Error = iota + 1 // too short, bad length or bad padding
	ErrReplay                       // outside the window, or seen before
	ErrIntegrity                    // ICV or AEAD tag check failed
	ErrSeqOverflow                  // outbound sequence numbers exhausted: rekey
	ErrBuffer                       // the caller's buffer is too small
	ErrWrongSPI                     // the packet's SPI is not this SA's
	ErrSeqLimit                     // the next sequence number is above the SA's limit (reservation)
)

var errNames = [...]string{
	ErrMalformed:   "malformed",
	ErrReplay:      "replay",
	ErrIntegrity:   "integrity",
	ErrSeqOverflow: "sequence number overflow",
	ErrBuffer:      "buffer too small",
	ErrWrongSPI:    "wrong SPI",
	ErrSeqLimit:    "sequence number limit",
}

func (e Error) Error() string {
	if int(e) < len(errNames) && errNames[e] != "" {
		return "esp: " + errNames[e]
	}
	return "esp: error"
}

// Reason is a short label for metrics: "malformed", "replay", ...
func (e Error) Reason() string {
	if int(e) < len(errNames) && errNames[e] != "" {
		return errNames[e]
	}
	return "unknown"
}

// Header is the cleartext start of an ESP packet.
type Header struct {
	SPI uint32
	Seq uint32 // low 32 bits of the sequence number
}

// ParseHeader reads the SPI and sequence number of an ESP packet. SPI 0 is
// reserved (on the NAT-T port it is the non-ESP marker) and is malformed.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrMalformed
	}
	h := Header{SPI: binary.BigEndian.Uint32(b), Seq: binary.BigEndian.Uint32(b[4:])}
	if h.SPI == 0 {
		return Header{}, ErrMalformed
	}
	return h, nil
}

// UDPKind classifies a datagram received on the NAT-T port (RFC 3948 §2).
type UDPKind uint8

const (
	UDPInvalid   UDPKind = iota // none of the below: drop
	UDPKeepalive                // one 0xff byte (RFC 3948 §2.3)
	UDPIKE                      // non-ESP marker, then an IKE message
	UDPESP                      // an ESP packet
)

func (k UDPKind) String() string {
	switch k {
	case UDPKeepalive:
		return "keepalive"
	case UDPIKE:
		return "ike"
	case UDPESP:
		return "esp"
	}
	return "invalid"
}

// ClassifyUDP tells a NAT-T datagram's kind by its first bytes.
func ClassifyUDP(b []byte) UDPKind {
	switch {
	case len(b) == 1 && b[0] == 0xff:
		return UDPKeepalive
	case len(b) >= NonESPMarkerLen && binary.BigEndian.Uint32(b) == 0:
		return UDPIKE
	case len(b) >= HeaderLen:
		return UDPESP
	}
	return UDPInvalid
}

// InnerVersion returns the IP version of a tunnelled packet and the Next
// Header value that announces it, or ok=false if it is neither IPv4 nor
// IPv6.
func InnerVersion(pkt []byte) (nextHeader uint8, ok bool) {
	if len(pkt) == 0 {
		return 0, false
	}
	switch pkt[0] >> 4 {
	case 4:
		return NextHeaderIPv4, true
	case 6:
		return NextHeaderIPv6, true
	}
	return 0, false
}
