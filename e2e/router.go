//go:build linux

package e2e

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Flow is one UDP flow towards the cluster's service address as the router
// sees it: after the gateways' NAT, so Src is the NAT's public address and
// the port it mapped the gateway's socket to. The destination address (the
// service address) and the protocol (UDP) are the same for every flow.
type Flow struct {
	Src   netip.AddrPort
	DPort uint16 // 500 or 4500
}

func (f Flow) String() string { return fmt.Sprintf("%s->:%d", f.Src, f.DPort) }

// FlowSpreader is the router's spreading of flows over the nodes that share
// the service address: ECMP as the network does it. Nodes are numbered from
// 1. The nftables implementation (nftSpreader) places every flow it knows
// explicitly; a BGP router with multipath routes can stand in for it (then
// Move and NodeOf are what its hash does, or unsupported).
type FlowSpreader interface {
	// SetNodes sets the nodes that receive flows: flows of a node left
	// out move to the others, as a routing daemon re-spreads when a
	// node's session drops; flows of nodes kept stay where they are.
	SetNodes(ctx context.Context, nodes []int) error
	// Move steers one flow to node (one of the current nodes): the next
	// packet of the flow goes there.
	Move(ctx context.Context, f Flow, node int) error
	// NodeOf returns the node the flow's next packet goes to.
	NodeOf(f Flow) int
}

// nftSpreader spreads flows in the router namespace with nftables: a rule
// in prerouting marks each packet to the service address with its node's
// number, taken from a map keyed by the flow (source address, source port,
// destination port), and policy routing sends mark k to node k (ip rule
// fwmark k -> table 100+k, whose only route is the service address via
// node k). The map holds every flow the harness knows (the gateways'
// ports behind the NAT are fixed); a flow of a node no longer listed moves
// by rendezvous hashing to another node, so the flows of the other nodes
// stay put, as with resilient ECMP. A flow the map lacks (one the harness
// did not predict) falls through to jhash over the current nodes and is
// counted (counter "unknown"), so a wrong prediction is visible.
type nftSpreader struct {
	ns    string
	vip   string
	tp    *Topology
	flows []Flow

	mu     sync.Mutex
	nodes  []int
	pinned map[Flow]int
}

const spreaderTable = "ikfspread"

// newNftSpreader installs policy routing for nodes 1..len(nodeAddrs) (node
// k at nodeAddrs[k-1]) and the spreading of flows over all of them.
func newNftSpreader(ctx context.Context, tp *Topology, ns, vip string, nodeAddrs []string, flows []Flow) (*nftSpreader, error) {
	s := &nftSpreader{ns: ns, vip: vip, tp: tp, flows: flows, pinned: map[Flow]int{}}
	for k, addr := range nodeAddrs {
		table := fmt.Sprint(101 + k)
		for _, c := range [][]string{
			{"-n", ns, "route", "add", vip + "/32", "via", addr, "table", table},
			{"-n", ns, "rule", "add", "fwmark", fmt.Sprint(k + 1), "table", table},
		} {
			if _, err := run(ctx, nil, "ip", c...); err != nil {
				return nil, err
			}
		}
		s.nodes = append(s.nodes, k+1)
	}
	return s, s.apply(ctx)
}

func (s *nftSpreader) SetNodes(ctx context.Context, nodes []int) error {
	if err := s.setNodes(nodes); err != nil {
		return err
	}
	return s.apply(ctx)
}

// setNodes is SetNodes without touching the router.
func (s *nftSpreader) setNodes(nodes []int) error {
	if len(nodes) == 0 {
		return fmt.Errorf("spreader: no nodes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes = slices.Clone(nodes)
	slices.Sort(s.nodes)
	for f, n := range s.pinned {
		if !slices.Contains(s.nodes, n) {
			delete(s.pinned, f)
		}
	}
	return nil
}

func (s *nftSpreader) Move(ctx context.Context, f Flow, node int) error {
	if err := s.pin(f, node); err != nil {
		return err
	}
	return s.apply(ctx)
}

// pin is Move without touching the router.
func (s *nftSpreader) pin(f Flow, node int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.nodes, node) {
		return fmt.Errorf("spreader: node %d is not one of %v", node, s.nodes)
	}
	s.pinned[f] = node
	return nil
}

func (s *nftSpreader) NodeOf(f Flow) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeOfLocked(f)
}

// nodeOfLocked: a pinned flow's node, else the current node with the
// highest hash of (flow, node) — rendezvous hashing.
func (s *nftSpreader) nodeOfLocked(f Flow) int {
	if n, ok := s.pinned[f]; ok {
		return n
	}
	best, bestScore := 0, uint64(0)
	for _, n := range s.nodes {
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%d/%d", f.Src, f.DPort, n)
		if sc := h.Sum64(); best == 0 || sc > bestScore {
			best, bestScore = n, sc
		}
	}
	return best
}

// apply replaces the marking rules in one nftables transaction: a packet
// sees either the old placement or the new one.
func (s *nftSpreader) apply(ctx context.Context) error {
	s.mu.Lock()
	var elems []string
	for _, f := range s.flows {
		elems = append(elems, fmt.Sprintf("%s . %d . %d : %d", f.Src.Addr(), f.Src.Port(), f.DPort, s.nodeOfLocked(f)))
	}
	var buckets []string
	for i, n := range s.nodes {
		buckets = append(buckets, fmt.Sprintf("%d : %d", i, n))
	}
	nodes := len(s.nodes)
	s.mu.Unlock()

	var b strings.Builder
	fmt.Fprintf(&b, "table ip %[1]s {\n  counter unknown { }\n  chain pre {\n    type filter hook prerouting priority mangle; policy accept;\n  }\n}\n", spreaderTable)
	fmt.Fprintf(&b, "flush chain ip %s pre\n", spreaderTable)
	if len(elems) > 0 {
		fmt.Fprintf(&b, "add rule ip %s pre ip daddr %s udp dport { 500, 4500 } meta mark set ip saddr . udp sport . udp dport map { %s }\n",
			spreaderTable, s.vip, strings.Join(elems, ", "))
	}
	fmt.Fprintf(&b, "add rule ip %s pre ip daddr %s meta l4proto udp meta mark 0 counter name \"unknown\" meta mark set jhash ip saddr . udp sport mod %d map { %s }\n",
		spreaderTable, s.vip, nodes, strings.Join(buckets, ", "))
	if out, err := run(ctx, strings.NewReader(b.String()), "ip", "netns", "exec", s.ns, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("spreader: %w\n%s\n%s", err, out, b.String())
	}
	return nil
}

// Unknown returns how many packets to the service address belonged to
// flows the spreader did not know (they were spread by jhash).
func (s *nftSpreader) Unknown(ctx context.Context) (string, error) {
	out, err := s.tp.Exec(ctx, s.ns, "nft", "list", "counter", "ip", spreaderTable, "unknown")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "packets" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("spreader: no packets in %q", out)
}
