//go:build linux

package e2e

import (
	"net/netip"
	"testing"
)

// TestSpreaderPlacement checks the router's placement without a router:
// every node gets flows, removing a node moves only that node's flows,
// a pinned flow stays where it was moved until its node goes, and a node
// coming back gets exactly its old flows again.
func TestSpreaderPlacement(t *testing.T) {
	var flows []Flow
	nat := netip.MustParseAddr(ClusterNATPublic)
	for i := 1; i <= 200; i++ {
		flows = append(flows, Flow{Src: netip.AddrPortFrom(nat, uint16(40000+i)), DPort: 4500})
	}
	s := &nftSpreader{flows: flows, nodes: []int{1, 2, 3}, pinned: map[Flow]int{}}
	before := map[Flow]int{}
	count := map[int]int{}
	for _, f := range flows {
		before[f] = s.NodeOf(f)
		count[before[f]]++
	}
	for n := 1; n <= 3; n++ {
		if count[n] < 30 { // 200 flows over 3 nodes: far from even would be a broken hash
			t.Errorf("node %d gets %d of 200 flows: %v", n, count[n], count)
		}
	}

	pinned := flows[0]
	to := before[pinned]%3 + 1
	if err := s.pin(pinned, to); err != nil {
		t.Fatal(err)
	}
	if err := s.pin(pinned, 4); err == nil {
		t.Error("a flow pinned to a node that is not there")
	}
	if got := s.NodeOf(pinned); got != to {
		t.Fatalf("pinned flow on node %d, want %d", got, to)
	}

	// Node 2 goes: its flows (and a flow pinned to it) move, no other does.
	if err := s.setNodes([]int{3, 1}); err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		got, was := s.NodeOf(f), before[f]
		if f == pinned && to != 2 {
			was = to
		}
		switch {
		case got == 2:
			t.Fatalf("flow %v still on the removed node", f)
		case was != 2 && got != was:
			t.Errorf("flow %v moved from node %d to %d though its node stayed", f, was, got)
		}
	}

	// Node 2 comes back: the flows it had return to it, the others stay.
	if err := s.setNodes([]int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f == pinned {
			continue
		}
		if got := s.NodeOf(f); got != before[f] {
			t.Errorf("flow %v on node %d after node 2 came back, want %d", f, got, before[f])
		}
	}
}
