package loadtest

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/esp"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// ESP traffic: each established gateway sends tunnel-mode ESP-in-UDP
// (RFC 3948) through the user-space ESP codec to the responder's NAT-T
// port, inner IPv4/UDP from its virtual IP (or the first address of its
// traffic selector) to ESPDest. Replies are decrypted and counted.

// espSender holds the two directions of a gateway's current CHILD SA.
type espSender struct {
	out   *esp.Outbound
	in    *esp.Inbound
	inner []byte // the inner packet template
}

func espConfig(spi uint32, c *ike.ChildSA, k ike.ChildKeys) esp.Config {
	return esp.Config{SPI: spi, EncrID: c.Proposal.Encr.ID, KeyBits: c.Proposal.Encr.KeyLen, IntegID: c.Proposal.Integ,
		EncrKey: k.Encr, IntegKey: k.Integ, ESN: c.Proposal.ESN == 1}
}

func newESPSender(c *ike.ChildSA, src, dst netip.Addr, size int) (*espSender, error) {
	out, err := esp.NewOutbound(espConfig(c.OutSPI, c, c.KeyOut()))
	if err != nil {
		return nil, err
	}
	in, err := esp.NewInbound(espConfig(c.InSPI, c, c.KeyIn()))
	if err != nil {
		return nil, err
	}
	return &espSender{out: out, in: in, inner: innerUDP(src, dst, max(28, size))}, nil
}

// innerUDP is an IPv4/UDP packet of size bytes (port 9, discard).
func innerUDP(src, dst netip.Addr, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	p[8] = 64 // TTL
	p[9] = 17 // UDP
	s4, d4 := src.As4(), dst.As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 9)
	binary.BigEndian.PutUint16(p[24:], uint16(size-20))
	return p // UDP checksum 0: none (IPv4)
}

func (s *shard) espErr(reason string) {
	s.r.col.with(func(c *collector) { c.esp.Errors[reason]++ })
}

// sendESP sends one ESP packet from gw over its current CHILD SA.
func (s *shard) sendESP(now time.Time, gw *gateway) {
	rec := gw.cur
	if rec == nil || rec.state != saUp || rec.child == nil {
		return
	}
	if rec.espEncoder == nil {
		src := rec.child.VirtualIP
		if !src.IsValid() && len(s.o.LocalTS) > 0 {
			src = s.o.LocalTS[0].Start
		}
		if !src.Is4() || !s.o.ESPDest.Is4() {
			s.espErr("no IPv4 inner addresses")
			return
		}
		e, err := newESPSender(rec.child, src, s.o.ESPDest, s.o.ESPSize)
		if err != nil {
			s.espErr("keys: " + err.Error())
			return
		}
		rec.espEncoder = e
	}
	pkt, err := rec.espEncoder.out.AppendSeal(s.scratch[:0], rec.espEncoder.inner, esp.NextHeaderIPv4)
	if err != nil {
		s.espErr("seal: " + err.Error())
		return
	}
	s.scratch = pkt[:0]
	sk := gw.socks[gw.addr][1]
	remote := netip.AddrPortFrom(s.o.Server.Addr(), s.o.ServerNATT)
	if rec.child.Remote.IsValid() {
		remote = rec.child.Remote
	}
	to, ok := s.r.router.wire(sk.real, remote)
	if !ok {
		return
	}
	if _, err := sk.conn.WriteToUDPAddrPort(pkt, to); err != nil {
		s.espErr("send: " + err.Error())
		return
	}
	s.r.col.with(func(c *collector) {
		c.esp.Sent++
		c.sec(now).ESPSent++
	})
}

// receiveESP opens an ESP packet that came back to gw.
func (s *shard) receiveESP(now time.Time, gw *gateway, b []byte) {
	rec := gw.cur
	if rec == nil || rec.espEncoder == nil {
		s.espErr("no SA")
		return
	}
	if _, _, _, err := rec.espEncoder.in.Open(b); err != nil {
		s.espErr(err.Error())
		return
	}
	s.r.col.with(func(c *collector) { c.esp.Received++ })
}
