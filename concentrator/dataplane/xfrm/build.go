package xfrm

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// IKEv2 transform IDs (IANA "Transform Type 1/3"), as carried in
// dataplane.ChildSA. Kept here so that this package depends on no IKE code;
// a test checks them against concentrator/ike/suite.
const (
	encrAESCBC           uint16 = 12
	encrAESCTR           uint16 = 13
	encrAESGCM8          uint16 = 18
	encrAESGCM12         uint16 = 19
	encrAESGCM16         uint16 = 20
	encrChaCha20Poly1305 uint16 = 28

	integNone          uint16 = 0
	integHMACSHA196    uint16 = 2
	integAESXCBC96     uint16 = 5
	integHMACSHA256128 uint16 = 12
	integHMACSHA384192 uint16 = 13
	integHMACSHA512256 uint16 = 14
)

// ErrUnsupported is wrapped by builder errors for an SA the kernel data
// plane cannot express (unknown transform, bad key length, port range).
var ErrUnsupported = errors.New("xfrm: unsupported")

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// algorithms returns the kernel algorithms for one direction's keys.
func algorithms(sa *dataplane.ChildSA, k dataplane.Keys) (aead, crypt, auth *netlink.XfrmStateAlgo, err error) {
	key := func(b []byte) []byte { return append([]byte(nil), b...) }
	aesLen := func(n int) bool { return n == 16 || n == 24 || n == 32 }
	checkBits := func(keyLen int) error {
		if sa.EncrKeyBits != 0 && int(sa.EncrKeyBits) != keyLen*8 {
			return unsupported("encryption key of %d bytes for a %d-bit transform", keyLen, sa.EncrKeyBits)
		}
		return nil
	}
	switch sa.EncrID {
	case encrAESGCM16, encrAESGCM12, encrAESGCM8:
		// RFC 4106: key material is the AES key followed by a 4-byte salt.
		if !aesLen(len(k.Encr)-4) || checkBits(len(k.Encr)-4) != nil {
			return nil, nil, nil, unsupported("AES-GCM key of %d bytes (want 16/24/32 + 4 salt, %d bits)", len(k.Encr), sa.EncrKeyBits)
		}
		icv := map[uint16]int{encrAESGCM8: 64, encrAESGCM12: 96, encrAESGCM16: 128}[sa.EncrID]
		aead = &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: key(k.Encr), ICVLen: icv}
	case encrChaCha20Poly1305:
		// RFC 7634: 256-bit key followed by a 4-byte salt.
		if len(k.Encr) != 36 {
			return nil, nil, nil, unsupported("ChaCha20-Poly1305 key of %d bytes (want 32 + 4 salt)", len(k.Encr))
		}
		aead = &netlink.XfrmStateAlgo{Name: "rfc7539esp(chacha20,poly1305)", Key: key(k.Encr), ICVLen: 128}
	case encrAESCBC:
		if !aesLen(len(k.Encr)) || checkBits(len(k.Encr)) != nil {
			return nil, nil, nil, unsupported("AES-CBC key of %d bytes (%d bits)", len(k.Encr), sa.EncrKeyBits)
		}
		crypt = &netlink.XfrmStateAlgo{Name: "cbc(aes)", Key: key(k.Encr)}
	case encrAESCTR:
		// RFC 3686: AES key followed by a 4-byte nonce.
		if !aesLen(len(k.Encr)-4) || checkBits(len(k.Encr)-4) != nil {
			return nil, nil, nil, unsupported("AES-CTR key of %d bytes", len(k.Encr))
		}
		crypt = &netlink.XfrmStateAlgo{Name: "rfc3686(ctr(aes))", Key: key(k.Encr)}
	default:
		return nil, nil, nil, unsupported("encryption transform %d", sa.EncrID)
	}
	if aead != nil {
		if sa.IntegID != integNone {
			return nil, nil, nil, unsupported("integrity transform %d with an AEAD cipher", sa.IntegID)
		}
		return aead, nil, nil, nil
	}
	var name string
	var keyLen, trunc int
	switch sa.IntegID {
	case integHMACSHA256128:
		name, keyLen, trunc = "hmac(sha256)", 32, 128
	case integHMACSHA384192:
		name, keyLen, trunc = "hmac(sha384)", 48, 192
	case integHMACSHA512256:
		name, keyLen, trunc = "hmac(sha512)", 64, 256
	case integHMACSHA196:
		name, keyLen, trunc = "hmac(sha1)", 20, 96
	case integAESXCBC96:
		name, keyLen, trunc = "xcbc(aes)", 16, 96
	default:
		return nil, nil, nil, unsupported("integrity transform %d", sa.IntegID)
	}
	if len(k.Integ) != keyLen {
		return nil, nil, nil, unsupported("%s key of %d bytes (want %d)", name, len(k.Integ), keyLen)
	}
	auth = &netlink.XfrmStateAlgo{Name: name, Key: key(k.Integ), TruncateLen: trunc}
	return nil, crypt, auth, nil
}

