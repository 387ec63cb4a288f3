package xfrm

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// newPolicyMessage is XFRM_MSG_NEWPOLICY's body as the kernel sends it for
// p (built with the same structs the library uses to add one).
func newPolicyMessage(t *testing.T, p *netlink.XfrmPolicy) []byte {
	t.Helper()
	msg := &nl.XfrmUserpolicyInfo{}
	family := uint16(unix.AF_INET)
	if p.Dst.IP.To4() == nil {
		family = unix.AF_INET6
	}
	msg.Sel.Family = family
	msg.Sel.Daddr.FromIP(p.Dst.IP)
	msg.Sel.Saddr.FromIP(p.Src.IP)
	d, _ := p.Dst.Mask.Size()
	s, _ := p.Src.Mask.Size()
	msg.Sel.PrefixlenD, msg.Sel.PrefixlenS = uint8(d), uint8(s)
	msg.Sel.Proto = uint8(p.Proto)
	msg.Sel.Dport = nl.Swap16(uint16(p.DstPort))
	msg.Priority, msg.Dir = uint32(p.Priority), uint8(p.Dir)
	b := msg.Serialize()
	tb := make([]byte, nl.SizeofXfrmUserTmpl)
	tm := nl.DeserializeXfrmUserTmpl(tb)
	tm.XfrmId.Daddr.FromIP(p.Tmpls[0].Dst)
	tm.Saddr.FromIP(p.Tmpls[0].Src)
	tm.Family = uint16(nl.GetIPFamily(p.Tmpls[0].Dst))
	tm.XfrmId.Proto = uint8(p.Tmpls[0].Proto)
	tm.Mode, tm.Reqid = uint8(p.Tmpls[0].Mode), uint32(p.Tmpls[0].Reqid)
	return append(b, nl.NewRtAttr(nl.XFRMA_TMPL, tb).Serialize()...)
}

// TestParsePolicyIPv6Selectors: selectors are read in the selector's
// family and templates in theirs. An IPv6 prefix whose last 12 bytes are
// zero (fd00:20::/64) is the case the library's parser takes for IPv4.
func TestParsePolicyIPv6Selectors(t *testing.T) {
	cidr := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	for _, want := range []*netlink.XfrmPolicy{
		{Src: cidr("fd00:30::/64"), Dst: cidr("fd00:20::/64"), Dir: netlink.XFRM_DIR_OUT, Priority: 0x2a00,
			Tmpls: []netlink.XfrmPolicyTmpl{{Src: net.ParseIP("2001:db8:100::2"), Dst: net.ParseIP("2001:db8:1::2"),
				Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Reqid: 0x49460004}}},
		{Src: cidr("10.20.0.0/24"), Dst: cidr("10.30.0.0/24"), Dir: netlink.XFRM_DIR_FWD, Proto: 17, DstPort: 53,
			Tmpls: []netlink.XfrmPolicyTmpl{{Src: net.ParseIP("2001:db8:1::"), Dst: net.ParseIP("2001:db8:100::"),
				Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Reqid: 0x49460005}}},
		{Src: cidr("2001:db8::/32"), Dst: cidr("::/0"), Dir: netlink.XFRM_DIR_IN,
			Tmpls: []netlink.XfrmPolicyTmpl{{Src: net.ParseIP("192.0.2.1"), Dst: net.ParseIP("192.0.2.2"),
				Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Reqid: 7}}},
	} {
		got, err := parsePolicy(newPolicyMessage(t, want))
		if err != nil {
			t.Fatal(err)
		}
		tm, wt := got.Tmpls, want.Tmpls[0]
		if got.Src.String() != want.Src.String() || got.Dst.String() != want.Dst.String() || got.Dir != want.Dir ||
			got.Priority != want.Priority || got.Proto != want.Proto || got.DstPort != want.DstPort ||
			len(tm) != 1 || !tm[0].Src.Equal(wt.Src) || !tm[0].Dst.Equal(wt.Dst) || tm[0].Reqid != wt.Reqid ||
			tm[0].Mode != wt.Mode || tm[0].Proto != wt.Proto || (tm[0].Dst.To4() == nil) != (wt.Dst.To4() == nil) {
			t.Errorf("parsed %v\nwant   %v", got, want)
		}
		if uint32(policyReqID(&got)) != uint32(wt.Reqid) {
			t.Errorf("policyReqID %#x, want %#x", policyReqID(&got), wt.Reqid)
		}
	}
	for _, short := range [][]byte{nil, make([]byte, nl.SizeofXfrmUserpolicyInfo-1)} {
		if _, err := parsePolicy(short); err == nil {
			t.Errorf("%d bytes parsed", len(short))
		}
	}
}
