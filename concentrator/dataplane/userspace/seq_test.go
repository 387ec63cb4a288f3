package userspace

import (
	"context"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/esp"
)

// drainProgress returns the reports queued now. Reports are queued by the
// SA's worker before the packet that caused them leaves it, so once a
// packet has been delivered its report is already here.
func drainProgress(d *DataPlane) []dataplane.SeqProgress {
	var out []dataplane.SeqProgress
	for {
		select {
		case p := <-d.SeqProgress():
			out = append(out, p)
		default:
			return out
		}
	}
}

func lastSentSeq(t *testing.T, w *wire) uint32 {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.sent) == 0 {
		t.Fatal("nothing sent")
	}
	h, err := esp.ParseHeader(w.sent[len(w.sent)-1])
	if err != nil {
		t.Fatal(err)
	}
	return h.Seq
}

// TestSeqOutbound: an SA installed with OutSeq=N sends N+1 first; it
// stops at OutSeqLimit (drops counted as seq_reservation), reports its
// progress once when it reaches limit-margin, and after SetSeqLimit
// carries on with the next number and reports once more at the new
// threshold.
func TestSeqOutbound(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000011, 0x61000011, 11)
	cc.OutSeq, cc.OutSeqLimit, cc.OutSeqMargin = 5000, 5010, 4
	gc.InSeqLow = 4990
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	send := func(i int) bool { // true if delivered
		down := ipv4Packet("10.30.0.1", "10.20.0.1", 17, []byte{byte(i)})
		before := r.conc.Stats().Drops["seq_reservation"]
		r.concDev.toDP <- down
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-r.gwDev.fromDP:
				return true
			case <-time.After(time.Millisecond):
			}
			if r.conc.Stats().Drops["seq_reservation"] > before {
				return false
			}
		}
		t.Fatalf("packet %d neither delivered nor refused", i)
		return false
	}
	if !send(0) {
		t.Fatal("first packet refused")
	}
	if got := lastSentSeq(t, r.concWire); got != 5001 {
		t.Fatalf("first packet carries %d, want OutSeq+1 = 5001", got)
	}
	if p := drainProgress(r.conc); len(p) != 0 {
		t.Fatalf("reports before the threshold: %+v", p)
	}
	delivered := 1
	for i := 1; i < 15; i++ {
		if send(i) {
			delivered++
		}
	}
	// margin = max(4, grant/2 = 5) = 5: one report at 5005.
	if delivered != 10 {
		t.Fatalf("%d packets delivered under limit 5010 from 5000, want 10", delivered)
	}
	if d := r.conc.Stats().Drops["seq_reservation"]; d != 5 {
		t.Fatalf("seq_reservation drops %d, want 5", d)
	}
	p := drainProgress(r.conc)
	if len(p) != 1 || p[0].InSPI != cc.InSPI || p[0].OutSeq != 5005 {
		t.Fatalf("reports %+v, want one at OutSeq 5005", p)
	}
	if lastSentSeq(t, r.concWire) != 5010 {
		t.Fatal("sent past the limit")
	}

	if err := r.conc.SetSeqLimit(ctx, cc.InSPI, 5110); err != nil {
		t.Fatal(err)
	}
	if err := r.conc.SetSeqLimit(ctx, 0xdead, 1); err == nil {
		t.Fatal("SetSeqLimit of an SA that is not installed")
	}
	if !send(100) {
		t.Fatal("refused after raising the limit")
	}
	if got := lastSentSeq(t, r.concWire); got != 5011 {
		t.Fatalf("after SetSeqLimit the next packet carries %d, want 5011", got)
	}
	// Grant 105 from the last report (5005): margin 52, threshold 5058.
	for i := 0; i < 60; i++ {
		if !send(i) {
			t.Fatalf("packet %d refused under the new limit", i)
		}
	}
	p = drainProgress(r.conc)
	if len(p) != 1 || p[0].OutSeq != 5058 {
		t.Fatalf("reports %+v, want one at OutSeq 5058", p)
	}
	l, _ := r.conc.List(ctx)
	if len(l) != 1 || l[0].OutSeq != 5071 || l[0].OutSeqLimit != 5110 {
		t.Fatalf("List: OutSeq %d limit %d, want 5071 and 5110", l[0].OutSeq, l[0].OutSeqLimit)
	}
}

