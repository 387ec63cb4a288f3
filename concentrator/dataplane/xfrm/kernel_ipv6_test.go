//go:build linux

package xfrm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newPair6 is newPair over IPv6: conc 2001:db8:100::2/64 and gw
// 2001:db8:100::1/64 on the veth, gw's outer address 2001:db8:1::2 routed
// on conc via gw's link address (so conc's route to the peer has an IPv6
// gateway), and an inner address of each family on lo: conc 10.30.0.1 and
// fd00:30::1, gw 10.20.0.1 and fd00:20::1. It returns the inner IPv6
// addresses beside the sides (whose inner field is IPv4).
func newPair6(t *testing.T) (conc, gw *side, conc6, gw6 netip.Addr) {
	t.Helper()
	conc = &side{ns: newNS(t), outer: netip.MustParseAddr("2001:db8:100::2"), inner: netip.MustParseAddr("10.30.0.1"), dev: "conc0"}
	gw = &side{ns: newNS(t), outer: netip.MustParseAddr("2001:db8:1::2"), inner: netip.MustParseAddr("10.20.0.1"), dev: "gw0"}
	conc6, gw6 = netip.MustParseAddr("fd00:30::1"), netip.MustParseAddr("fd00:20::1")
	gwLink := netip.MustParseAddr("2001:db8:100::1")
	joinSides(t, conc, gw)
	for _, c := range []struct {
		s      *side
		dev    string
		prefix netip.Prefix
	}{
		{conc, conc.dev, netip.MustParsePrefix("2001:db8:100::2/64")},
		{conc, "lo", netip.PrefixFrom(conc.inner, 32)},
		{conc, "lo", netip.PrefixFrom(conc6, 128)},
		{gw, gw.dev, netip.PrefixFrom(gwLink, 64)},
		{gw, gw.dev, netip.PrefixFrom(gw.outer, 64)},
		{gw, "lo", netip.PrefixFrom(gw.inner, 32)},
		{gw, "lo", netip.PrefixFrom(gw6, 128)},
	} {
		l, err := c.s.h.LinkByName(c.dev)
		if err != nil {
			t.Fatal(err)
		}
		a := &net.IPNet{IP: ipOf(c.prefix.Addr()), Mask: net.CIDRMask(c.prefix.Bits(), c.prefix.Addr().BitLen())}
		if err := c.s.h.AddrAdd(l, &netlink.Addr{IPNet: a, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("%s: address %s: %v", c.dev, c.prefix, err)
		}
		if err := c.s.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	// conc reaches gw's outer address through gw's link address: a
	// gateway of the outer family, which an IPv4 inner route cannot use.
	dev, err := conc.h.LinkByName(conc.dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := conc.h.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("2001:db8:1::/64")), Gw: ipOf(gwLink)}); err != nil {
		t.Fatalf("conc: route to gw's outer network: %v", err)
	}
	return conc, gw, conc6, gw6
}

