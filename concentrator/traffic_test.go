package concentrator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/loadtest"
)

// countingDP is the memory data plane with inbound ESP counts
// (dataplane.TrafficCounter): every other SA, in the order of their first
// questions, "receives" a packet before each question; the others none.
type countingDP struct {
	*memory.DataPlane
	mu    sync.Mutex
	asked map[uint32]uint64
	esp   map[uint32]bool
}

func (d *countingDP) InboundPackets(_ context.Context, inSPIs []uint32, packets []uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, spi := range inSPIs {
		if _, ok := d.esp[spi]; !ok {
			d.esp[spi] = len(d.esp)%2 == 0
		}
		d.asked[spi]++
		packets[i] = 0
		if d.esp[spi] {
			packets[i] = d.asked[spi]
		}
	}
}

var _ dataplane.TrafficCounter = (*countingDP)(nil)

// TestLivenessChecksAskTheDataPlane: with the embedded store (a liveness
// check may need a message ID reservation written first), the node asks
// its data plane for the SAs' inbound ESP when their checks are due and
// sends only those of SAs without any; the gateways answer them and keep
// their SAs.
func TestLivenessChecksAskTheDataPlane(t *testing.T) {
	const gws = 10
	dir := t.TempDir()
	cfg, err := ParseConfig([]byte(nodeConfig(gws, "  dpd_delay: 1s\n", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", dir, dir))))
	if err != nil {
		t.Fatal(err)
	}
	dp := &countingDP{DataPlane: memory.New(), asked: map[uint32]uint64{}, esp: map[uint32]bool{}}
	n, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { done <- n.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-n.Ready()
	o := loadOptions(t, n, gws)
	o.Hold = 5 * time.Second
	rep, err := loadtest.Run(ctx, o)
	if err != nil || rep.Established != gws || rep.Deleted != gws {
		t.Fatalf("%v: %+v", err, rep)
	}
	st, err := n.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	odd, even := 0, 0
	for spi, k := range dp.asked {
		if dp.esp[spi] {
			odd += int(k)
		} else {
			even += int(k)
		}
	}
	dp.mu.Unlock()
	t.Logf("questions: %d for SAs with ESP, %d for SAs without; checks sent %d, not needed %d, dead %d", odd, even, st.DPDSent, st.DPDTraffic, st.DPDDead)
	if odd == 0 || even == 0 {
		t.Fatalf("questions: %d and %d, want some for both kinds of SA", odd, even)
	}
	// Each question is answered by one outcome, but a question asked as
	// its SA is deleted at the end of the hold may find it gone (at most
	// one per gateway).
	sent, skipped := int(st.DPDSent), int(st.DPDTraffic)
	if skipped == 0 || skipped > odd || sent == 0 || sent > even || sent+skipped < odd+even-gws || st.DPDDead != 0 {
		t.Errorf("checks sent %d (want up to %d, one per question about an SA without ESP), not needed %d (want up to %d), together at least %d; dead %d",
			sent, even, skipped, odd, odd+even-gws, st.DPDDead)
	}
}
