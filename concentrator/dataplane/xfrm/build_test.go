package xfrm

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

func TestTransformIDsMatchSuite(t *testing.T) {
	for _, c := range []struct{ ours, theirs uint16 }{
		{encrAESCBC, suite.EncrAESCBC}, {encrAESCTR, suite.EncrAESCTR}, {encrAESGCM8, suite.EncrAESGCM8},
		{encrAESGCM12, suite.EncrAESGCM12}, {encrAESGCM16, suite.EncrAESGCM16},
		{encrChaCha20Poly1305, suite.EncrChaCha20Poly1305}, {integHMACSHA196, suite.IntegHMACSHA196},
		{integAESXCBC96, suite.IntegAESXCBC96}, {integHMACSHA256128, suite.IntegHMACSHA256128},
		{integHMACSHA384192, suite.IntegHMACSHA384192}, {integHMACSHA512256, suite.IntegHMACSHA512256},
	} {
		if c.ours != c.theirs {
			t.Errorf("transform ID %d here, %d in ike/suite", c.ours, c.theirs)
		}
	}
}

func sel(start, end string) dataplane.Selector {
	return dataplane.Selector{Start: netip.MustParseAddr(start), End: netip.MustParseAddr(end), EndPort: 0xffff}
}

func keyOf(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// testSA is a CHILD SA as the node hands it over: gateway behind a NAT
// (port 4501), AES-GCM-16-256, ESN.
func testSA() *dataplane.ChildSA {
	return &dataplane.ChildSA{
		InSPI: 0xc1000001, OutSPI: 0x0badcafe,
		Local: netip.MustParseAddrPort("192.168.100.2:4500"), Remote: netip.MustParseAddrPort("192.168.100.1:4501"),
		Encap: true, EncrID: encrAESGCM16, EncrKeyBits: 256, ESN: true,
		In: dataplane.Keys{Encr: keyOf(36, 1)}, Out: dataplane.Keys{Encr: keyOf(36, 2)},
		LocalTS: []dataplane.Selector{sel("10.30.0.0", "10.30.0.255")}, RemoteTS: []dataplane.Selector{sel("10.20.0.0", "10.20.0.255")},
	}
}

func testOpts() *Options {
	o := DefaultOptions()
	o.fill()
	return &o
}

func TestBuildStatesAESGCM(t *testing.T) {
	o := testOpts()
	ids := o.reqIDsForSlot(7)
	in, out, err := BuildStates(o, testSA(), ids)
	if err != nil {
		t.Fatal(err)
	}
	if ids.out != o.ReqIDBase+14 || ids.in != ids.out+1 {
		t.Errorf("reqids %+v", ids)
	}
	// Inbound: peer (the NAT's public address and port) -> us.
	if !in.Src.Equal(netip.MustParseAddr("192.168.100.1").AsSlice()) || in.Spi != 0xc1000001 || in.Reqid != int(ids.in) ||
		in.Encap.SrcPort != 4501 || in.Encap.DstPort != 4500 {
		t.Errorf("in state %v", in)
	}
	if !out.Dst.Equal(netip.MustParseAddr("192.168.100.1").AsSlice()) || out.Spi != 0x0badcafe || out.Reqid != int(ids.out) ||
		out.Encap.SrcPort != 4500 || out.Encap.DstPort != 4501 {
		t.Errorf("out state %v", out)
	}
	for _, st := range []*netlink.XfrmState{in, out} {
		if st.Mode != netlink.XFRM_MODE_TUNNEL || st.Proto != netlink.XFRM_PROTO_ESP || st.Encap.Type != netlink.XFRM_ENCAP_ESPINUDP {
			t.Errorf("state %v: want ESP tunnel mode in espinudp", st)
		}
		if st.Aead == nil || st.Aead.Name != "rfc4106(gcm(aes))" || st.Aead.ICVLen != 128 || len(st.Aead.Key) != 36 || st.Crypt != nil || st.Auth != nil {
			t.Errorf("state %v: want rfc4106(gcm(aes)) ICV 128 with key+salt", st)
		}
		if !st.ESN || st.ReplayWindow != 128 {
			t.Errorf("state %v: want ESN with a 128-packet replay window", st)
		}
	}
	if in.Aead.Key[0] != 1 || out.Aead.Key[0] != 2 {
		t.Error("in/out keys swapped")
	}
}

func TestBuildStatesSuites(t *testing.T) {
	o := testOpts()
	for _, c := range []struct {
		name                 string
		encr, bits, integ    uint16
		encrLen, integLen    int
		aead, crypt, auth    string
		icv, trunc, replayWn int
		esn                  bool
	}{
		{"aes128gcm16", encrAESGCM16, 128, 0, 20, 0, "rfc4106(gcm(aes))", "", "", 128, 0, 32, false},
		{"aes256gcm16-esn", encrAESGCM16, 256, 0, 36, 0, "rfc4106(gcm(aes))", "", "", 128, 0, 128, true},
		{"aes256gcm12", encrAESGCM12, 256, 0, 36, 0, "rfc4106(gcm(aes))", "", "", 96, 0, 32, false},
		{"chacha20poly1305", encrChaCha20Poly1305, 0, 0, 36, 0, "rfc7539esp(chacha20,poly1305)", "", "", 128, 0, 32, false},
		{"aes256-sha256", encrAESCBC, 256, integHMACSHA256128, 32, 32, "", "cbc(aes)", "hmac(sha256)", 0, 128, 32, false},
		{"aes128-sha384", encrAESCBC, 128, integHMACSHA384192, 16, 48, "", "cbc(aes)", "hmac(sha384)", 0, 192, 32, false},
		{"aes256-sha512-esn", encrAESCBC, 256, integHMACSHA512256, 32, 64, "", "cbc(aes)", "hmac(sha512)", 0, 256, 128, true},
		{"aes128ctr-sha256", encrAESCTR, 128, integHMACSHA256128, 20, 32, "", "rfc3686(ctr(aes))", "hmac(sha256)", 0, 128, 32, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sa := testSA()
			sa.EncrID, sa.EncrKeyBits, sa.IntegID, sa.ESN = c.encr, c.bits, c.integ, c.esn
			sa.In = dataplane.Keys{Encr: keyOf(c.encrLen, 1), Integ: keyOf(c.integLen, 3)}
			sa.Out = dataplane.Keys{Encr: keyOf(c.encrLen, 2), Integ: keyOf(c.integLen, 4)}
			in, _, err := BuildStates(o, sa, o.reqIDsForSlot(0))
			if err != nil {
				t.Fatal(err)
			}
			name := func(a *netlink.XfrmStateAlgo) string {
				if a == nil {
					return ""
				}
				return a.Name
			}
			if name(in.Aead) != c.aead || name(in.Crypt) != c.crypt || name(in.Auth) != c.auth {
				t.Errorf("algorithms aead=%q crypt=%q auth=%q", name(in.Aead), name(in.Crypt), name(in.Auth))
			}
			if in.Aead != nil && in.Aead.ICVLen != c.icv {
				t.Errorf("ICV %d, want %d", in.Aead.ICVLen, c.icv)
			}
			if in.Auth != nil && (in.Auth.TruncateLen != c.trunc || len(in.Auth.Key) != c.integLen) {
				t.Errorf("auth %v, want truncation %d", in.Auth, c.trunc)
			}
			if in.ReplayWindow != c.replayWn || in.ESN != c.esn {
				t.Errorf("replay window %d ESN %v, want %d %v", in.ReplayWindow, in.ESN, c.replayWn, c.esn)
			}
			// Round trip through what List reads back.
			got := childFromKernel(&installed{in: in})
			if got.EncrID != c.encr || got.IntegID != c.integ {
				t.Errorf("read back encr %d integ %d, want %d %d", got.EncrID, got.IntegID, c.encr, c.integ)
			}
		})
	}
}

