package sig

import (
	"bytes"
	"crypto/x509"
	encasn1 "encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// IKE identification types (RFC 7296 §3.5).
const (
	IDIPv4      = 1  // ID_IPV4_ADDR: 4 octets
	IDFQDN      = 2  // ID_FQDN: name without terminator
	IDRFC822    = 3  // ID_RFC822_ADDR: e-mail address
	IDIPv6      = 5  // ID_IPV6_ADDR: 16 octets
	IDDERASN1DN = 9  // ID_DER_ASN1_DN: DER Name (RDNSequence)
	IDKeyID     = 11 // ID_KEY_ID: opaque octets
)

// MaxIdentityLength bounds the identities ParseIdentity accepts: their
// data, as an ID payload carries it. The string itself may be up to
// maxIdentityString, room for what IdentityString writes for such data
// (an octet of a DN's value prints as up to 3 characters, "\1F"; an
// OID's, up to 4), so that an identity the node prints can be written
// back into its configuration.
const MaxIdentityLength = 1024

const maxIdentityString = 8 * MaxIdentityLength

// Reasons carried by IdentityError (a closed set, usable as metric labels).
const (
	IdentityReasonMalformed   = "malformed identity"
	IdentityReasonUnsupported = "identity type cannot be bound to a certificate"
	IdentityReasonNoDNS       = "no matching DNS name"
	IdentityReasonNoEmail     = "no matching e-mail address"
	IdentityReasonNoIP        = "no matching IP address"
	IdentityReasonDN          = "subject DN differs"
)

// IdentityError reports an IKE identity that the certificate does not bind.
// The engine answers it with AUTHENTICATION_FAILED.
type IdentityError struct {
	IDType   uint8
	Identity string // IdentityString of the identity
	Subject  string // the certificate's subject DN
	Reason   string // one of the IdentityReason constants
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("sig: identity %q (type %d) not bound to certificate %q: %s",
		e.Identity, e.IDType, e.Subject, e.Reason)
}

// MatchIdentity checks that the IKE identity (RFC 7296 §3.5 type and data)
// is bound to the certificate:
//   - ID_FQDN: a DNS SAN equal to it, ignoring case (the subject CN is not
//     consulted, as in strongSwan);
//   - ID_RFC822_ADDR: an e-mail SAN equal to it (domain part ignoring case);
//   - ID_IPV4_ADDR, ID_IPV6_ADDR: an IP SAN of the same family and value;
//   - ID_DER_ASN1_DN: the subject DN, compared as raw DER and, failing that,
//     as parsed RDNSequences (same RDN order, attribute sets compared as sets,
//     string values compared ignoring case and repeated white space, and
//     regardless of the ASN.1 string type);
//   - ID_KEY_ID and other types: never bound to a certificate.
//
// A mismatch is an *IdentityError.
func MatchIdentity(cert *x509.Certificate, idType uint8, idData []byte) error {
	fail := func(reason string) error {
		e := &IdentityError{IDType: idType, Identity: IdentityString(idType, idData), Reason: reason}
		if cert != nil {
			e.Subject = dnString(cert.RawSubject)
		}
		return e
	}
	if cert == nil {
		return fail(IdentityReasonUnsupported)
	}
	switch idType {
	case IDFQDN:
		name := string(idData)
		if name == "" {
			return fail(IdentityReasonMalformed)
		}
		for _, dns := range cert.DNSNames {
			if strings.EqualFold(dns, name) {
				return nil
			}
		}
		return fail(IdentityReasonNoDNS)
	case IDRFC822:
		addr := string(idData)
		local, domain, ok := strings.Cut(addr, "@")
		if !ok || local == "" || domain == "" {
			return fail(IdentityReasonMalformed)
		}
		for _, email := range cert.EmailAddresses {
			l, d, ok := strings.Cut(email, "@")
			if ok && l == local && strings.EqualFold(d, domain) {
				return nil
			}
		}
		return fail(IdentityReasonNoEmail)
	case IDIPv4, IDIPv6:
		if (idType == IDIPv4 && len(idData) != 4) || (idType == IDIPv6 && len(idData) != 16) {
			return fail(IdentityReasonMalformed)
		}
		want, _ := netip.AddrFromSlice(idData)
		for _, ip := range cert.IPAddresses {
			if got, ok := netip.AddrFromSlice(ip); ok && got == want {
				return nil
			}
		}
		return fail(IdentityReasonNoIP)
	case IDDERASN1DN:
		if len(idData) > 0 && bytes.Equal(idData, cert.RawSubject) {
			return nil
		}
		want, err := parseRDNSequence(idData)
		if err != nil {
			return fail(IdentityReasonMalformed)
		}
		got, err := parseRDNSequence(cert.RawSubject)
		if err != nil || len(want) == 0 || !equalRDNSequence(want, got) {
			return fail(IdentityReasonDN)
		}
		return nil
	}
	return fail(IdentityReasonUnsupported)
}

// IdentityString renders an IKE identity for logs: FQDN and e-mail as text
// (non-printable bytes as \xNN), addresses in their text form, a DN as
// "C=XX, O=Interop Test, CN=gw1" in the encoded order, KEY_ID as "@#" and hex
// (strongSwan's notation, so ParseIdentity reads it back), other types as
// "type N:" and hex.
func IdentityString(idType uint8, data []byte) string {
	switch idType {
	case IDFQDN, IDRFC822:
		return printable(data)
	case IDIPv4, IDIPv6:
		if (idType == IDIPv4 && len(data) == 4) || (idType == IDIPv6 && len(data) == 16) {
			a, _ := netip.AddrFromSlice(data)
			return a.String()
		}
	case IDDERASN1DN:
		return dnString(data)
	case IDKeyID:
		return "@#" + hex.EncodeToString(data)
	}
	return fmt.Sprintf("type %d:%s", idType, hex.EncodeToString(data))
}

// ParseIdentity reads an identity from configuration with strongSwan's rules:
//   - "@#" and hex digits (colons allowed): ID_KEY_ID;
//   - contains '=': ID_DER_ASN1_DN, e.g. "C=XX, O=Interop Test, CN=gw1", RDNs
//     separated by ',' and kept in the order given, multi-valued RDNs joined
//     by '+', '\' escaping a character or a hex pair; keys C, ST, L, STREET,
//     O, OU, CN, SN or serialNumber, T, DC, UID, E or emailAddress, or a
//     dotted OID; values PrintableString when possible, else UTF8String
//     (IA5String for E and DC);
//   - an IPv4 address: ID_IPV4_ADDR; an IPv6 address: ID_IPV6_ADDR;
//   - "@name": ID_FQDN "name" (the '@' forces FQDN);
//   - contains '@': ID_RFC822_ADDR;
//   - anything else: ID_FQDN.
func ParseIdentity(s string) (idType uint8, data []byte, err error) {
	s = strings.Trim(s, " \t\r\n") // ASCII only: other spaces may be data
	if s == "" {
		return 0, nil, errors.New("sig: empty identity")
	}
	if len(s) > maxIdentityString {
		return 0, nil, fmt.Errorf("sig: identity longer than %d characters", maxIdentityString)
	}
	idType, data, err = parseIdentity(s)
	if err == nil && len(data) > MaxIdentityLength {
		return 0, nil, fmt.Errorf("sig: identity longer than %d bytes", MaxIdentityLength)
	}
	return idType, data, err
}

func parseIdentity(s string) (idType uint8, data []byte, err error) {
	if strings.HasPrefix(s, "@#") {
		b, err := hex.DecodeString(strings.ReplaceAll(s[2:], ":", ""))
		if err != nil || len(b) == 0 {
			return 0, nil, fmt.Errorf("sig: KEY_ID identity %q: want @# and hex digits", s)
		}
		return IDKeyID, b, nil
	}
	if strings.ContainsRune(s, '=') {
		der, err := parseDNString(s)
		if err != nil {
			return 0, nil, fmt.Errorf("sig: DN identity %q: %w", s, err)
		}
		return IDDERASN1DN, der, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		switch {
		case a.Zone() != "":
			return 0, nil, fmt.Errorf("sig: identity %q: address with zone", s)
		case a.Is4():
			b := a.As4()
			return IDIPv4, b[:], nil
		default:
			b := a.As16()
			return IDIPv6, b[:], nil
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return 0, nil, fmt.Errorf("sig: identity %q contains control characters", s)
		}
	}
	switch {
	case strings.HasPrefix(s, "@"):
		if len(s) == 1 {
			return 0, nil, errors.New("sig: empty FQDN identity")
		}
		return IDFQDN, []byte(s[1:]), nil
	case strings.ContainsRune(s, '@'):
		return IDRFC822, []byte(s), nil
	}
	return IDFQDN, []byte(s), nil
}

// printable returns b as text, with bytes outside printable ASCII (and '\')
// as \xNN, so that peer-chosen identities cannot forge log lines.
func printable(b []byte) string {
	i := 0
	for i < len(b) && b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\' {
		i++
	}
	if i == len(b) {
		return string(b) // the common case, in one allocation of its size
	}
	var sb strings.Builder
	sb.Grow(len(b) + 12)
	sb.Write(b[:i])
	for _, c := range b[i:] {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			fmt.Fprintf(&sb, "\\x%02x", c)
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// ---- distinguished names ----

// attributeTypeAndValue keeps the value raw, so that any string type (and
// non-string values) survive parsing.
type attributeTypeAndValue struct {
	Type  encasn1.ObjectIdentifier
	Value encasn1.RawValue
}

// relativeDistinguishedNameSET is a SET OF (encoding/asn1 treats a slice type
// whose name ends in SET as SET OF, and sorts it when marshalling).
type relativeDistinguishedNameSET []attributeTypeAndValue

type rdnSequence []relativeDistinguishedNameSET

// dnAttribute describes a DN attribute for parsing and printing. The first
// entry of an OID gives its printed name.
type dnAttribute struct {
	name string
	oid  encasn1.ObjectIdentifier
	ia5  bool // encoded as IA5String
}

var dnAttributes = []dnAttribute{
	{"C", encasn1.ObjectIdentifier{2, 5, 4, 6}, false},
	{"ST", encasn1.ObjectIdentifier{2, 5, 4, 8}, false},
	{"L", encasn1.ObjectIdentifier{2, 5, 4, 7}, false},
	{"STREET", encasn1.ObjectIdentifier{2, 5, 4, 9}, false},
	{"O", encasn1.ObjectIdentifier{2, 5, 4, 10}, false},
	{"OU", encasn1.ObjectIdentifier{2, 5, 4, 11}, false},
	{"CN", encasn1.ObjectIdentifier{2, 5, 4, 3}, false},
	{"SN", encasn1.ObjectIdentifier{2, 5, 4, 5}, false},
	{"serialNumber", encasn1.ObjectIdentifier{2, 5, 4, 5}, false},
	{"T", encasn1.ObjectIdentifier{2, 5, 4, 12}, false},
	{"DC", encasn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}, true},
	{"UID", encasn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}, false},
	{"E", encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, true},
	{"emailAddress", encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}, true},
}

