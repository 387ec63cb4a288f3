package concentrator

import (
	"slices"
	"testing"
)

// A batch that sent a claim back to the queue at once (its owner changed
// under it: the owner answered that it no longer holds the SA) does not
// count it as left unsettled when that claim already runs in the next
// batch: only the claims still running in the batch itself are.
func TestClaimsUnsettledPerBatch(t *testing.T) {
	var c claims
	c.init()
	c.parked[1] = &claim{state: claimRunning, batch: 1} // batch 1 never settled it
	c.parked[2] = &claim{state: claimRunning, batch: 2} // sent back by batch 1, running in batch 2
	c.parked[3] = &claim{state: claimIdle}              // sent back, waiting for its retry
	c.parked[4] = &claim{state: claimQueued}            // sent back at once, queued
	if got := c.unsettled(1, []uint64{1, 2, 3, 4, 5}); !slices.Equal(got, []uint64{1}) {
		t.Errorf("batch 1 left %x unsettled, want [1]", got)
	}
	if got := c.unsettled(2, []uint64{2}); !slices.Equal(got, []uint64{2}) {
		t.Errorf("batch 2 left %x unsettled, want [2]", got)
	}
}
