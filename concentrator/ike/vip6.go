package ike

import "net/netip"

// Virtual addresses of both families (CP, RFC 7296 §3.15): IPv4 from
// Config.Pool, IPv6 from Config.Pool6, as the peer asks. An IPv6 address is
// sent as INTERNAL_IP6_ADDRESS: 16 octets and a prefix length of 128.

// assignVIPs answers a CFG_REQUEST: the addresses the peer asked for that
// we have pools for, and the selectors its side is then narrowed to. No
// reply (nil) when it asked for none we give.
func (sa *IKESA) assignVIPs(e *Engine, cp *CP) (*CP, []TrafficSelector, *Error) {
	want4, want6 := false, false
	for _, at := range cp.Attrs {
		want4 = want4 || at.Type == INTERNAL_IP4_ADDRESS
		want6 = want6 || at.Type == INTERNAL_IP6_ADDRESS
	}
	pool4 := sa.pool(e) // the peer's policy's, or Config.Pool
	want4 = want4 && pool4 != nil
	want6 = want6 && e.cfg.Pool6 != nil
	if !want4 && !want6 {
		return nil, nil, nil
	}
	reply := &CP{CfgType: CFG_REPLY}
	if want4 {
		vip, err := pool4.Acquire(sa.PeerID)
		if err != nil {
			return nil, nil, &Error{Notify: INTERNAL_ADDRESS_FAILURE, Reason: "address pool", Err: err}
		}
		sa.vip = vip
		reply.Attrs = append(reply.Attrs, CPAttr{Type: INTERNAL_IP4_ADDRESS, Value: vip.AsSlice()})
		for _, d := range e.cfg.DNS {
			if d.Is4() {
				reply.Attrs = append(reply.Attrs, CPAttr{Type: INTERNAL_IP4_DNS, Value: d.AsSlice()})
			}
		}
	}
	if want6 {
		vip, err := e.cfg.Pool6.Acquire(sa.PeerID)
		if err != nil {
			sa.releaseVIPs(e)
			return nil, nil, &Error{Notify: INTERNAL_ADDRESS_FAILURE, Reason: "IPv6 address pool", Err: err}
		}
		sa.vip6 = vip
		reply.Attrs = append(reply.Attrs, CPAttr{Type: INTERNAL_IP6_ADDRESS, Value: append(vip.AsSlice(), 128)})
		for _, d := range e.cfg.DNS {
			if d.Is6() && !d.Is4In6() {
				reply.Attrs = append(reply.Attrs, CPAttr{Type: INTERNAL_IP6_DNS, Value: d.AsSlice()})
			}
		}
	}
	return reply, sa.vipSelectors(), nil
}

// releaseVIPs gives back the addresses assigned in this exchange.
func (sa *IKESA) releaseVIPs(e *Engine) {
	if pool := sa.pool(e); sa.vip.IsValid() && pool != nil {
		pool.Release(sa.vip)
	}
	if sa.vip6.IsValid() && e.cfg.Pool6 != nil {
		e.cfg.Pool6.Release(sa.vip6)
	}
	sa.vip, sa.vip6 = netip.Addr{}, netip.Addr{}
}

// vipSelectors are the peer's virtual addresses as selectors; nil: none.
func (sa *IKESA) vipSelectors() []TrafficSelector {
	var out []TrafficSelector
	if sa.vip.IsValid() {
		out = append(out, SelectorFromPrefix(netip.PrefixFrom(sa.vip, 32)))
	}
	if sa.vip6.IsValid() {
		out = append(out, SelectorFromPrefix(netip.PrefixFrom(sa.vip6, 128)))
	}
	return out
}

// firstVIP is the virtual address a CHILD SA records: the IPv4 one, else
// the IPv6 one.
func (sa *IKESA) firstVIP() netip.Addr {
	if sa.vip.IsValid() {
		return sa.vip
	}
	return sa.vip6
}

// VirtualIPs returns the peer's virtual addresses (either may be invalid).
func (sa *IKESA) VirtualIPs() (v4, v6 netip.Addr) { return sa.vip, sa.vip6 }