func TestBuildStatesRejects(t *testing.T) {
	o := testOpts()
	for name, mut := range map[string]func(*dataplane.ChildSA){
		"gcm key without salt": func(sa *dataplane.ChildSA) { sa.In.Encr = keyOf(32, 1) },
		"gcm bits mismatch":    func(sa *dataplane.ChildSA) { sa.EncrKeyBits = 128 },
		"unknown encr":         func(sa *dataplane.ChildSA) { sa.EncrID = 3 },
		"aead with integ":      func(sa *dataplane.ChildSA) { sa.IntegID = integHMACSHA256128 },
		"cbc without integ": func(sa *dataplane.ChildSA) {
			sa.EncrID, sa.In.Encr, sa.Out.Encr = encrAESCBC, keyOf(32, 1), keyOf(32, 1)
		},
		"reserved spi":   func(sa *dataplane.ChildSA) { sa.InSPI = 0xfe },
		"mixed families": func(sa *dataplane.ChildSA) { sa.Remote = netip.MustParseAddrPort("[2001:db8::1]:4500") },
		"chacha short key": func(sa *dataplane.ChildSA) {
			sa.EncrID, sa.EncrKeyBits = encrChaCha20Poly1305, 0
			sa.In.Encr = keyOf(32, 1)
		},
		"sha256 with short key": func(sa *dataplane.ChildSA) { sa.EncrID, sa.IntegID = encrAESCBC, integHMACSHA256128 },
	} {
		sa := testSA()
		mut(sa)
		if _, _, err := BuildStates(o, sa, o.reqIDsForSlot(0)); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: err %v, want ErrUnsupported", name, err)
		}
	}
}

