//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// AddGateway adds another gateway namespace behind the topology's NAT:
// <prefix>-<name> with wan0 10.10.<subnet>.2/24, default route via the
// NAT's nat-<name> 10.10.<subnet>.1, an inner LAN lan0 10.20.<subnet>.1/24
// (strongSwan routes its traffic selectors from it), masqueraded out of
// nat-conc like gw
// (so the concentrator sees both gateways at NATPublicAddr, on different
// ports). name starts with gw and has at most 8 characters; subnet 2..254. It returns the
// namespace and the gateway's address; the namespace is removed at cleanup,
// after the processes started in it.
func (tp *Topology) AddGateway(t testing.TB, name string, subnet int) (ns, addr string) {
	t.Helper()
	// The NAT forwards what comes in on nat-gw* only.
	if len(name) > 8 || !strings.HasPrefix(name, "gw") || subnet < 2 || subnet > 254 {
		t.Fatalf("AddGateway(%q, %d): a name of at most 8 characters starting with gw, subnet 2..254", name, subnet)
	}
	ns = tp.prefix + name
	addr = fmt.Sprintf("10.10.%d.2", subnet)
	natAddr := fmt.Sprintf("10.10.%d.1", subnet)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			return
		}
		if pids := nsPids(ns); len(pids) > 0 {
			killPids(pids)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := run(ctx, nil, "ip", "netns", "del", ns); err != nil {
			t.Logf("gateway %s: %v", ns, err)
		}
	})
	for _, c := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", "nat-" + name, "netns", tp.NAT},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "wan0"},
		{"-n", tp.NAT, "addr", "add", natAddr + "/24", "dev", "nat-" + name},
		{"-n", ns, "link", "set", "wan0", "up"},
		{"-n", tp.NAT, "link", "set", "nat-" + name, "up"},
		{"-n", ns, "route", "add", "default", "via", natAddr},
		{"-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0-peer"},
		{"-n", ns, "addr", "add", fmt.Sprintf("10.20.%d.1/24", subnet), "dev", "lan0"},
		{"-n", ns, "link", "set", "lan0", "up"},
		{"-n", ns, "link", "set", "lan0-peer", "up"},
	} {
		if _, err := run(ctx, nil, "ip", c...); err != nil {
			t.Fatalf("gateway %s: %v", ns, err)
		}
	}
	if err := tp.Sysctl(ctx, ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		t.Fatal(err)
	}
	return ns, addr
}
