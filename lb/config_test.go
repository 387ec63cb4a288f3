package lb

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func bgpConfig() Config {
	c := DefaultConfig()
	c.Mode = ModeBGP
	c.BGP.ASN = 65001
	c.BGP.RouterID = "10.0.0.1"
	c.BGP.Neighbors = []NeighborConfig{{Address: "10.0.0.254", ASN: 65000}}
	return c
}

func TestConfigValidateNamesField(t *testing.T) {
	listen := []netip.Addr{netip.MustParseAddr("198.51.100.10")}
	cases := []struct {
		field string
		mod   func(*Config)
	}{
		{"mode", func(c *Config) { c.Mode = "ospf" }},
		{"addresses[0]", func(c *Config) { c.Addresses = []string{"nope"} }},
		{"inner_prefixes[0]", func(c *Config) { c.InnerPrefixes = []string{"10.1.0.1/16"} }},
		{"bgp.asn", func(c *Config) { c.BGP.ASN = 0 }},
		{"bgp.router_id", func(c *Config) { c.BGP.RouterID = "::1" }},
		{"bgp.hold_time", func(c *Config) { c.BGP.HoldTime = 2 * time.Second }},
		{"bgp.neighbors", func(c *Config) { c.BGP.Neighbors = nil }},
		{"bgp.neighbors[0].address", func(c *Config) { c.BGP.Neighbors[0].Address = "x" }},
		{"bgp.neighbors[0].asn", func(c *Config) { c.BGP.Neighbors[0].ASN = 0 }},
		{"bgp.neighbors[0].passive", func(c *Config) { c.BGP.Neighbors[0].Passive = true }},
		{"bgp.neighbors[0].local_address", func(c *Config) { c.BGP.Neighbors[0].LocalAddress = "2001:db8::1" }},
		{"bgp.next_hop6", func(c *Config) { c.Addresses = []string{"2001:db8::10"} }},
		{"health.fall", func(c *Config) { c.Health.Fall = 0 }},
		{"health.queue_fill", func(c *Config) { c.Health.QueueFill = 1.5 }},
		{"drain.grace_period", func(c *Config) { c.Drain.GracePeriod = 0 }},
		{"drain.settle", func(c *Config) { c.Drain.Settle = time.Hour }},
		{"members.listen", func(c *Config) { c.Members.Join = []string{"10.0.0.2:7946"} }},
		{"members.advertise", func(c *Config) {
			c.Members.Listen, c.Members.Advertise, c.Members.SecretKeyFile = ":7946", "0.0.0.0:7946", "/k"
		}},
		// Gossip off loopback only encrypted and authenticated.
		{"members.secret_key_file", func(c *Config) { c.Members.Listen = ":7946" }},
		{"members.secret_key_file", func(c *Config) { c.Members.Listen = "10.0.0.1:7946" }},
		{"kernel.interface", func(c *Config) { c.Mode, c.Kernel.Interface = ModeKernel, "" }},
	}
	base := bgpConfig()
	if err := base.Validate(listen); err != nil {
		t.Fatalf("base: %v", err)
	}
	for _, tc := range cases {
		c := bgpConfig()
		tc.mod(&c)
		err := c.Validate(listen)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: got %v, want an error naming %s", tc.field, err, tc.field)
		}
	}
	for _, m := range []MembersConfig{{Listen: "127.0.0.1:7946"}, {Listen: "[::1]:7946"}, {Listen: "10.0.0.1:7946", SecretKeyFile: "/k"}} {
		c := bgpConfig()
		c.Members = m
		if err := c.Validate(listen); err != nil {
			t.Errorf("members %+v: %v", m, err)
		}
	}
	// Nothing to announce with a wildcard listen address.
	c := bgpConfig()
	var fe *FieldError
	if err := c.Validate([]netip.Addr{netip.IPv4Unspecified()}); !errors.As(err, &fe) || fe.Field != "addresses" {
		t.Errorf("wildcard listen: %v", err)
	}
}

func TestPrefixes(t *testing.T) {
	c := bgpConfig()
	c.InnerPrefixes = []string{"10.99.0.0/16"}
	ps, err := c.Prefixes([]netip.Addr{netip.MustParseAddr("198.51.100.10"), netip.IPv6Unspecified(), netip.MustParseAddr("2001:db8::a")})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"198.51.100.10/32", "2001:db8::a/128", "10.99.0.0/16"}
	if len(ps) != len(want) {
		t.Fatalf("%v, want %v", ps, want)
	}
	for i := range want {
		if ps[i].String() != want[i] {
			t.Fatalf("%v, want %v", ps, want)
		}
	}
}