// reqIDs are the request IDs of one CHILD SA: out for the outbound state
// and the out policies' templates, in for the inbound state and the in/fwd
// policies. They differ (out even, in = out+1) so that a state's direction
// can be read back from the kernel after a restart; the kernel only needs
// a template's reqid to match its state's.
type reqIDs struct{ out, in uint32 }

func (o *Options) reqIDsForSlot(slot uint32) reqIDs {
	out := o.ReqIDBase + 2*slot
	return reqIDs{out: out, in: out + 1}
}

// ours reports whether reqid lies in ikefleet's range, and returns its slot
// and direction (true: inbound).
func (o *Options) ours(reqid uint32) (slot uint32, in, ok bool) {
	if reqid < o.ReqIDBase || reqid-o.ReqIDBase >= 2*o.ReqIDSlots {
		return 0, false, false
	}
	d := reqid - o.ReqIDBase
	return d / 2, d%2 == 1, true
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.Unmap().AsSlice()) }

func encapPort(p uint16) int {
	if p == 0 {
		return 4500
	}
	return int(p)
}

// BuildStates returns the inbound and outbound ESP states of sa: tunnel
// mode, IPv4 or IPv6 outer addresses, UDP-encapsulated (espinudp) when sa
// is (sa.Encap: a NAT was detected or claimed, as force_encap does) with
// the ports from sa (4500 where a port is zero), plain ESP otherwise; the
// replay window of opts (with ESN as negotiated) and the lifetime of
// StateLimits.
func BuildStates(opts *Options, sa *dataplane.ChildSA, ids reqIDs) (in, out *netlink.XfrmState, err error) {
	local, remote := sa.Local.Addr().Unmap(), sa.Remote.Addr().Unmap()
	if !local.IsValid() || !remote.IsValid() || local.Is4() != remote.Is4() {
		return nil, nil, unsupported("outer addresses %v and %v", sa.Local, sa.Remote)
	}
	if sa.InSPI < 256 || sa.OutSPI < 256 {
		return nil, nil, unsupported("SPIs %08x/%08x in the reserved range 0-255", sa.InSPI, sa.OutSPI)
	}
	mk := func(src, dst netip.AddrPort, spi, reqid uint32, k dataplane.Keys) (*netlink.XfrmState, error) {
		aead, crypt, auth, err := algorithms(sa, k)
		if err != nil {
			return nil, err
		}
		st := &netlink.XfrmState{
			Src: ipOf(src.Addr()), Dst: ipOf(dst.Addr()),
			Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL,
			Spi: int(spi), Reqid: int(reqid),
			Aead: aead, Crypt: crypt, Auth: auth,
			Limits: StateLimits(opts, sa.ESN),
		}
		if sa.Encap {
			// A peer that negotiated no NAT sends plain ESP (IP protocol
			// 50): an espinudp state would never match it.
			st.Encap = &netlink.XfrmStateEncap{
				Type:    netlink.XFRM_ENCAP_ESPINUDP,
				SrcPort: encapPort(src.Port()), DstPort: encapPort(dst.Port()),
				OriginalAddress: net.IPv4zero,
			}
			if !local.Is4() {
				st.Encap.OriginalAddress = net.IPv6zero
			}
		}
		if sa.ESN {
			st.ESN = true
			st.ReplayWindow = int(opts.ReplayWindow)
		} else {
			st.ReplayWindow = int(min(opts.ReplayWindow, legacyReplayMax))
		}
		return st, nil
	}
	in, err = mk(sa.Remote, sa.Local, sa.InSPI, ids.in, sa.In)
	if err != nil {
		return nil, nil, err
	}
	out, err = mk(sa.Local, sa.Remote, sa.OutSPI, ids.out, sa.Out)
	if err != nil {
		return nil, nil, err
	}
	return in, out, nil
}

