package sig

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	encasn1 "encoding/asn1"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
)

func strongSwanCert(t testing.TB, dir, name string) *x509.Certificate {
	t.Helper()
	certs, err := ParseCertificates(readFile(t, "strongswan", dir, name+".crt"))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// utf8DN encodes C, O, CN with UTF8String values (as OpenSSL does by default).
func utf8DN(t *testing.T, c, o, cn string) []byte {
	t.Helper()
	atv := func(oid encasn1.ObjectIdentifier, v string) []pkix.AttributeTypeAndValue {
		return []pkix.AttributeTypeAndValue{{Type: oid, Value: encasn1.RawValue{Tag: encasn1.TagUTF8String, Bytes: []byte(v)}}}
	}
	der, err := encasn1.Marshal(pkix.RDNSequence{
		atv(encasn1.ObjectIdentifier{2, 5, 4, 6}, c),
		atv(encasn1.ObjectIdentifier{2, 5, 4, 10}, o),
		atv(encasn1.ObjectIdentifier{2, 5, 4, 3}, cn),
	})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustParseIdentity(t *testing.T, s string) (uint8, []byte) {
	t.Helper()
	typ, data, err := ParseIdentity(s)
	if err != nil {
		t.Fatalf("ParseIdentity(%q): %v", s, err)
	}
	return typ, data
}

func TestMatchIdentity(t *testing.T) {
	ss := strongSwanCert(t, "ecdsa", "gw1")
	p := newPKI(t)
	tmpl := leafTemplate("gw7.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0))
	tmpl.IPAddresses = []net.IP{net.IPv4(192, 0, 2, 1).To4(), net.ParseIP("2001:db8::1")}
	tmpl.EmailAddresses = []string{"gw7@iot.example"}
	gen := issue(t, tmpl, p256Key(t), p.inter).cert

	dn := func(s string) []byte { _, d := mustParseIdentity(t, s); return d }
	tests := []struct {
		name   string
		cert   *x509.Certificate
		idType uint8
		data   []byte
		reason string // "" = match
	}{
		{"FQDN", ss, IDFQDN, []byte("gw1.iot.example"), ""},
		{"FQDN other case", ss, IDFQDN, []byte("GW1.iot.Example"), ""},
		{"FQDN other host", ss, IDFQDN, []byte("gw2.iot.example"), IdentityReasonNoDNS},
		{"FQDN suffix only", ss, IDFQDN, []byte("iot.example"), IdentityReasonNoDNS},
		{"FQDN empty", ss, IDFQDN, nil, IdentityReasonMalformed},
		{"FQDN is not the CN of a SAN-less cert", p.inter.cert, IDFQDN, []byte("Test Intermediate"), IdentityReasonNoDNS},
		{"DN exact (strongSwan encoding)", ss, IDDERASN1DN, dn("C=XX, O=Interop Test, CN=gw1.iot.example"), ""},
		{"DN raw subject", ss, IDDERASN1DN, ss.RawSubject, ""},
		{"DN case and spaces differ", ss, IDDERASN1DN, dn("c=xx,o=interop   test ,cn=GW1.IOT.EXAMPLE"), ""},
		{"DN as UTF8String", ss, IDDERASN1DN, utf8DN(t, "XX", "Interop Test", "gw1.iot.example"), ""},
		{"DN of Go-made cert", gen, IDDERASN1DN, dn("C=XX, O=Interop Test, CN=gw7.iot.example"), ""},
		{"DN other CN", ss, IDDERASN1DN, dn("C=XX, O=Interop Test, CN=gw2.iot.example"), IdentityReasonDN},
		{"DN reversed order", ss, IDDERASN1DN, dn("CN=gw1.iot.example, O=Interop Test, C=XX"), IdentityReasonDN},
		{"DN missing RDN", ss, IDDERASN1DN, dn("O=Interop Test, CN=gw1.iot.example"), IdentityReasonDN},
		{"DN extra RDN", ss, IDDERASN1DN, dn("C=XX, O=Interop Test, OU=x, CN=gw1.iot.example"), IdentityReasonDN},
		{"DN multi-valued vs single", ss, IDDERASN1DN, dn("C=XX, O=Interop Test+CN=gw1.iot.example"), IdentityReasonDN},
		{"DN malformed", ss, IDDERASN1DN, []byte{0x30, 0x03, 0x31}, IdentityReasonMalformed},
		{"DN trailing data", ss, IDDERASN1DN, append(dn("C=XX"), 0), IdentityReasonMalformed},
		{"DN empty sequence", ss, IDDERASN1DN, []byte{0x30, 0x00}, IdentityReasonDN},
		{"IPv4", gen, IDIPv4, []byte{192, 0, 2, 1}, ""},
		{"IPv4 other", gen, IDIPv4, []byte{192, 0, 2, 2}, IdentityReasonNoIP},
		{"IPv4 short", gen, IDIPv4, []byte{192, 0, 2}, IdentityReasonMalformed},
		{"IPv6", gen, IDIPv6, net.ParseIP("2001:db8::1"), ""},
		{"IPv6 mapped IPv4 is not the IPv4 SAN", gen, IDIPv6, net.ParseIP("192.0.2.1").To16(), IdentityReasonNoIP},
		{"IPv4 against cert without IPs", ss, IDIPv4, []byte{192, 0, 2, 1}, IdentityReasonNoIP},
		{"RFC822", gen, IDRFC822, []byte("gw7@iot.example"), ""},
		{"RFC822 domain case", gen, IDRFC822, []byte("gw7@IOT.example"), ""},
		{"RFC822 local part case", gen, IDRFC822, []byte("GW7@iot.example"), IdentityReasonNoEmail},
		{"RFC822 without @", gen, IDRFC822, []byte("gw7"), IdentityReasonMalformed},
		{"RFC822 against cert without e-mail", ss, IDRFC822, []byte("gw1@iot.example"), IdentityReasonNoEmail},
		{"KEY_ID", ss, IDKeyID, []byte{1, 2, 3}, IdentityReasonUnsupported},
		{"unknown type", ss, 4, []byte{1, 2, 3, 4, 5, 6, 7, 8}, IdentityReasonUnsupported},
		{"nil cert", nil, IDFQDN, []byte("gw1.iot.example"), IdentityReasonUnsupported},
	}
	for _, tt := range tests {
		err := MatchIdentity(tt.cert, tt.idType, tt.data)
		if tt.reason == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		var ie *IdentityError
		if !errors.As(err, &ie) || ie.Reason != tt.reason || ie.IDType != tt.idType {
			t.Errorf("%s: got %v, want IdentityError %q", tt.name, err, tt.reason)
		}
	}
}

func TestParseIdentity(t *testing.T) {
	printableDN := func(atvs ...[2]string) []byte {
		var seq pkix.RDNSequence
		for _, a := range atvs {
			oid := map[string]encasn1.ObjectIdentifier{"C": {2, 5, 4, 6}, "O": {2, 5, 4, 10}, "CN": {2, 5, 4, 3}}[a[0]]
			seq = append(seq, []pkix.AttributeTypeAndValue{{Type: oid, Value: encasn1.RawValue{Tag: encasn1.TagPrintableString, Bytes: []byte(a[1])}}})
		}
		der, _ := encasn1.Marshal(seq)
		return der
	}
	tests := []struct {
		in     string
		idType uint8
		data   []byte // nil with idType 0: error expected
	}{
		{"gw1.iot.example", IDFQDN, []byte("gw1.iot.example")},
		{"  gw1.iot.example\t", IDFQDN, []byte("gw1.iot.example")},
		{"@gw1.iot.example", IDFQDN, []byte("gw1.iot.example")},
		{"@user@iot.example", IDFQDN, []byte("user@iot.example")},
		{"gw@iot.example", IDRFC822, []byte("gw@iot.example")},
		{"192.0.2.1", IDIPv4, []byte{192, 0, 2, 1}},
		{"2001:db8::1", IDIPv6, net.ParseIP("2001:db8::1")},
		{"::ffff:192.0.2.1", IDIPv6, net.ParseIP("::ffff:192.0.2.1")},
		{"@#0a0B0c", IDKeyID, []byte{0x0a, 0x0b, 0x0c}},
		{"@#0a:0b", IDKeyID, []byte{0x0a, 0x0b}},
		{"C=XX, O=Interop Test, CN=gw1", IDDERASN1DN, printableDN([2]string{"C", "XX"}, [2]string{"O", "Interop Test"}, [2]string{"CN", "gw1"})},
		{"C=XX, O=Interop Test, CN=gw1.iot.example", IDDERASN1DN, printableDN([2]string{"C", "XX"}, [2]string{"O", "Interop Test"}, [2]string{"CN", "gw1.iot.example"})},
		{"CN=gw1,O=Interop Test,C=XX", IDDERASN1DN, printableDN([2]string{"CN", "gw1"}, [2]string{"O", "Interop Test"}, [2]string{"C", "XX"})},
		{"2.5.4.3=gw1", IDDERASN1DN, printableDN([2]string{"CN", "gw1"})},
		{"cn=gw1", IDDERASN1DN, printableDN([2]string{"CN", "gw1"})},
		{"", 0, nil},
		{"   ", 0, nil},
		{"@", 0, nil},
		{"@#", 0, nil},
		{"@#xyz", 0, nil},
		{"@#abc", 0, nil},
		{"fe80::1%eth0", 0, nil},
		{"gw1\x01.example", 0, nil},
		{"X=foo", 0, nil},
		{"CN=", 0, nil},
		{"=foo", 0, nil},
		{"CN=a,,O=b", 0, nil},
		{"CN=a,", 0, nil},
		{`CN=a\`, 0, nil},
		{"E=jörg@example.com", 0, nil},
		{"CN=\xff\xfe", 0, nil},
		{"1.40=x", 0, nil},
		{"1=x", 0, nil},
		{"3.1=x", 0, nil},
		{"2.=x", 0, nil},
		{string(make([]byte, MaxIdentityLength+1)), 0, nil},
		{"@" + strings.Repeat("a", MaxIdentityLength+1), 0, nil},        // data over the bound
		{"CN=" + strings.Repeat("a", maxIdentityString), 0, nil},        // string over its bound
		{"CN=" + strings.Repeat("ab,CN=", MaxIdentityLength/6), 0, nil}, // DER over the bound
		{"@#" + strings.Repeat("ab", MaxIdentityLength+1), 0, nil},      // KEY_ID over the bound
		{"@" + strings.Repeat("a", MaxIdentityLength), IDFQDN, []byte(strings.Repeat("a", MaxIdentityLength))},
	}
	for _, tt := range tests {
		typ, data, err := ParseIdentity(tt.in)
		if tt.data == nil {
			if err == nil {
				t.Errorf("ParseIdentity(%q) = %d %x, want error", tt.in, typ, data)
			}
			continue
		}
		if err != nil || typ != tt.idType || !bytes.Equal(data, tt.data) {
			t.Errorf("ParseIdentity(%q) = %d %x %v, want %d %x", tt.in, typ, data, err, tt.idType, tt.data)
		}
	}
}

// What IdentityString prints for an identity within MaxIdentityLength,
// ParseIdentity takes back, although its escapes make it longer than
// that (found by FuzzParseIdentity: control characters in a DN's value,
// 3 characters each when printed).
func TestPrintedIdentityParsesBack(t *testing.T) {
	typ, der := mustParseIdentity(t, "CN="+strings.Repeat(`\10`, 400))
	printed := IdentityString(typ, der)
	if len(printed) <= MaxIdentityLength || len(der) > MaxIdentityLength {
		t.Fatalf("printed %d characters for %d octets: not the case under test", len(printed), len(der))
	}
	checkRoundTrip(t, printed)
}

func TestParseIdentityDNEncoding(t *testing.T) {
	// Attribute value types: PrintableString when possible, UTF8String
	// otherwise, IA5String for E and DC; multi-valued RDNs; escapes.
	_, der := mustParseIdentity(t, `E=gw@iot.example, DC=example, CN=J\C3\B6rg K\, Jr.+UID=jk, OU=a\+b, L=\ lead`)
	seq, err := parseRDNSequence(der)
	if err != nil {
		t.Fatal(err)
	}
	type attr struct {
		name  string
		tag   int
		value string
	}
	var got [][]attr
	for _, rdn := range seq {
		var r []attr
		for _, atv := range rdn {
			r = append(r, attr{attributeName(atv.Type), atv.Value.Tag, string(atv.Value.Bytes)})
		}
		got = append(got, r)
	}
	want := [][]attr{
		{{"E", tagIA5String, "gw@iot.example"}},
		{{"DC", tagIA5String, "example"}},
		{{"CN", tagUTF8String, "Jörg K, Jr."}, {"UID", tagPrintableString, "jk"}},
		{{"OU", tagPrintableString, "a+b"}},
		{{"L", tagPrintableString, " lead"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("RDN %d: got %v, want %v", i, got[i], want[i])
		}
		for _, w := range want[i] { // SET OF is sorted by DER, compare as a set
			found := false
			for _, g := range got[i] {
				found = found || g == w
			}
			if !found {
				t.Errorf("RDN %d: %v missing from %v", i, w, got[i])
			}
		}
	}
	// Go's x509 reads it back.
	var name pkix.RDNSequence
	if _, err := encasn1.Unmarshal(der, &name); err != nil {
		t.Fatal(err)
	}
}

func TestIdentityString(t *testing.T) {
	ss := strongSwanCert(t, "ed25519", "gw1")
	tests := []struct {
		idType uint8
		data   []byte
		want   string
	}{
		{IDIPv4, []byte{192, 0, 2, 1}, "192.0.2.1"},
		{IDIPv4, []byte{192, 0, 2}, "type 1:c00002"},
		{IDIPv6, net.ParseIP("2001:db8::1"), "2001:db8::1"},
		{IDIPv6, net.ParseIP("::ffff:192.0.2.1"), "::ffff:192.0.2.1"},
		{IDFQDN, []byte("gw1.iot.example"), "gw1.iot.example"},
		{IDFQDN, []byte("gw1\n\\x"), `gw1\x0a\x5cx`},
		{IDRFC822, []byte("gw@iot.example"), "gw@iot.example"},
		{IDDERASN1DN, ss.RawSubject, "C=XX, O=Interop Test, CN=gw1.iot.example"},
		{IDDERASN1DN, utf8DN(t, "XX", "O, Inc.", " x+y "), `C=XX, O=O\, Inc., CN=\20x\+y\20`},
		{IDDERASN1DN, []byte{0x30, 0x01}, "#3001"},
		{IDKeyID, []byte{0x01, 0xab}, "@#01ab"},
		{4, []byte{1, 2}, "type 4:0102"},
	}
	for _, tt := range tests {
		if got := IdentityString(tt.idType, tt.data); got != tt.want {
			t.Errorf("IdentityString(%d, %x) = %q, want %q", tt.idType, tt.data, got, tt.want)
		}
	}
}

// TestIdentityRoundTrip: what IdentityString prints, ParseIdentity reads back
// to the same identity.
func TestIdentityRoundTrip(t *testing.T) {
	for _, s := range []string{
		"C=XX, O=Interop Test, CN=gw1.iot.example",
		`CN=\ lead, O=a\,b, OU=x\+y, L=\#hash, ST=ctl\0A, STREET=trail\ , SN=123+UID=u`,
		"E=a@b, DC=c, T=title, 2.5.4.99=other, serialNumber=7",
		"CN=Jörg",
		"@#00ff",
		"192.0.2.1",
		"2001:db8::1",
	} {
		checkRoundTrip(t, s)
	}
}

func checkRoundTrip(t *testing.T, s string) {
	t.Helper()
	typ, data, err := ParseIdentity(s)
	if err != nil {
		t.Fatalf("ParseIdentity(%q): %v", s, err)
	}
	printed := IdentityString(typ, data)
	typ2, data2, err := ParseIdentity(printed)
	if err != nil || typ2 != typ || !bytes.Equal(data2, data) {
		t.Fatalf("%q → %q → %d %x %v, want %d %x", s, printed, typ2, data2, err, typ, data)
	}
}

// FuzzParseIdentity: ParseIdentity never panics; DN, KEY_ID and address
// identities survive IdentityString and ParseIdentity; arbitrary bytes as a
// DN neither panic IdentityString nor MatchIdentity.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{
		"C=XX, O=Interop Test, CN=gw1.iot.example", "@gw1", "gw@iot.example", "192.0.2.1", "::1",
		"@#0011", `CN=a\,b+OU=c\2C, L=\ x\ `, "2.5.4.3=x", "E=x@y", "fe80::1%1", "CN=\\", "a=b=c",
	} {
		f.Add(s)
	}
	cert := strongSwanCert(f, "ecdsa", "gw1")
	f.Fuzz(func(t *testing.T, s string) {
		typ, data, err := ParseIdentity(s)
		_ = IdentityString(IDDERASN1DN, []byte(s))
		_ = MatchIdentity(cert, IDDERASN1DN, []byte(s))
		if err != nil {
			return
		}
		_ = MatchIdentity(cert, typ, data)
		switch typ {
		case IDDERASN1DN, IDKeyID, IDIPv4, IDIPv6:
			checkRoundTrip(t, s)
		case IDFQDN, IDRFC822:
			if len(data) == 0 {
				t.Fatalf("%q: empty data", s)
			}
		default:
			t.Fatalf("%q: type %d", s, typ)
		}
	})
}

func TestDNStringTypes(t *testing.T) {
	rv := func(tag int, b []byte) encasn1.RawValue { return encasn1.RawValue{Tag: tag, Bytes: b} }
	for _, c := range []struct {
		name string
		v    encasn1.RawValue
		want string
		ok   bool
	}{
		{"BMPString", rv(tagBMPString, []byte{0, 'g', 0, 'w', 0x00, 0xf6}), "gwö", true},
		{"BMPString odd", rv(tagBMPString, []byte{0, 'g', 0}), "", false},
		{"T61String", rv(tagT61String, []byte{'J', 0xf6}), "Jö", true},
		{"UniversalString", rv(tagUniversalString, []byte{0, 0, 0, 'a', 0, 0, 0, 0xf6}), "aö", true},
		{"UniversalString surrogate", rv(tagUniversalString, []byte{0, 0, 0xd8, 0}), "", false},
		{"UniversalString odd", rv(tagUniversalString, []byte{0, 0, 0}), "", false},
		{"UTF8String invalid", rv(tagUTF8String, []byte{0xff}), "", false},
		{"INTEGER", rv(encasn1.TagInteger, []byte{1}), "", false},
		{"context class", encasn1.RawValue{Class: encasn1.ClassContextSpecific, Tag: tagUTF8String, Bytes: []byte("x")}, "", false},
	} {
		got, ok := decodeString(c.v)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, ok, c.want, c.ok)
		}
	}
	// A BMPString subject matches the same DN given as text.
	seq := pkix.RDNSequence{{{Type: encasn1.ObjectIdentifier{2, 5, 4, 3}, Value: rv(tagBMPString, []byte{0, 'g', 0, 'w'})}}}
	bmp, _ := encasn1.Marshal(seq)
	cert := &x509.Certificate{RawSubject: bmp}
	_, id, _ := ParseIdentity("CN=GW")
	if err := MatchIdentity(cert, IDDERASN1DN, id); err != nil {
		t.Error(err)
	}
	// Non-string values compare by DER and print as hex.
	seq[0][0].Value = rv(encasn1.TagInteger, []byte{5})
	intDN, _ := encasn1.Marshal(seq)
	if err := MatchIdentity(&x509.Certificate{RawSubject: intDN}, IDDERASN1DN, intDN[:len(intDN):len(intDN)]); err != nil {
		t.Error(err)
	}
	if err := MatchIdentity(&x509.Certificate{RawSubject: intDN}, IDDERASN1DN, id); err == nil {
		t.Error("INTEGER value matched a string")
	}
	if got, want := IdentityString(IDDERASN1DN, intDN), "CN=#020105"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestErrorStrings(t *testing.T) {
	for _, err := range []error{
		&VerifyError{Method: 14, Reason: ReasonBadSignature, Err: ErrBadSignature},
		&VerifyError{Method: 1, Reason: ReasonSHA1NotAllowed},
		&UnsupportedKeyError{Key: "ECDSA P-224"},
		&UnsupportedMethodError{Method: 3},
		&NoCommonHashError{Key: "Ed25519", Peer: []uint16{2}},
		&ChainError{Reason: ChainReasonRevoked, Subject: "CN=x", Index: 0, Err: &RevokedError{Serial: big.NewInt(255), Subject: "CN=x"}},
		&ChainError{Reason: ChainReasonNoRoots, Index: -1},
		&IdentityError{IDType: 2, Identity: "gw", Subject: "CN=x", Reason: IdentityReasonNoDNS},
	} {
		if s := err.Error(); !strings.HasPrefix(s, "sig: ") || len(s) < 12 {
			t.Errorf("%T: %q", err, s)
		}
	}
	ce := &ChainError{Reason: ChainReasonRevoked, Subject: "CN=x", Index: 1, Err: &RevokedError{Serial: big.NewInt(255), Subject: "CN=x"}}
	if s := ce.Error(); !strings.Contains(s, `"CN=x" (#1)`) || !strings.Contains(s, "serial ff") {
		t.Errorf("ChainError: %q", s)
	}
}
