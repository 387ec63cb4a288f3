package xfrm

import (
	"encoding/binary"
	"errors"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// policies dumps every XFRM policy of the namespace (XFRM_MSG_GETPOLICY
// with NLM_F_DUMP) and parses each with parsePolicy. The netlink library's
// own dump guesses an address's family from its bytes (one whose last 12
// bytes are zero is taken for IPv4), which turns IPv6 selectors such as
// fd00:20::/64 into IPv4 ones without a mask; List, Reconcile and Remove
// need them as the kernel holds them. A dump the kernel interrupted is
// returned with netlink.ErrDumpInterrupted, as from the library.
func (r *rawXfrm) policies() ([]netlink.XfrmPolicy, error) {
	msgs, err := r.exec(nl.XFRM_MSG_GETPOLICY, unix.NLM_F_DUMP, nl.XFRM_MSG_NEWPOLICY, nl.NewIfInfomsg(unix.AF_UNSPEC))
	if err != nil {
		return nil, err
	}
	out := make([]netlink.XfrmPolicy, 0, len(msgs))
	for _, m := range msgs {
		p, err := parsePolicy(m)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

var errShortPolicy = errors.New("xfrm: short XFRM_MSG_NEWPOLICY")

// xfrmAddr is a struct xfrm_address_t of the given family.
func xfrmAddr(a nl.XfrmAddress, family uint16) net.IP {
	if family == unix.AF_INET6 {
		return net.IP(append([]byte(nil), a[:]...))
	}
	return net.IPv4(a[0], a[1], a[2], a[3])
}

func xfrmNet(a nl.XfrmAddress, plen uint8, family uint16) *net.IPNet {
	bits := 32
	if family == unix.AF_INET6 {
		bits = 128
	}
	return &net.IPNet{IP: xfrmAddr(a, family), Mask: net.CIDRMask(int(plen), bits)}
}

// parsePolicy parses one XFRM_MSG_NEWPOLICY (struct xfrm_userpolicy_info
// and its attributes): selector addresses in the selector's family,
// template addresses in each template's.
func parsePolicy(m []byte) (netlink.XfrmPolicy, error) {
	if len(m) < nl.SizeofXfrmUserpolicyInfo {
		return netlink.XfrmPolicy{}, errShortPolicy
	}
	msg := nl.DeserializeXfrmUserpolicyInfo(m)
	sel := msg.Sel
	p := netlink.XfrmPolicy{
		Dst: xfrmNet(sel.Daddr, sel.PrefixlenD, sel.Family), Src: xfrmNet(sel.Saddr, sel.PrefixlenS, sel.Family),
		Proto: netlink.Proto(sel.Proto), DstPort: int(nl.Swap16(sel.Dport)), SrcPort: int(nl.Swap16(sel.Sport)),
		Ifindex: int(sel.Ifindex), Priority: int(msg.Priority), Index: int(msg.Index),
		Dir: netlink.Dir(msg.Dir), Action: netlink.PolicyAction(msg.Action),
	}
	attrs, err := nl.ParseRouteAttr(m[msg.Len():])
	if err != nil {
		return netlink.XfrmPolicy{}, err
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.XFRMA_TMPL:
			for i := 0; i+nl.SizeofXfrmUserTmpl <= len(a.Value); i += nl.SizeofXfrmUserTmpl {
				t := nl.DeserializeXfrmUserTmpl(a.Value[i : i+nl.SizeofXfrmUserTmpl])
				p.Tmpls = append(p.Tmpls, netlink.XfrmPolicyTmpl{
					Dst: xfrmAddr(t.XfrmId.Daddr, t.Family), Src: xfrmAddr(t.Saddr, t.Family),
					Proto: netlink.Proto(t.XfrmId.Proto), Mode: netlink.Mode(t.Mode),
					Spi: int(nl.Swap32(t.XfrmId.Spi)), Reqid: int(t.Reqid), Optional: int(t.Optional),
				})
			}
		case nl.XFRMA_MARK:
			if len(a.Value) >= nl.SizeofXfrmMark {
				mk := nl.DeserializeXfrmMark(a.Value)
				p.Mark = &netlink.XfrmMark{Value: mk.Value, Mask: mk.Mask}
			}
		case nl.XFRMA_IF_ID:
			if len(a.Value) >= 4 {
				p.Ifid = int(binary.NativeEndian.Uint32(a.Value))
			}
		}
	}
	return p, nil
}