func parseRDNSequence(der []byte) (rdnSequence, error) {
	var seq rdnSequence
	rest, err := encasn1.Unmarshal(der, &seq)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, errors.New("trailing data after DN")
	}
	return seq, nil
}

// dnString renders a DER Name like strongSwan: RDNs in the encoded order
// separated by ", ", multi-valued RDNs joined by "+", known attribute names
// or dotted OIDs, values escaped so that ParseIdentity reads the string
// back; non-string values as '#' and the hex of their DER (RFC 4514).
func dnString(der []byte) string {
	seq, err := parseRDNSequence(der)
	if err != nil {
		return "#" + hex.EncodeToString(der)
	}
	var sb strings.Builder
	for i, rdn := range seq {
		if i > 0 {
			sb.WriteString(", ")
		}
		for j, atv := range rdn {
			if j > 0 {
				sb.WriteString("+")
			}
			sb.WriteString(attributeName(atv.Type))
			sb.WriteString("=")
			if v, ok := decodeString(atv.Value); ok {
				sb.WriteString(escapeDNValue(v))
			} else {
				sb.WriteString("#" + hex.EncodeToString(atv.Value.FullBytes))
			}
		}
	}
	return sb.String()
}

func attributeName(oid encasn1.ObjectIdentifier) string {
	for _, a := range dnAttributes {
		if a.oid.Equal(oid) {
			return a.name
		}
	}
	return oid.String()
}

