package statestore

import (
	"reflect"
	"testing"
)

// The additional key exchanges of a hybrid (RFC 9370) IKE SA and CHILD SA
// survive the record, and records without them encode as before.
func TestRecordAdditionalKeyExchanges(t *testing.T) {
	c := Codec{Keys: testKeyring(t, 7, 1)}
	plain := sampleRecord(0x42)
	pb, err := c.Marshal(saName(plain.LocalSPI()), plain, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	r := sampleRecord(0x42)
	r.Suite.AddKE = [7]uint16{36, 0, 37}
	b, err := c.Marshal(saName(r.LocalSPI()), r, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Unmarshal(saName(r.LocalSPI()), b, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalize(got), normalize(r)) {
		t.Fatalf("round trip: got %+v, want %+v", got.Suite, r.Suite)
	}
	if len(b) <= len(pb) {
		t.Fatalf("record with additional key exchanges %d bytes, without %d", len(b), len(pb))
	}
	got, err = c.Unmarshal(saName(plain.LocalSPI()), pb, Binding{1, 1})
	if err != nil || got.Suite.AddKE != ([7]uint16{}) {
		t.Fatalf("plain record: %v %+v", err, got.Suite)
	}
	// A CHILD SA rekeyed with IKE_FOLLOWUP_KE keeps its own.
	if len(r.Children) == 0 {
		t.Fatal("sample record without CHILD SAs")
	}
	r.Children[0].Suite.AddKE = [7]uint16{36}
	if b, err = c.Marshal(saName(r.LocalSPI()), r, Binding{1, 1}); err != nil {
		t.Fatal(err)
	}
	if got, err = c.Unmarshal(saName(r.LocalSPI()), b, Binding{1, 1}); err != nil || got.Children[0].Suite.AddKE != r.Children[0].Suite.AddKE {
		t.Fatalf("CHILD SA suite: %v %+v", err, got.Children[0].Suite)
	}
}