// Packet limits of a non-ESN SA: its 32-bit sequence number must never
// wrap (RFC 4303 3.3.3), so the kernel expires the state softly (the node
// rekeys) 2^24 packets and hard (the state is deleted) 2^16 packets before
// it would. A state's packet counter counts every packet it carries, so the
// counter reaches the limit no later than the sequence number.
const (
	SeqSoftPackets uint64 = 1<<32 - 1<<24
	SeqHardPackets uint64 = 1<<32 - 1<<16
)

// noLimit is the kernel's "infinite" (XFRM_INF).
const noLimit = ^uint64(0)

// StateLimits returns the kernel lifetime of one state: for a non-ESN SA
// the packet limits that keep its sequence number from wrapping
// (SeqSoftPackets, SeqHardPackets; opts.PacketSoftLimit and
// opts.PacketHardLimit may only lower them), for an ESN SA none unless the
// options set them; byte limits from opts (0: none). A soft limit not
// below its hard limit is lowered to just below it so that the soft
// expiry comes first. Time limits are left to the IKE layer.
func StateLimits(opts *Options, esn bool) netlink.XfrmStateLimits {
	lim := func(v uint64) uint64 {
		if v == 0 {
			return noLimit
		}
		return v
	}
	l := netlink.XfrmStateLimits{
		ByteSoft: lim(opts.ByteSoftLimit), ByteHard: lim(opts.ByteHardLimit),
		PacketSoft: lim(opts.PacketSoftLimit), PacketHard: lim(opts.PacketHardLimit),
	}
	if !esn {
		l.PacketSoft = min(l.PacketSoft, SeqSoftPackets)
		l.PacketHard = min(l.PacketHard, SeqHardPackets)
	}
	fix := func(soft *uint64, hard uint64) {
		if hard != noLimit && *soft >= hard {
			*soft = max(hard-1, 1)
		}
	}
	fix(&l.PacketSoft, l.PacketHard)
	fix(&l.ByteSoft, l.ByteHard)
	return l
}

// remainingLimits is what is left of l after a state carried pkts packets
// and bytes bytes (for a state re-added with fresh counters); a limit
// already reached becomes 1, so the kernel expires the new state at once.
func remainingLimits(l netlink.XfrmStateLimits, pkts, bytes uint64) netlink.XfrmStateLimits {
	sub := func(v *uint64, used uint64) {
		switch {
		case *v == noLimit:
		case *v > used:
			*v -= used
		default:
			*v = 1
		}
	}
	sub(&l.PacketSoft, pkts)
	sub(&l.PacketHard, pkts)
	sub(&l.ByteSoft, bytes)
	sub(&l.ByteHard, bytes)
	return l
}

// legacyReplayMax is the largest replay window of a non-ESN state: the
// kernel's legacy replay bitmap has 32 bits.
const legacyReplayMax = 32