func TestBuildStatesDefaultPorts(t *testing.T) {
	o := testOpts()
	sa := testSA()
	sa.Local, sa.Remote = netip.AddrPortFrom(sa.Local.Addr(), 0), netip.AddrPortFrom(sa.Remote.Addr(), 0)
	in, _, err := BuildStates(o, sa, o.reqIDsForSlot(0))
	if err != nil {
		t.Fatal(err)
	}
	if in.Encap == nil || in.Encap.SrcPort != 4500 || in.Encap.DstPort != 4500 {
		t.Errorf("encap %v: want espinudp on port 4500 when the SA has no ports", in.Encap)
	}
}

// dualStackSA is testSA over IPv6 outer addresses with IPv4 and IPv6
// selectors on both sides (one CHILD SA carrying both families).
func dualStackSA(encap bool) *dataplane.ChildSA {
	sa := testSA()
	sa.Local, sa.Remote = netip.MustParseAddrPort("[2001:db8:100::2]:4500"), netip.MustParseAddrPort("[2001:db8:1::2]:4500")
	if !encap {
		sa.Local, sa.Remote = netip.AddrPortFrom(sa.Local.Addr(), 0), netip.AddrPortFrom(sa.Remote.Addr(), 0)
	}
	sa.Encap = encap
	sa.LocalTS = append(sa.LocalTS, sel("fd00:30::", "fd00:30::ffff:ffff:ffff:ffff"))
	sa.RemoteTS = append(sa.RemoteTS, sel("fd00:20::", "fd00:20::ffff:ffff:ffff:ffff"))
	return sa
}

// TestBuildStatesIPv6: IPv6 outer addresses give IPv6 states, ESP-in-UDP
// (original address ::) when the SA is encapsulated and plain ESP when no
// NAT was negotiated: a peer that detected none sends IP protocol 50.
func TestBuildStatesIPv6(t *testing.T) {
	o := testOpts()
	for _, encap := range []bool{true, false} {
		sa := dualStackSA(encap)
		in, out, err := BuildStates(o, sa, o.reqIDsForSlot(1))
		if err != nil {
			t.Fatal(err)
		}
		if !in.Src.Equal(ipOf(sa.Remote.Addr())) || !in.Dst.Equal(ipOf(sa.Local.Addr())) ||
			!out.Src.Equal(ipOf(sa.Local.Addr())) || !out.Dst.Equal(ipOf(sa.Remote.Addr())) || in.Src.To4() != nil {
			t.Errorf("encap %v: states %v -> %v, %v -> %v", encap, in.Src, in.Dst, out.Src, out.Dst)
		}
		for _, st := range []*netlink.XfrmState{in, out} {
			switch {
			case !encap && st.Encap != nil:
				t.Errorf("SA without NAT: state %08x has encapsulation %v, want plain ESP", st.Spi, st.Encap)
			case encap && (st.Encap == nil || st.Encap.Type != netlink.XFRM_ENCAP_ESPINUDP || st.Encap.SrcPort != 4500 ||
				st.Encap.DstPort != 4500 || !st.Encap.OriginalAddress.Equal(netip.IPv6Unspecified().AsSlice())):
				t.Errorf("encapsulated IPv6 SA: state %08x encapsulation %v", st.Spi, st.Encap)
			}
		}
		// The kernel message carries the IPv6 family, and no XFRMA_ENCAP
		// for plain ESP, nor the mapping event pause (which the kernel
		// refuses without XFRMA_ENCAP).
		msg, attrs, err := stateAddMessage(in, Replay{ESN: true, Window: 64, Bitmap: make([]uint32, 2)}, 1, true)
		if err != nil {
			t.Fatal(err)
		}
		hasEncap := slices.ContainsFunc(attrs, func(a *nl.RtAttr) bool { return a.Type == nl.XFRMA_ENCAP })
		hasPause := slices.ContainsFunc(attrs, func(a *nl.RtAttr) bool { return a.Type == nl.XFRMA_MTIMER_THRESH })
		if msg.Family != unix.AF_INET6 || hasEncap != encap || hasPause != encap {
			t.Errorf("encap %v: NEWSA family %d, XFRMA_ENCAP %v, XFRMA_MTIMER_THRESH %v", encap, msg.Family, hasEncap, hasPause)
		}
	}
}

