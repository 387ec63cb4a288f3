package xfrm

import (
	"maps"
	"testing"
)

func TestParseXfrmStat(t *testing.T) {
	in := "XfrmInError             \t0\nXfrmInNoStates          \t12\nXfrmOutStateSeqError    \t3\n" +
		"garbage\nXfrmBad x\nXfrm 1\nXfrmFwdHdrError\t7\n"
	got := ParseXfrmStat([]byte(in))
	want := map[string]uint64{"in_error": 0, "in_no_states": 12, "out_state_seq_error": 3, "fwd_hdr_error": 7}
	if !maps.Equal(got, want) {
		t.Fatalf("ParseXfrmStat = %v, want %v", got, want)
	}
}