// escapeDNValue escapes the characters parseDNString treats specially with
// '\'; control characters and leading or trailing spaces as \XX.
func escapeDNValue(v string) string {
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == ',' || c == '+' || c == '\\' || c == '#' && i == 0:
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c < 0x20 || c == 0x7f || c == ' ' && (i == 0 || i == len(v)-1):
			// Hex for edge spaces too: "\ " at the end of a line would
			// not survive trimming.
			fmt.Fprintf(&sb, "\\%02X", c)
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// ASN.1 universal tags of the string types found in DNs.
const (
	tagUTF8String      = 12
	tagNumericString   = 18
	tagPrintableString = 19
	tagT61String       = 20
	tagIA5String       = 22
	tagVisibleString   = 26
	tagUniversalString = 28
	tagBMPString       = 30
)

// decodeString returns the text of a DN attribute value of a string type.
func decodeString(v encasn1.RawValue) (string, bool) {
	if v.Class != encasn1.ClassUniversal || v.IsCompound {
		return "", false
	}
	switch v.Tag {
	case tagUTF8String, tagNumericString, tagPrintableString, tagIA5String, tagVisibleString:
		if utf8.Valid(v.Bytes) {
			return string(v.Bytes), true
		}
	case tagT61String: // in practice Latin-1
		r := make([]rune, len(v.Bytes))
		for i, b := range v.Bytes {
			r[i] = rune(b)
		}
		return string(r), true
	case tagBMPString:
		if len(v.Bytes)%2 == 0 {
			u := make([]uint16, len(v.Bytes)/2)
			for i := range u {
				u[i] = uint16(v.Bytes[2*i])<<8 | uint16(v.Bytes[2*i+1])
			}
			return string(utf16.Decode(u)), true
		}
	case tagUniversalString:
		if len(v.Bytes)%4 == 0 {
			r := make([]rune, len(v.Bytes)/4)
			for i := range r {
				b := v.Bytes[4*i:]
				r[i] = rune(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
				if !utf8.ValidRune(r[i]) {
					return "", false
				}
			}
			return string(r), true
		}
	}
	return "", false
}

func equalRDNSequence(a, b rdnSequence) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		used := make([]bool, len(b[i]))
	next:
		for _, x := range a[i] {
			for j, y := range b[i] {
				if !used[j] && x.Type.Equal(y.Type) && equalValue(x.Value, y.Value) {
					used[j] = true
					continue next
				}
			}
			return false
		}
	}
	return true
}