// TestBuildPoliciesDualStackOverIPv6: one CHILD SA with IPv4 and IPv6
// selectors over IPv6 outer addresses gives a policy triple per family,
// each template naming the IPv6 outer addresses (the kernel takes the
// template's family from them, not from the selector).
func TestBuildPoliciesDualStackOverIPv6(t *testing.T) {
	o := testOpts()
	sa := dualStackSA(false)
	ids := o.reqIDsForSlot(2)
	pols, err := BuildPolicies(o, sa, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 6 {
		t.Fatalf("%d policies, want out/in/fwd for IPv4 and for IPv6", len(pols))
	}
	v4, v6 := 0, 0
	for _, p := range pols {
		if (p.Src.IP.To4() != nil) != (p.Dst.IP.To4() != nil) {
			t.Errorf("policy %v -> %v mixes families", p.Src, p.Dst)
		}
		if p.Src.IP.To4() != nil {
			v4++
		} else {
			v6++
		}
		tm := p.Tmpls[0]
		local, remote := ipOf(sa.Local.Addr()), ipOf(sa.Remote.Addr())
		if p.Dir == netlink.XFRM_DIR_OUT && (!tm.Src.Equal(local) || !tm.Dst.Equal(remote) || tm.Reqid != int(ids.out)) ||
			p.Dir != netlink.XFRM_DIR_OUT && (!tm.Src.Equal(remote) || !tm.Dst.Equal(local) || tm.Reqid != int(ids.in)) {
			t.Errorf("policy %v %v -> %v: template %v -> %v reqid %d", p.Dir, p.Src, p.Dst, tm.Src, tm.Dst, tm.Reqid)
		}
	}
	if v4 != 3 || v6 != 3 {
		t.Errorf("%d IPv4 and %d IPv6 policies, want 3 and 3", v4, v6)
	}
}

func TestBuildPolicies(t *testing.T) {
	o := testOpts()
	sa := testSA()
	ids := o.reqIDsForSlot(3)
	pols, err := BuildPolicies(o, sa, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 3 {
		t.Fatalf("%d policies, want out/in/fwd", len(pols))
	}
	want := []struct {
		dir      netlink.Dir
		src, dst string
		tsrc     string
		reqid    uint32
	}{
		{netlink.XFRM_DIR_OUT, "10.30.0.0/24", "10.20.0.0/24", "192.168.100.2", ids.out},
		{netlink.XFRM_DIR_IN, "10.20.0.0/24", "10.30.0.0/24", "192.168.100.1", ids.in},
		{netlink.XFRM_DIR_FWD, "10.20.0.0/24", "10.30.0.0/24", "192.168.100.1", ids.in},
	}
	for i, w := range want {
		p := pols[i]
		if p.Dir != w.dir || p.Src.String() != w.src || p.Dst.String() != w.dst || len(p.Tmpls) != 1 ||
			p.Tmpls[0].Src.String() != w.tsrc || uint32(p.Tmpls[0].Reqid) != w.reqid ||
			p.Tmpls[0].Mode != netlink.XFRM_MODE_TUNNEL || p.Tmpls[0].Proto != netlink.XFRM_PROTO_ESP {
			t.Errorf("policy %d: %v, want %+v", i, p, w)
		}
		if p.Priority != pols[0].Priority {
			t.Errorf("policy %d: priority %d differs from out's %d", i, p.Priority, pols[0].Priority)
		}
	}
}

func TestBuildPoliciesCrossProductAndPorts(t *testing.T) {
	o := testOpts()
	sa := testSA()
	// 10.30.0.0-10.30.1.255 is a /23; 10.20.0.5-10.20.0.6 needs two /32s.
	sa.LocalTS = []dataplane.Selector{sel("10.30.0.0", "10.30.1.255")}
	sa.RemoteTS = []dataplane.Selector{sel("10.20.0.5", "10.20.0.6"), sel("2001:db8::", "2001:db8::ffff")}
	pols, err := BuildPolicies(o, sa, o.reqIDsForSlot(0))
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, p := range pols {
		if p.Dir == netlink.XFRM_DIR_OUT {
			outs = append(outs, p.Src.String()+">"+p.Dst.String())
		}
	}
	if !slices.Equal(outs, []string{"10.30.0.0/23>10.20.0.5/32", "10.30.0.0/23>10.20.0.6/32"}) {
		t.Errorf("out policies %v (the IPv6 remote selector has no IPv4 partner)", outs)
	}

	// A single TCP port; a port range the kernel selector cannot hold.
	sa = testSA()
	sa.RemoteTS = []dataplane.Selector{{Start: netip.MustParseAddr("10.20.0.1"), End: netip.MustParseAddr("10.20.0.1"), IPProto: 6, StartPort: 443, EndPort: 443}}
	pols, err = BuildPolicies(o, sa, o.reqIDsForSlot(0))
	if err != nil {
		t.Fatal(err)
	}
	if pols[0].Proto != 6 || pols[0].DstPort != 443 || pols[1].SrcPort != 443 {
		t.Errorf("port selector: %v / %v", pols[0], pols[1])
	}
	sa.RemoteTS[0].EndPort = 444
	if _, err := BuildPolicies(o, sa, o.reqIDsForSlot(0)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("port range: %v, want ErrUnsupported", err)
	}
}

func TestPriorityOrdersSpecificFirst(t *testing.T) {
	ss := func(p string, proto uint8, port uint16) selectorSet {
		return selectorSet{prefix: netip.MustParsePrefix(p), proto: proto, port: port}
	}
	base := uint32(0x8000)
	wide := priority(base, ss("10.30.0.0/24", 0, 0), ss("0.0.0.0/0", 0, 0))
	peer := priority(base, ss("10.30.0.0/24", 0, 0), ss("10.99.0.7/32", 0, 0))
	port := priority(base, ss("10.30.0.0/24", 6, 0), ss("10.99.0.7/32", 6, 443))
	if !(port < peer && peer < wide) {
		t.Errorf("priorities port %d peer %d wide %d: want more specific first", port, peer, wide)
	}
	if v6 := priority(base, ss("::/0", 0, 0), ss("::/0", 0, 0)); v6 >= base+0x1000 {
		t.Errorf("IPv6 priority %#x leaves the range", v6)
	}
}

func TestRangePrefixes(t *testing.T) {
	for _, c := range []struct {
		start, end string
		want       []string
	}{
		{"10.0.0.0", "10.0.0.255", []string{"10.0.0.0/24"}},
		{"0.0.0.0", "255.255.255.255", []string{"0.0.0.0/0"}},
		{"10.0.0.1", "10.0.0.1", []string{"10.0.0.1/32"}},
		{"10.0.0.1", "10.0.0.6", []string{"10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"}},
		{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", []string{"::/0"}},
	} {
		got, err := rangePrefixes(netip.MustParseAddr(c.start), netip.MustParseAddr(c.end))
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if !slices.Equal(s, c.want) {
			t.Errorf("%s-%s: %v, want %v", c.start, c.end, s, c.want)
		}
	}
	if _, err := rangePrefixes(netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Error("reversed range accepted")
	}
}

func TestRouteTargets(t *testing.T) {
	o := testOpts()
	o.Pools = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")}
	sa := testSA()
	sa.VirtualIP = netip.MustParseAddr("10.99.0.7")
	sa.RemoteTS = []dataplane.Selector{sel("10.99.0.7", "10.99.0.7"), sel("10.20.0.0", "10.20.0.255"), sel("0.0.0.0", "255.255.255.255")}
	got := BuildRouteTargets(o, sa)
	want := []RouteTarget{{netip.MustParsePrefix("10.99.0.0/16"), true}, {netip.MustParsePrefix("10.20.0.0/24"), false}}
	if !slices.Equal(got, want) {
		t.Errorf("routes %v, want %v (pool route, no per-peer /32, never the default route)", got, want)
	}
	sa.VirtualIP = netip.MustParseAddr("172.16.0.9") // in no pool
	sa.RemoteTS = nil
	if got := BuildRouteTargets(o, sa); !slices.Equal(got, []RouteTarget{{netip.MustParsePrefix("172.16.0.9/32"), false}}) {
		t.Errorf("routes %v, want the /32 of a virtual IP outside every pool", got)
	}
	// IPv6: the virtual address's /128 (its remote selector) is covered
	// by children.pool6's one route.
	o.Pools = append(o.Pools, netip.MustParsePrefix("fd00:99::/112"))
	sa.VirtualIP = netip.MustParseAddr("fd00:99::5")
	sa.RemoteTS = []dataplane.Selector{sel("fd00:99::5", "fd00:99::5"), sel("fd00:20::", "fd00:20::ffff:ffff:ffff:ffff")}
	want = []RouteTarget{{netip.MustParsePrefix("fd00:99::/112"), true}, {netip.MustParsePrefix("fd00:20::/64"), false}}
	if got := BuildRouteTargets(o, sa); !slices.Equal(got, want) {
		t.Errorf("IPv6 routes %v, want %v", got, want)
	}
}

func TestReqIDRange(t *testing.T) {
	o := testOpts()
	for slot := range []uint32{0, 1, o.ReqIDSlots - 1} {
		ids := o.reqIDsForSlot(uint32(slot))
		s, in, ok := o.ours(ids.in)
		if !ok || !in || s != uint32(slot) {
			t.Errorf("slot %d in: %d %v %v", slot, s, in, ok)
		}
		s, in, ok = o.ours(ids.out)
		if !ok || in || s != uint32(slot) {
			t.Errorf("slot %d out: %d %v %v", slot, s, in, ok)
		}
	}
	for _, r := range []uint32{0, 1, o.ReqIDBase - 1, o.ReqIDBase + 2*o.ReqIDSlots} {
		if _, _, ok := o.ours(r); ok {
			t.Errorf("reqid %#x taken for ours", r)
		}
	}
}

func TestChildFromKernelRoundTrip(t *testing.T) {
	o := testOpts()
	sa := testSA()
	ids := o.reqIDsForSlot(5)
	in, out, err := BuildStates(o, sa, ids)
	if err != nil {
		t.Fatal(err)
	}
	in.Replay = nil // the kernel reports an ESN replay state, which netlink does not parse
	pols, _ := BuildPolicies(o, sa, ids)
	ins := &installed{in: in, out: out}
	for _, p := range pols {
		ins.policies = append(ins.policies, *p)
	}
	got := childFromKernel(ins)
	if got.InSPI != sa.InSPI || got.OutSPI != sa.OutSPI || got.Local != sa.Local || got.Remote != sa.Remote ||
		!got.ESN || got.EncrID != sa.EncrID || got.EncrKeyBits != 256 || !bytes.Equal(got.In.Encr, sa.In.Encr) ||
		!bytes.Equal(got.Out.Encr, sa.Out.Encr) || !slices.Equal(got.LocalTS, sa.LocalTS) || !slices.Equal(got.RemoteTS, sa.RemoteTS) {
		t.Errorf("read back %+v\nwant %+v", got, sa)
	}
}
