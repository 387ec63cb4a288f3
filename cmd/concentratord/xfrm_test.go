package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator"
)

// Every configured pool is routed as a whole by the kernel data plane,
// children.pool6 included (its peers' /128s need no route each).
func TestXFRMPools(t *testing.T) {
	var cfg concentrator.Config
	cfg.Children.Pool, cfg.Children.Pool6 = "10.99.0.0/16", "fd00:99::5/112"
	cfg.Policies = []concentrator.PolicyConfig{{Pool: "10.98.0.0/24"}, {Pool: "10.99.0.0/16"}, {}}
	want := []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("fd00:99::/112"), netip.MustParsePrefix("10.98.0.0/24")}
	if got := xfrmPools(cfg); !slices.Equal(got, want) {
		t.Errorf("pools %v, want %v", got, want)
	}
}
