package statestore

import (
	"fmt"
	"net/netip"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
)

func msOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func timeOf(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func addrBytes(a netip.Addr) []byte {
	if !a.IsValid() {
		return nil
	}
	return a.Unmap().AsSlice()
}

func addrOf(b []byte) (netip.Addr, error) {
	if len(b) == 0 {
		return netip.Addr{}, nil
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("address of %d bytes", len(b))
	}
	return a, nil
}

func endpointPB(ap netip.AddrPort) *pb.Endpoint {
	if !ap.IsValid() {
		return nil
	}
	return &pb.Endpoint{Addr: addrBytes(ap.Addr()), Port: uint32(ap.Port())}
}

func endpointOf(e *pb.Endpoint) (netip.AddrPort, error) {
	if e == nil {
		return netip.AddrPort{}, nil
	}
	a, err := addrOf(e.Addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if e.Port > 0xffff {
		return netip.AddrPort{}, fmt.Errorf("port %d", e.Port)
	}
	return netip.AddrPortFrom(a, uint16(e.Port)), nil
}

func suitePB(s Suite) *pb.Suite {
	if s == (Suite{}) {
		return nil
	}
	p := &pb.Suite{Encr: uint32(s.Encr), EncrKeyLen: uint32(s.EncrKeyLen), Integ: uint32(s.Integ),
		Prf: uint32(s.PRF), Group: uint32(s.Group), Esn: uint32(s.ESN)}
	if s.AddKE != ([7]uint16{}) {
		p.AddKe = make([]uint32, len(s.AddKE))
		for i, g := range s.AddKE {
			p.AddKe[i] = uint32(g)
		}
	}
	return p
}

func suiteOf(p *pb.Suite) (Suite, error) {
	if p == nil {
		return Suite{}, nil
	}
	for _, v := range []uint32{p.Encr, p.EncrKeyLen, p.Integ, p.Prf, p.Group, p.Esn} {
		if v > 0xffff {
			return Suite{}, fmt.Errorf("suite transform %d out of range", v)
		}
	}
	s := Suite{Encr: uint16(p.Encr), EncrKeyLen: uint16(p.EncrKeyLen), Integ: uint16(p.Integ),
		PRF: uint16(p.Prf), Group: uint16(p.Group), ESN: uint16(p.Esn)}
	if len(p.AddKe) > len(s.AddKE) {
		return Suite{}, fmt.Errorf("suite with %d additional key exchanges", len(p.AddKe))
	}
	for i, g := range p.AddKe {
		if g > 0xffff {
			return Suite{}, fmt.Errorf("suite transform %d out of range", g)
		}
		s.AddKE[i] = uint16(g)
	}
	return s, nil
}

func tsPB(ts []TrafficSelector) []*pb.TrafficSelector {
	out := make([]*pb.TrafficSelector, len(ts))
	for i, t := range ts {
		out[i] = &pb.TrafficSelector{IpProto: uint32(t.IPProto), StartPort: uint32(t.StartPort),
			EndPort: uint32(t.EndPort), Start: addrBytes(t.Start), End: addrBytes(t.End)}
	}
	return out
}

func tsOf(ps []*pb.TrafficSelector) ([]TrafficSelector, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	out := make([]TrafficSelector, len(ps))
	for i, p := range ps {
		if p.IpProto > 0xff || p.StartPort > 0xffff || p.EndPort > 0xffff {
			return nil, fmt.Errorf("traffic selector out of range")
		}
		s, err := addrOf(p.Start)
		if err != nil {
			return nil, err
		}
		e, err := addrOf(p.End)
		if err != nil {
			return nil, err
		}
		out[i] = TrafficSelector{IPProto: uint8(p.IpProto), StartPort: uint16(p.StartPort), EndPort: uint16(p.EndPort), Start: s, End: e}
	}
	return out, nil
}

func toPB(r *SARecord) *pb.IKESA {
	sa := &pb.IKESA{
		SpiI: r.SPIi, SpiR: r.SPIr, Initiator: r.Initiator, State: uint32(r.State),
		Suite: suitePB(r.Suite), NextIn: r.NextIn, NextOut: r.NextOut, NextOutReserved: r.NextOutReserved,
		Local: endpointPB(r.Local), Remote: endpointPB(r.Remote),
		NatLocal: r.NATLocal, NatRemote: r.NATRemote, Flags: r.Flags,
		VirtualIp: addrBytes(r.VirtualIP), VirtualIp6: addrBytes(r.VirtualIP6), CreatedMs: msOf(r.Created), EstablishedMs: msOf(r.Established),
		RekeyAtMs: msOf(r.RekeyAt),
	}
	if r.PeerID.Type != 0 || len(r.PeerID.Data) > 0 {
		sa.PeerId = &pb.Identity{Type: uint32(r.PeerID.Type), Data: r.PeerID.Data}
	}
	if c := r.PeerCert; c != nil {
		sa.PeerCert = &pb.CertAttributes{Issuer: c.Issuer, Subject: c.Subject, San: c.SANs, Eku: c.EKUs, Policy: c.Policies}
	}
	sa.Children = make([]*pb.Child, len(r.Children))
	for i := range r.Children {
		c := &r.Children[i]
		pc := &pb.Child{SpiIn: c.InSPI, SpiOut: c.OutSPI, Suite: suitePB(c.Suite),
			LocalTs: tsPB(c.LocalTS), RemoteTs: tsPB(c.RemoteTS), Encap: c.Encap,
			OutSeqReserved: c.OutSeqReserved, InSeqLow: c.InSeqLow, SeqBlock: c.SeqBlock, CreatedMs: msOf(c.Created), RekeyAtMs: msOf(c.RekeyAt)}
		if c.Local.IsValid() && c.Local != r.Local {
			pc.Local = endpointPB(c.Local)
		}
		if c.Remote.IsValid() && c.Remote != r.Remote {
			pc.Remote = endpointPB(c.Remote)
		}
		sa.Children[i] = pc
	}
	return sa
}

func secretsToPB(r *SARecord) *pb.Secrets {
	s := &pb.Secrets{SkD: r.SKd, SkAi: r.SKai, SkAr: r.SKar, SkEi: r.SKei, SkEr: r.SKer, SkPi: r.SKpi, SkPr: r.SKpr}
	s.Children = make([]*pb.ChildKeys, len(r.Children))
	for i := range r.Children {
		c := &r.Children[i]
		s.Children[i] = &pb.ChildKeys{EncrIn: c.KeyIn.Encr, IntegIn: c.KeyIn.Integ, EncrOut: c.KeyOut.Encr, IntegOut: c.KeyOut.Integ}
	}
	return s
}

func fromPB(sa *pb.IKESA, sec *pb.Secrets) (*SARecord, error) {
	if sa.State > 0xff {
		return nil, fmt.Errorf("state %d out of range", sa.State)
	}
	if len(sec.Children) != len(sa.Children) {
		return nil, fmt.Errorf("%d CHILD SAs but keys for %d", len(sa.Children), len(sec.Children))
	}
	r := &SARecord{SPIi: sa.SpiI, SPIr: sa.SpiR, Initiator: sa.Initiator, State: uint8(sa.State),
		NextIn: sa.NextIn, NextOut: sa.NextOut, NextOutReserved: sa.NextOutReserved, NATLocal: sa.NatLocal, NATRemote: sa.NatRemote, Flags: sa.Flags,
		Created: timeOf(sa.CreatedMs), Established: timeOf(sa.EstablishedMs), RekeyAt: timeOf(sa.RekeyAtMs),
		SKd: sec.SkD, SKai: sec.SkAi, SKar: sec.SkAr, SKei: sec.SkEi, SKer: sec.SkEr, SKpi: sec.SkPi, SKpr: sec.SkPr}
	var err error
	if r.Suite, err = suiteOf(sa.Suite); err != nil {
		return nil, err
	}
	if r.Local, err = endpointOf(sa.Local); err != nil {
		return nil, err
	}
	if r.Remote, err = endpointOf(sa.Remote); err != nil {
		return nil, err
	}
	if r.VirtualIP, err = addrOf(sa.VirtualIp); err != nil {
		return nil, err
	}
	if r.VirtualIP6, err = addrOf(sa.VirtualIp6); err != nil {
		return nil, err
	}
	if sa.PeerId != nil {
		if sa.PeerId.Type > 0xff {
			return nil, fmt.Errorf("identity type %d", sa.PeerId.Type)
		}
		r.PeerID = Identity{Type: uint8(sa.PeerId.Type), Data: sa.PeerId.Data}
	}
	if c := sa.PeerCert; c != nil {
		r.PeerCert = &CertAttrs{Issuer: c.Issuer, Subject: c.Subject, SANs: c.San, EKUs: c.Eku, Policies: c.Policy}
	}
	if len(sa.Children) > 0 {
		r.Children = make([]ChildRecord, len(sa.Children))
	}
	for i, pc := range sa.Children {
		c := &r.Children[i]
		k := sec.Children[i]
		*c = ChildRecord{InSPI: pc.SpiIn, OutSPI: pc.SpiOut, Encap: pc.Encap, OutSeqReserved: pc.OutSeqReserved, InSeqLow: pc.InSeqLow, SeqBlock: pc.SeqBlock,
			Created: timeOf(pc.CreatedMs), RekeyAt: timeOf(pc.RekeyAtMs),
			KeyIn:  ChildKeys{Encr: k.EncrIn, Integ: k.IntegIn},
			KeyOut: ChildKeys{Encr: k.EncrOut, Integ: k.IntegOut}}
		if c.Suite, err = suiteOf(pc.Suite); err != nil {
			return nil, err
		}
		if c.LocalTS, err = tsOf(pc.LocalTs); err != nil {
			return nil, err
		}
		if c.RemoteTS, err = tsOf(pc.RemoteTs); err != nil {
			return nil, err
		}
		c.Local, c.Remote = r.Local, r.Remote
		if pc.Local != nil {
			if c.Local, err = endpointOf(pc.Local); err != nil {
				return nil, err
			}
		}
		if pc.Remote != nil {
			if c.Remote, err = endpointOf(pc.Remote); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}