// equalValue compares attribute values: strings ignoring case, leading,
// trailing and repeated white space and the string type (RFC 5280 §7.1,
// simplified), anything else by its DER.
func equalValue(x, y encasn1.RawValue) bool {
	xs, xok := decodeString(x)
	ys, yok := decodeString(y)
	if xok && yok {
		return strings.EqualFold(strings.Join(strings.Fields(xs), " "), strings.Join(strings.Fields(ys), " "))
	}
	if xok != yok {
		return false
	}
	return bytes.Equal(x.FullBytes, y.FullBytes)
}

// dnChar is one character of a DN string after escape processing.
type dnChar struct {
	c       byte
	escaped bool
}

// parseDNString converts "C=XX, O=Interop Test, CN=gw1" into a DER Name with
// the RDNs in the order given.
func parseDNString(s string) ([]byte, error) {
	var chars []dnChar
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			chars = append(chars, dnChar{c: s[i]})
			continue
		}
		if i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b, _ := hex.DecodeString(s[i+1 : i+3])
			chars = append(chars, dnChar{c: b[0], escaped: true})
			i += 2
			continue
		}
		if i+1 >= len(s) {
			return nil, errors.New("trailing backslash")
		}
		chars = append(chars, dnChar{c: s[i+1], escaped: true})
		i++
	}

	var seq rdnSequence
	for _, rdn := range splitDN(chars, ',') {
		var set relativeDistinguishedNameSET
		for _, ava := range splitDN(rdn, '+') {
			eq := -1
			for i, ch := range ava {
				if ch.c == '=' && !ch.escaped {
					eq = i
					break
				}
			}
			if eq < 0 {
				return nil, fmt.Errorf("%q: want KEY=value", dnText(ava))
			}
			key, value := dnText(trimDN(ava[:eq])), dnText(trimDN(ava[eq+1:]))
			atv, err := newAttribute(key, value)
			if err != nil {
				return nil, err
			}
			set = append(set, atv)
		}
		seq = append(seq, set)
	}
	return encasn1.Marshal(seq)
}