// selectorSet is one selector as the kernel can hold it: a prefix, and a
// protocol and single ports (0: any).
type selectorSet struct {
	prefix netip.Prefix
	proto  uint8
	port   uint16
}

// selectorPrefixes splits a traffic selector's address range into the
// smallest set of prefixes that covers it exactly. Ports must be any
// (0-65535) or a single port: the kernel selector has a port and a mask.
func selectorPrefixes(s dataplane.Selector) ([]selectorSet, error) {
	var port uint16
	switch {
	case s.StartPort == 0 && s.EndPort == 0xffff:
	case s.StartPort == s.EndPort:
		port = s.StartPort
		if s.IPProto == 0 && port != 0 {
			return nil, unsupported("port %d without a protocol", port)
		}
	default:
		return nil, unsupported("port range %d-%d (only any or a single port)", s.StartPort, s.EndPort)
	}
	pfx, err := rangePrefixes(s.Start.Unmap(), s.End.Unmap())
	if err != nil {
		return nil, err
	}
	out := make([]selectorSet, len(pfx))
	for i, p := range pfx {
		out[i] = selectorSet{prefix: p, proto: s.IPProto, port: port}
	}
	return out, nil
}

// rangePrefixes returns the CIDR prefixes covering start..end exactly.
func rangePrefixes(start, end netip.Addr) ([]netip.Prefix, error) {
	if !start.IsValid() || !end.IsValid() || start.Is4() != end.Is4() || end.Less(start) {
		return nil, unsupported("address range %v-%v", start, end)
	}
	var out []netip.Prefix
	for {
		// The largest prefix starting at start that ends at or before end.
		maxBits := start.BitLen()
		b := trailingZeroBits(start)
		for ; b > 0; b-- {
			p := netip.PrefixFrom(start, maxBits-b)
			if !end.Less(lastAddr(p)) {
				break
			}
		}
		p := netip.PrefixFrom(start, maxBits-b).Masked()
		out = append(out, p)
		last := lastAddr(p)
		if last == end {
			return out, nil
		}
		start = last.Next()
		if len(out) > 256 {
			return nil, unsupported("address range %v-%v needs more than 256 prefixes", start, end)
		}
	}
}

