package statestore

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"google.golang.org/protobuf/proto"
)

func testKeyring(t testing.TB, id uint32, fill byte) *Keyring {
	t.Helper()
	k, err := NewKeyring(id, bytes.Repeat([]byte{fill}, ClusterKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sampleRecord is a typical responder SA: AES-GCM-256, one CHILD SA with
// a virtual IP, behind NAT.
func sampleRecord(spi uint64) *SARecord {
	now := time.UnixMilli(1_790_000_000_000)
	k := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	return &SARecord{
		SPIi: 0x1122334455667788, SPIr: spi, State: 4,
		Suite: Suite{Encr: 20, EncrKeyLen: 256, PRF: 7, Group: 19},
		SKd:   k(48, 1), SKei: k(36, 2), SKer: k(36, 3), SKpi: k(48, 4), SKpr: k(48, 5),
		NextIn: 2, NextOut: 0,
		Local: netip.MustParseAddrPort("198.51.100.1:4500"), Remote: netip.MustParseAddrPort("203.0.113.77:61234"),
		NATLocal: true, NATRemote: true, Flags: 1,
		PeerID:    Identity{Type: 2, Data: []byte("gw-000123.fleet.example")},
		VirtualIP: netip.MustParseAddr("10.64.0.123"),
		Created:   now, Established: now.Add(40 * time.Millisecond),
		Children: []ChildRecord{{
			InSPI: uint32(spi) | 0xc0000000, OutSPI: 0xdeadbeef,
			Suite: Suite{Encr: 20, EncrKeyLen: 256},
			KeyIn: ChildKeys{Encr: k(36, 6)}, KeyOut: ChildKeys{Encr: k(36, 7)},
			LocalTS:  []TrafficSelector{{StartPort: 0, EndPort: 65535, Start: netip.MustParseAddr("0.0.0.0"), End: netip.MustParseAddr("255.255.255.255")}},
			RemoteTS: []TrafficSelector{{StartPort: 0, EndPort: 65535, Start: netip.MustParseAddr("10.64.0.123"), End: netip.MustParseAddr("10.64.0.123")}},
			Encap:    true, OutSeqReserved: 1 << 20, InSeqLow: 1 << 19, SeqBlock: 1 << 12,
			Local: netip.MustParseAddrPort("198.51.100.1:4500"), Remote: netip.MustParseAddrPort("203.0.113.77:61234"),
			Created: now.Add(40 * time.Millisecond),
		}},
	}
}

func TestSealRoundTripAndRotation(t *testing.T) {
	k := testKeyring(t, 1, 0xaa)
	id, sealed, err := k.Seal([]byte("secret"), []byte("sa/1"))
	if err != nil || id != 1 {
		t.Fatal(id, err)
	}
	if pt, err := k.Open(id, sealed, []byte("sa/1")); err != nil || string(pt) != "secret" {
		t.Fatalf("open: %q %v", pt, err)
	}
	if _, err := k.Open(id, sealed, []byte("sa/2")); !errors.Is(err, ErrSeal) {
		t.Fatalf("other AAD: %v, want ErrSeal", err)
	}
	// Rotation: add key 2, make it current; old records still open.
	if err := k.Add(2, bytes.Repeat([]byte{0xbb}, ClusterKeyLen)); err != nil {
		t.Fatal(err)
	}
	if err := k.SetCurrent(2); err != nil {
		t.Fatal(err)
	}
	id2, _, _ := k.Seal([]byte("new"), nil)
	if id2 != 2 {
		t.Fatalf("sealed with %d after rotation", id2)
	}
	if _, err := k.Open(1, sealed, []byte("sa/1")); err != nil {
		t.Fatalf("old key after rotation: %v", err)
	}
	if err := k.Remove(2); err == nil {
		t.Fatal("removed the current key")
	}
	if err := k.Remove(1); err != nil {
		t.Fatal(err)
	}
	var uk *UnknownKeyError
	if _, err := k.Open(1, sealed, []byte("sa/1")); !errors.As(err, &uk) || uk.KeyID != 1 || !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("removed key: %v", err)
	}
	if err := k.SetCurrent(9); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("SetCurrent(unknown): %v", err)
	}
	if _, err := NewKeyring(1, []byte("short")); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	c := Codec{Keys: testKeyring(t, 7, 1)}
	r := sampleRecord(0xabcdef0123456789)
	b, err := c.Marshal(saName(r.LocalSPI()), r, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Unmarshal(saName(r.LocalSPI()), b, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalize(got), normalize(r)) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
	}
	// Key material is not in the clear.
	if bytes.Contains(b, r.SKd) || bytes.Contains(b, r.Children[0].KeyIn.Encr) {
		t.Fatal("key material stored in the clear")
	}
	t.Logf("record: %d bytes", len(b))
	// A certificate peer's attributes (the per-identity policy's input).
	r.PeerCert = &CertAttrs{Issuer: "C=CH, O=Fleet, CN=Fleet A CA", Subject: "C=CH, O=Fleet, OU=site-1, CN=gw1",
		SANs: []string{"gw1.meters.example", "10.77.0.1"}, EKUs: []string{"1.3.6.1.5.5.7.3.2"}, Policies: []string{"1.3.6.1.4.1.99999.1.2"}}
	if b, err = c.Marshal(saName(r.LocalSPI()), r, Binding{1, 1}); err != nil {
		t.Fatal(err)
	}
	if got, err = c.Unmarshal(saName(r.LocalSPI()), b, Binding{1, 1}); err != nil || !reflect.DeepEqual(got.PeerCert, r.PeerCert) {
		t.Fatalf("certificate attributes round trip: %+v %v", got.PeerCert, err)
	}
	t.Logf("record with certificate attributes: %d bytes", len(b))
}

// normalize makes times comparable (millisecond, no monotonic reading).
func normalize(r *SARecord) *SARecord {
	c := *r
	c.Created, c.Established = time.UnixMilli(r.Created.UnixMilli()), time.UnixMilli(r.Established.UnixMilli())
	c.Children = append([]ChildRecord(nil), r.Children...)
	for i := range c.Children {
		c.Children[i].Created = time.UnixMilli(c.Children[i].Created.UnixMilli())
	}
	return &c
}

func TestRecordErrors(t *testing.T) {
	c := Codec{Keys: testKeyring(t, 7, 1)}
	r := sampleRecord(42)
	name := saName(42)
	good, err := c.Marshal(name, r, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("unknown version", func(t *testing.T) {
		b := append([]byte{0x08, 0x03}, good[2:]...) // version 2 -> 3
		var ve *VersionError
		if _, err := c.Unmarshal(name, b, Binding{1, 1}); !errors.As(err, &ve) || ve.Version != 3 || !errors.Is(err, ErrUnknownVersion) {
			t.Fatalf("got %v", err)
		}
		// A later version with fields we do not know is still a version error.
		b = append([]byte{0x08, 0x03, 0x2a, 0x01, 0x00}, good[2:]...)
		if _, err := c.Unmarshal(name, b, Binding{1, 1}); !errors.Is(err, ErrUnknownVersion) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("corrupt", func(t *testing.T) {
		for _, b := range [][]byte{nil, {0xff}, good[:len(good)/2], append([]byte{0x08}, 0x80), {0x10, 0x01}} {
			if _, err := c.Unmarshal(name, b, Binding{1, 1}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("% x: got %v, want ErrCorrupt", b, err)
			}
		}
	})
	t.Run("tampered clear part", func(t *testing.T) {
		b := bytes.Clone(good)
		i := bytes.Index(b, []byte("gw-000123"))
		b[i] = 'x'
		if _, err := c.Unmarshal(name, b, Binding{1, 1}); !errors.Is(err, ErrSeal) {
			t.Fatalf("got %v, want ErrSeal", err)
		}
	})
	t.Run("moved to another key", func(t *testing.T) {
		if _, err := c.Unmarshal(saName(43), good, Binding{1, 1}); !errors.Is(err, ErrSeal) {
			t.Fatalf("got %v, want ErrSeal", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		other := Codec{Keys: testKeyring(t, 7, 2)} // same id, other key
		var se *SealError
		if _, err := other.Unmarshal(name, good, Binding{1, 1}); !errors.As(err, &se) || se.KeyID != 7 || se.Key != name {
			t.Fatalf("got %v, want *SealError", err)
		}
	})
	t.Run("unknown key id", func(t *testing.T) {
		other := Codec{Keys: testKeyring(t, 8, 1)}
		var uk *UnknownKeyError
		if _, err := other.Unmarshal(name, good, Binding{1, 1}); !errors.As(err, &uk) || uk.KeyID != 7 {
			t.Fatalf("got %v, want *UnknownKeyError", err)
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	c := Codec{Keys: testKeyring(f, 1, 1)}
	good, _ := c.Marshal("sa/x", sampleRecord(1), Binding{1, 1})
	f.Add(good)
	f.Add([]byte{0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := c.Unmarshal("sa/x", b, Binding{1, 1})
		if err == nil && r == nil {
			t.Fatal("nil record without error")
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownVersion) &&
			!errors.Is(err, ErrSeal) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

// The mark of a record that holds all of its reservations (store layout
// 5) is authenticated: taken off a record, or set on one whose newer
// reservations are in seq/, the record no longer opens. A legacy record
// (no binding) cannot carry it.
func TestInlineMarkAuthenticated(t *testing.T) {
	c := Codec{Keys: testKeyring(t, 1, 9)}
	at := Binding{CreateRevision: 7, Version: 3}
	name := saName(0x42)
	flip := func(data []byte, inline bool) []byte {
		t.Helper()
		rec, err := splitRecord(data)
		if err != nil {
			t.Fatal(err)
		}
		var sa pb.IKESA
		if err := proto.Unmarshal(rec.body, &sa); err != nil {
			t.Fatal(err)
		}
		sa.ReservationsInline = inline
		body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&sa)
		if err != nil {
			t.Fatal(err)
		}
		return assemble(body, rec.keyID, rec.sealed, rec.at)
	}
	inline, err := c.MarshalInline(name, sampleRecord(0x42), at)
	if err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.unmarshal(name, inline, at); err != nil || !got {
		t.Fatalf("inline record: mark %v, %v", got, err)
	}
	plain, err := c.Marshal(name, sampleRecord(0x42), at)
	if err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.unmarshal(name, plain, at); err != nil || got {
		t.Fatalf("record of layout 4: mark %v, %v", got, err)
	}
	var se *SealError
	if _, _, err := c.unmarshal(name, flip(inline, false), at); !errors.As(err, &se) {
		t.Fatalf("mark taken off: %v, want *SealError", err)
	}
	if _, _, err := c.unmarshal(name, flip(plain, true), at); !errors.As(err, &se) {
		t.Fatalf("mark set: %v, want *SealError", err)
	}
	sa := toPB(sampleRecord(0x42))
	sa.ReservationsInline = true
	legacy := legacyMarshalAs(t, c, name, sampleRecord(0x42), sa)
	var ce *CorruptError
	if _, _, err := c.unmarshal(name, legacy, at); !errors.As(err, &ce) {
		t.Fatalf("legacy record with the mark: %v, want *CorruptError", err)
	}
}