func newAttribute(key, value string) (attributeTypeAndValue, error) {
	if key == "" {
		return attributeTypeAndValue{}, errors.New("empty attribute name")
	}
	if value == "" {
		return attributeTypeAndValue{}, fmt.Errorf("%s: empty value", key)
	}
	var attr *dnAttribute
	for i := range dnAttributes {
		if strings.EqualFold(dnAttributes[i].name, key) {
			attr = &dnAttributes[i]
			break
		}
	}
	if attr == nil {
		oid, ok := parseDottedOID(key)
		if !ok {
			return attributeTypeAndValue{}, fmt.Errorf("unknown attribute %q", key)
		}
		attr = &dnAttribute{name: key, oid: oid}
		for i := range dnAttributes {
			if dnAttributes[i].oid.Equal(oid) {
				attr = &dnAttributes[i]
				break
			}
		}
	}
	tag := tagUTF8String
	switch {
	case attr.ia5:
		for i := 0; i < len(value); i++ {
			if value[i] >= 0x80 {
				return attributeTypeAndValue{}, fmt.Errorf("%s: value must be ASCII", key)
			}
		}
		tag = tagIA5String
	case isPrintableString(value):
		tag = tagPrintableString
	case !utf8.ValidString(value):
		return attributeTypeAndValue{}, fmt.Errorf("%s: value is not UTF-8", key)
	}
	return attributeTypeAndValue{
		Type:  attr.oid,
		Value: encasn1.RawValue{Class: encasn1.ClassUniversal, Tag: tag, Bytes: []byte(value)},
	}, nil
}

func splitDN(chars []dnChar, sep byte) [][]dnChar {
	var parts [][]dnChar
	start := 0
	for i, ch := range chars {
		if ch.c == sep && !ch.escaped {
			parts = append(parts, chars[start:i])
			start = i + 1
		}
	}
	return append(parts, chars[start:])
}

// trimDN removes unescaped white space at both ends.
func trimDN(chars []dnChar) []dnChar {
	for len(chars) > 0 && !chars[0].escaped && (chars[0].c == ' ' || chars[0].c == '\t') {
		chars = chars[1:]
	}
	for len(chars) > 0 && !chars[len(chars)-1].escaped && (chars[len(chars)-1].c == ' ' || chars[len(chars)-1].c == '\t') {
		chars = chars[:len(chars)-1]
	}
	return chars
}

func dnText(chars []dnChar) string {
	b := make([]byte, len(chars))
	for i, ch := range chars {
		b[i] = ch.c
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// isPrintableString reports whether s fits the ASN.1 PrintableString
// alphabet (X.680 §41.4).
func isPrintableString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte(" '()+,-./:=?", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// parseDottedOID parses "2.5.4.3"; at least two arcs, each a decimal number.
func parseDottedOID(s string) (encasn1.ObjectIdentifier, bool) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, false
	}
	oid := make(encasn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		if p == "" || len(p) > 9 {
			return nil, false
		}
		n := 0
		for j := 0; j < len(p); j++ {
			if p[j] < '0' || p[j] > '9' {
				return nil, false
			}
			n = n*10 + int(p[j]-'0')
		}
		oid[i] = n
	}
	if oid[0] > 2 || (oid[0] < 2 && oid[1] > 39) {
		return nil, false
	}
	return oid, true
}