func trailingZeroBits(a netip.Addr) int {
	b := a.AsSlice()
	n := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == 0 {
			n += 8
			continue
		}
		return n + bits.TrailingZeros8(b[i])
	}
	return n
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: ipOf(p.Masked().Addr()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// priority orders policies the way the kernel's list needs: smaller wins,
// so more specific selectors (longer prefixes, a protocol, a port) get
// smaller values. Every value lies in [base, base+0x1000).
func priority(base uint32, src, dst selectorSet) uint32 {
	maxBits := 2 * src.prefix.Addr().BitLen()
	p := base + uint32(maxBits-src.prefix.Bits()-dst.prefix.Bits())<<3
	if src.proto == 0 {
		p += 4
	}
	if src.port == 0 {
		p += 2
	}
	if dst.port == 0 {
		p++
	}
	return p
}

// BuildPolicies returns the out, in and fwd policies of sa, one triple per
// pair of local and remote selector prefixes of the same family. Their
// templates name the outer addresses and the reqids of ids.
func BuildPolicies(opts *Options, sa *dataplane.ChildSA, ids reqIDs) ([]*netlink.XfrmPolicy, error) {
	var locals, remotes []selectorSet
	for _, s := range sa.LocalTS {
		p, err := selectorPrefixes(s)
		if err != nil {
			return nil, fmt.Errorf("local TS: %w", err)
		}
		locals = append(locals, p...)
	}
	for _, s := range sa.RemoteTS {
		p, err := selectorPrefixes(s)
		if err != nil {
			return nil, fmt.Errorf("remote TS: %w", err)
		}
		remotes = append(remotes, p...)
	}
	local, remote := ipOf(sa.Local.Addr()), ipOf(sa.Remote.Addr())
	tmpl := func(src, dst net.IP, reqid uint32) []netlink.XfrmPolicyTmpl {
		return []netlink.XfrmPolicyTmpl{{Src: src, Dst: dst, Proto: netlink.XFRM_PROTO_ESP,
			Mode: netlink.XFRM_MODE_TUNNEL, Reqid: int(reqid)}}
	}
	var out []*netlink.XfrmPolicy
	for _, l := range locals {
		for _, r := range remotes {
			if l.prefix.Addr().Is4() != r.prefix.Addr().Is4() {
				continue
			}
			proto := l.proto
			if proto == 0 {
				proto = r.proto
			} else if r.proto != 0 && r.proto != proto {
				continue // no packet matches both
			}
			l.proto, r.proto = proto, proto
			prio := int(priority(opts.PolicyPriority, l, r))
			out = append(out, &netlink.XfrmPolicy{
				Src: ipNet(l.prefix), Dst: ipNet(r.prefix), Proto: netlink.Proto(proto),
				SrcPort: int(l.port), DstPort: int(r.port),
				Dir: netlink.XFRM_DIR_OUT, Priority: prio, Tmpls: tmpl(local, remote, ids.out),
			})
			for _, dir := range []netlink.Dir{netlink.XFRM_DIR_IN, netlink.XFRM_DIR_FWD} {
				out = append(out, &netlink.XfrmPolicy{
					Src: ipNet(r.prefix), Dst: ipNet(l.prefix), Proto: netlink.Proto(proto),
					SrcPort: int(r.port), DstPort: int(l.port),
					Dir: dir, Priority: prio, Tmpls: tmpl(remote, local, ids.in),
				})
			}
		}
	}
	if len(out) == 0 {
		return nil, unsupported("no pair of local and remote traffic selectors of one family")
	}
	return out, nil
}

// RouteTarget is a prefix routed towards a peer: its virtual IP's pool (or
// the virtual IP itself when it is in no pool) and its remote traffic
// selectors.
type RouteTarget struct {
	Prefix netip.Prefix
	Pool   bool // a configured pool: shared by all its peers, never removed with one
}

// BuildRouteTargets returns the prefixes that must be routed so that
// traffic for sa's peer reaches the xfrm policy lookup. A virtual IP inside
// one of opts.Pools needs no route of its own: the pool's one route covers
// it (one route per pool rather than per peer, so a fleet of 100k peers
// costs the routing table nothing). Remote selectors covered by the
// virtual IP's route are not repeated.
func BuildRouteTargets(opts *Options, sa *dataplane.ChildSA) []RouteTarget {
	var out []RouteTarget
	seen := map[netip.Prefix]bool{}
	add := func(p netip.Prefix, pool bool) {
		p = p.Masked()
		if seen[p] {
			return
		}
		for _, t := range out {
			if t.Prefix.Bits() <= p.Bits() && t.Prefix.Contains(p.Addr()) {
				return
			}
		}
		seen[p] = true
		out = append(out, RouteTarget{Prefix: p, Pool: pool})
	}
	if v := sa.VirtualIP.Unmap(); v.IsValid() {
		pooled := false
		for _, pool := range opts.Pools {
			if pool.Contains(v) {
				add(pool, true)
				pooled = true
				break
			}
		}
		if !pooled {
			add(netip.PrefixFrom(v, v.BitLen()), false)
		}
	}
	for _, s := range sa.RemoteTS {
		ps, err := rangePrefixes(s.Start.Unmap(), s.End.Unmap())
		if err != nil {
			continue
		}
		for _, p := range ps {
			if p.Bits() == 0 {
				continue // never replace the default route
			}
			pooled := false
			for _, pool := range opts.Pools {
				if pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
					add(pool, true)
					pooled = true
					break
				}
			}
			if !pooled {
				add(p, false)
			}
		}
	}
	return out
}
