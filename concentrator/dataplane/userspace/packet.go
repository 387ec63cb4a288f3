package userspace

import (
	"encoding/binary"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// flow is what selectors match in an inner packet.
type flow struct {
	src, dst         netip.Addr
	proto            uint8
	srcPort, dstPort uint16 // 0 when the protocol has no ports or this is a non-first fragment
}

// parseFlow reads the addresses, protocol and ports of an IPv4 or IPv6
// packet. For IPv6 only the fixed header is read (extension headers leave
// the protocol as the first Next Header, which matches "any protocol"
// selectors, the only kind the concentrator negotiates today).
func parseFlow(p []byte) (flow, bool) {
	if len(p) < 1 {
		return flow{}, false
	}
	var f flow
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		ihl := int(p[0]&0x0f) * 4
		if len(p) < 20 || ihl < 20 || len(p) < ihl || int(binary.BigEndian.Uint16(p[2:])) > len(p) {
			return flow{}, false
		}
		f.src = netip.AddrFrom4([4]byte(p[12:16]))
		f.dst = netip.AddrFrom4([4]byte(p[16:20]))
		f.proto = p[9]
		if binary.BigEndian.Uint16(p[6:])&0x1fff == 0 { // first fragment or none
			l4 = p[ihl:]
		}
	case 6:
		if len(p) < 40 {
			return flow{}, false
		}
		f.src = netip.AddrFrom16([16]byte(p[8:24]))
		f.dst = netip.AddrFrom16([16]byte(p[24:40]))
		f.proto = p[6]
		l4 = p[40:]
	default:
		return flow{}, false
	}
	switch f.proto {
	case 6, 17, 132, 136: // TCP, UDP, SCTP, UDP-Lite
		if len(l4) >= 4 {
			f.srcPort = binary.BigEndian.Uint16(l4)
			f.dstPort = binary.BigEndian.Uint16(l4[2:])
		}
	}
	return f, true
}

// match reports whether addr (and proto/port) fall under selector s.
func match(s *dataplane.Selector, addr netip.Addr, proto uint8, port uint16) bool {
	if addr.Is4() != s.Start.Is4() || addr.Less(s.Start) || s.End.Less(addr) {
		return false
	}
	if s.IPProto != 0 && s.IPProto != proto {
		return false
	}
	if s.StartPort == 0 && s.EndPort == 0xffff {
		return true
	}
	if s.StartPort == 0 && s.EndPort == 0 {
		return true // unset
	}
	return port >= s.StartPort && port <= s.EndPort
}

func matchAny(sels []dataplane.Selector, addr netip.Addr, proto uint8, port uint16) bool {
	for i := range sels {
		if match(&sels[i], addr, proto, port) {
			return true
		}
	}
	return false
}

// prefixes splits the address range of s into CIDR prefixes (for routes).
func prefixes(s dataplane.Selector) []netip.Prefix {
	var out []netip.Prefix
	start, end := s.Start, s.End
	if !start.IsValid() || !end.IsValid() || start.Is4() != end.Is4() || end.Less(start) {
		return nil
	}
	bitsLen := start.BitLen()
	for {
		// The largest prefix that starts at start and ends at or before end.
		b := bitsLen
		for b > 0 {
			p := netip.PrefixFrom(start, b-1).Masked()
			if p.Addr() != start || lastAddr(p).Compare(end) > 0 {
				break
			}
			b--
		}
		p := netip.PrefixFrom(start, b)
		out = append(out, p)
		last := lastAddr(p)
		if last.Compare(end) >= 0 {
			return out
		}
		start = last.Next()
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(a)*8; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	r, _ := netip.AddrFromSlice(a)
	return r
}