// TestSeqInbound: an SA installed with InSeqLow=L refuses the peer's
// packets up to L (as replays) and delivers those above; it reports inbound
// progress each 2*margin numbers.
func TestSeqInbound(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000012, 0x61000012, 12)
	const low = 70000
	cc.InSeqLow, cc.OutSeqMargin = low, 4 // no limit: margin 4, inbound step 8
	gc.OutSeq = low - 5
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r.gwDev.toDP <- ipv4Packet("10.20.0.1", "10.30.0.1", 1, []byte{byte(i)})
	}
	waitDrops(t, r.conc, "replay", 5)
	var got []dataplane.SeqProgress
	for i := 1; i <= 20; i++ {
		up := ipv4Packet("10.20.0.1", "10.30.0.1", 1, []byte{byte(i)})
		r.gwDev.toDP <- up
		recv(t, r.concDev.fromDP)
		got = append(got, drainProgress(r.conc)...)
	}
	if len(got) != 2 || got[0].InSeq != low+8 || got[1].InSeq != low+16 || got[0].OutSeq != 0 {
		t.Fatalf("inbound reports %+v, want at %d and %d", got, low+8, low+16)
	}
	if d := r.conc.Stats().Drops["replay"]; d != 5 {
		t.Fatalf("replay drops %d, want 5 (numbers %d..%d)", d, low-4, low)
	}
}

// TestSeqNoLimit: without a limit nothing is refused and no outbound
// report comes; a limit without ESN is capped at 2^32-1.
func TestSeqNoLimit(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000013, 0x61000013, 13)
	cc.OutSeq = 1<<32 - 4
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		r.concDev.toDP <- ipv4Packet("10.30.0.1", "10.20.0.1", 17, []byte{byte(i)})
		recv(t, r.gwDev.fromDP)
	}
	if p := drainProgress(r.conc); len(p) != 0 {
		t.Fatalf("reports without a limit: %+v", p)
	}
	if err := r.conc.SetSeqLimit(ctx, cc.InSPI, 1<<40); err != nil {
		t.Fatal(err)
	}
	l, _ := r.conc.List(ctx)
	if l[0].OutSeqLimit != 1<<32-1 {
		t.Fatalf("limit %d without ESN, want 2^32-1", l[0].OutSeqLimit)
	}
	r.concDev.toDP <- ipv4Packet("10.30.0.1", "10.20.0.1", 17, nil)
	recv(t, r.gwDev.fromDP)
	if got := lastSentSeq(t, r.concWire); got != 1<<32-1 {
		t.Fatalf("last packet %d", got)
	}
	r.concDev.toDP <- ipv4Packet("10.30.0.1", "10.20.0.1", 17, nil)
	waitDrops(t, r.conc, "seq_overflow", 1)
}

// TestFencedStopsOutbound: while fenced, outbound packets are dropped
// before they take a sequence number; after SetFenced(false) the next
// packet carries the number after the last one sent.
func TestFencedStopsOutbound(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000021, 0x61000021, 21)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	send := func(i int) bool { // true if delivered, false if dropped as fenced
		down := ipv4Packet("10.30.0.1", "10.20.0.1", 17, []byte{byte(i)})
		before := r.conc.Stats().Drops["fenced"]
		r.concDev.toDP <- down
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-r.gwDev.fromDP:
				return true
			case <-time.After(time.Millisecond):
			}
			if r.conc.Stats().Drops["fenced"] > before {
				return false
			}
		}
		t.Fatalf("packet %d neither delivered nor dropped", i)
		return false
	}
	if !send(0) {
		t.Fatal("dropped before the fence")
	}
	r.conc.SetFenced(true)
	for i := 1; i <= 3; i++ {
		if send(i) {
			t.Fatalf("packet %d sent while fenced", i)
		}
	}
	r.conc.SetFenced(false)
	if !send(4) {
		t.Fatal("dropped after the fence was lifted")
	}
	if got := lastSentSeq(t, r.concWire); got != 2 {
		t.Fatalf("first packet after the fence carries %d, want 2", got)
	}
}
