package concentrator

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// Reservations and the RFC 6311 flag survive the trip through a record
// and the state store's codec.
func TestRecordKeepsReservations(t *testing.T) {
	st := &ike.SAState{SPIi: 1, SPIr: 2, NextIn: 3, NextOut: 7, NextOutReserved: 23, MsgIDSync: true, MOBIKE: true,
		Local: netip.MustParseAddrPort("10.0.0.1:4500"), Remote: netip.MustParseAddrPort("192.0.2.1:4500"),
		Created:  time.UnixMilli(1_800_000_000_000),
		Children: []ike.ChildState{{InSPI: 0xc0000001, OutSPI: 0x1234, OutSeqReserved: 1 << 33, InSeqLow: 99, SeqBlock: 1 << 14}}}
	keys, err := statestore.NewKeyring(1, make([]byte, statestore.ClusterKeyLen))
	if err != nil {
		t.Fatal(err)
	}
	c := statestore.Codec{Keys: keys}
	b, err := c.Marshal("sa/x", recordOf(st), statestore.Binding{CreateRevision: 1, Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Unmarshal("sa/x", b, statestore.Binding{CreateRevision: 1, Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := stateOf(r)
	ch := got.Children[0]
	if got.NextOutReserved != 23 || !got.MsgIDSync || !got.MOBIKE || got.PeerFrag ||
		ch.OutSeqReserved != 1<<33 || ch.InSeqLow != 99 || ch.SeqBlock != 1<<14 {
		t.Fatalf("after the round trip: %+v", got)
	}
}

// The connection's origin survives a record; a record without it (an
// earlier release's, Initiator set by an IKE rekey the node started) is
// a gateway's.
func TestRecordKeepsOrigin(t *testing.T) {
	for _, c := range []struct{ in, want ike.Origin }{
		{ike.OriginPeer, ike.OriginPeer}, {ike.OriginUs, ike.OriginUs}, {ike.OriginUnknown, ike.OriginPeer},
	} {
		st := &ike.SAState{SPIi: 1, SPIr: 2, Initiator: true, Origin: c.in}
		if got := stateOf(recordOf(st)).Origin; got != c.want {
			t.Errorf("origin %v came back as %v, want %v", c.in, got, c.want)
		}
	}
}
