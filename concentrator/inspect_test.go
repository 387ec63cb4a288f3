package concentrator

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// An SA event's log line has the fields operators grep for, formatted as
// they were with fmt (SPIs zero-padded hex, the shard a number, encap a
// boolean).
func TestEventLogLine(t *testing.T) {
	peer, err := ike.ParseIdentity("gw7@iot.example")
	if err != nil {
		t.Fatal(err)
	}
	ev := ike.Event{Kind: ike.EventIKEEstablished, SPIi: 0xab, SPIr: 0x1234567890abcdef,
		Remote: netip.MustParseAddrPort("192.0.2.7:4500"), PeerID: peer, Proposal: "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE_25519",
		Child: &ike.ChildSA{InSPI: 0xc1, OutSPI: 0xdeadbeef, Encap: true, VirtualIP: netip.MustParseAddr("10.112.0.9")}}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, ev.Kind.String(), eventAttrs(&shard{id: 3}, ev)...)
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	want := map[string]any{"spi_i": "00000000000000ab", "spi_r": "1234567890abcdef", "peer": "192.0.2.7:4500", "shard": 3.0,
		"peer_id": "gw7@iot.example", "proposal": ev.Proposal, "spi_in": "000000c1", "spi_out": "deadbeef", "encap": true, "vip": "10.112.0.9"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v (line %s)", k, got[k], v, buf.Bytes())
		}
	}
	for _, k := range []string{"ts_local", "ts_remote", "esp"} {
		if _, ok := got[k]; !ok {
			t.Errorf("no %s in %s", k, buf.Bytes())
		}
	}
}

// BenchmarkEventLogLine: one SA event's JSON log line (three per SA's
// life: established, CHILD_SA installed, deleted), on the shard's
// goroutine.
func BenchmarkEventLogLine(b *testing.B) {
	peer, err := ike.ParseIdentity("gw7@iot.example")
	if err != nil {
		b.Fatal(err)
	}
	ev := ike.Event{Kind: ike.EventChildInstalled, SPIi: 0xab, SPIr: 0x1234567890abcdef,
		Remote: netip.MustParseAddrPort("192.0.2.7:4500"), PeerID: peer,
		Child: &ike.ChildSA{InSPI: 0xc1, OutSPI: 0xdeadbeef, Encap: true, VirtualIP: netip.MustParseAddr("10.112.0.9")}}
	l := slog.New(slog.NewJSONHandler(io.Discard, nil))
	s := &shard{id: 3}
	b.ReportAllocs()
	for b.Loop() {
		l.LogAttrs(context.Background(), slog.LevelInfo, ev.Kind.String(), eventAttrs(s, ev)...)
	}
}