// TestKernelIPv6: one CHILD SA with IPv4 and IPv6 selectors (10.30.0.0/24
// + fd00:30::/64 === 10.20.0.0/24 + fd00:20::/64) over IPv6 outer
// addresses, installed on both ends by this package, as ESP-in-UDP and as
// plain ESP. The states are IPv6 (encapsulated or not as the SA says), the
// policies one triple per inner family with IPv6 templates, the routes one
// per inner family: the IPv6 one through the IPv6 gateway, the IPv4 one
// (which cannot have an IPv6 gateway) on the interface. Datagrams of both
// families cross the tunnel both ways and the kernel counters see them.
func TestKernelIPv6(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	for i, encap := range []bool{true, false} {
		name := map[bool]string{true: "espinudp", false: "plain-esp"}[encap]
		t.Run(name, func(t *testing.T) {
			conc, gw, conc6, gw6 := newPair6(t)
			dc := conc.dataplane(t, nil)
			dg := gw.dataplane(t, nil)
			if encap {
				conc.espSocket(t, 4500)
				gw.espSocket(t, 4501)
			}
			sa := dualStackSA(encap)
			sa.InSPI, sa.OutSPI = 0xc6000001+uint32(i), 0x06000001+uint32(i)
			sa.Local = netip.AddrPortFrom(conc.outer, sa.Local.Port())
			sa.Remote = netip.AddrPortFrom(gw.outer, map[bool]uint16{true: 4501, false: 0}[encap])
			if err := dc.Install(ctx, sa); err != nil {
				t.Fatalf("conc: install: %v", err)
			}
			if err := dg.Install(ctx, mirror(sa)); err != nil {
				t.Fatalf("gw: install: %v", err)
			}

			states, err := conc.h.XfrmStateList(netlink.FAMILY_ALL)
			if err != nil {
				t.Fatal(err)
			}
			if len(states) != 2 {
				t.Fatalf("conc: %d states, want 2", len(states))
			}
			for _, st := range states {
				if st.Src.To4() != nil || st.Dst.To4() != nil || (st.Encap != nil) != encap {
					t.Errorf("conc: state %08x %v -> %v encap %v: want IPv6, encapsulated %v", uint32(st.Spi), st.Src, st.Dst, st.Encap, encap)
				}
			}
			pols, err := dc.policies()
			if err != nil {
				t.Fatal(err)
			}
			v4, v6 := 0, 0
			for _, p := range pols {
				switch {
				case p.Dst.IP.To4() != nil && p.Src.IP.To4() != nil:
					v4++
				case p.Dst.IP.To4() == nil && p.Src.IP.To4() == nil:
					v6++
				}
				if len(p.Tmpls) != 1 || p.Tmpls[0].Src.To4() != nil || p.Tmpls[0].Dst.To4() != nil {
					t.Errorf("conc: policy %v -> %v: templates %+v, want one with IPv6 addresses", p.Src, p.Dst, p.Tmpls)
				}
			}
			if v4 != 3 || v6 != 3 {
				t.Errorf("conc: %d IPv4 and %d IPv6 policies, want 3 and 3: %v", v4, v6, pols)
			}
			if r := routeTo(t, conc.h, "10.20.0.0/24"); r == nil || r.Gw != nil || r.Protocol != dc.opts.RouteProtocol || !r.Src.Equal(ipOf(conc.inner)) {
				t.Errorf("conc: IPv4 route %+v, want protocol %d, no gateway, src %s", r, dc.opts.RouteProtocol, conc.inner)
			}
			if r := routeTo(t, conc.h, "fd00:20::/64"); r == nil || !r.Gw.Equal(net.ParseIP("2001:db8:100::1")) || !r.Src.Equal(ipOf(conc6)) {
				t.Errorf("conc: IPv6 route %+v, want via 2001:db8:100::1 src %s", r, conc6)
			}

			for _, c := range []struct {
				src, dst *side
				from, to netip.Addr
				payload  string
			}{
				{conc, gw, conc.inner, gw.inner, "conc->gw IPv4"}, {gw, conc, gw.inner, conc.inner, "gw->conc IPv4"},
				{conc, gw, conc6, gw6, "conc->gw IPv6"}, {gw, conc, gw6, conc6, "gw->conc IPv6"},
			} {
				if err := udpBetween(t, c.src, c.dst, c.from, c.to, []byte(c.payload+" "+name)); err != nil {
					t.Error(err)
				}
			}
			cs, err := dc.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs) != 1 || cs[0].InPackets < 2 || cs[0].OutPackets < 2 {
				t.Errorf("conc counters %+v: want 2 datagrams each way (one per family)", cs)
			}
			gs, err := dg.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(gs) != 1 || gs[0].InPackets < 2 {
				t.Errorf("gw counters %+v", gs)
			}

			// List reads the SA back from the kernel as it was installed.
			list, err := dc.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || list[0].Local != sa.Local || list[0].Remote != sa.Remote || list[0].Encap != encap ||
				len(list[0].LocalTS) != 2 || len(list[0].RemoteTS) != 2 {
				t.Errorf("List: %+v\nwant %+v", list, sa)
			}
			if err := dc.Remove(ctx, sa.InSPI); err != nil {
				t.Fatal(err)
			}
			if st, pol, _ := kernelCounts(t, conc.h, &dc.opts); st != 0 || pol != 0 {
				t.Errorf("after Remove: %d states, %d policies left", st, pol)
			}
			for _, p := range []string{"10.20.0.0/24", "fd00:20::/64"} {
				if r := routeTo(t, conc.h, p); r != nil {
					t.Errorf("after Remove: route %v left", r)
				}
			}
		})
	}
}

// TestKernelPolicyDumpIPv6 needs XFRM but no ESP (it runs on the build
// hosts as root too): policies with IPv6 selectors, added through the
// library, come back from the data plane's dump as they were added.
func TestKernelPolicyDumpIPv6(t *testing.T) {
	requireRoot(t)
	ns := newNS(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	raw, err := newRawXfrm(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.close()
	sa := dualStackSA(false)
	o := testOpts()
	want, err := BuildPolicies(o, sa, o.reqIDsForSlot(4))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		if err := h.XfrmPolicyAdd(p); err != nil {
			t.Fatalf("add policy %v: %v", p, err)
		}
	}
	got, err := raw.policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("dumped %d policies, added %d", len(got), len(want))
	}
	key := func(p *netlink.XfrmPolicy) string {
		return fmt.Sprintf("%v %v>%v %v %v>%v %d", p.Dir, p.Src, p.Dst, p.Priority, p.Tmpls[0].Src, p.Tmpls[0].Dst, p.Tmpls[0].Reqid)
	}
	have := map[string]bool{}
	for i := range got {
		have[key(&got[i])] = true
	}
	for _, p := range want {
		if !have[key(p)] {
			t.Errorf("policy %s not dumped as added; dumped %v", key(p), got)
		}
	}
}
