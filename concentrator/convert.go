package concentrator

// Conversions between the engine's state, the state store's records and the
// data plane's CHILD SAs.

import (
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// toDataplane describes a CHILD SA for the data plane; off is the node's
// wallOffset (Created is shown as a wall date).
func toDataplane(a ike.InstallChild, off time.Duration) *dataplane.ChildSA {
	c := a.Child
	in, out := c.KeyIn(), c.KeyOut()
	conv := func(ts []ike.TrafficSelector) []dataplane.Selector {
		sels := make([]dataplane.Selector, len(ts))
		for i, t := range ts {
			sels[i] = dataplane.Selector{Start: t.Start, End: t.End, IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort}
		}
		return sels
	}
	return &dataplane.ChildSA{
		InSPI: c.InSPI, OutSPI: c.OutSPI, Local: c.Local, Remote: c.Remote, Encap: c.Encap,
		EncrID: c.Proposal.Encr.ID, EncrKeyBits: c.Proposal.Encr.KeyLen, IntegID: c.Proposal.Integ,
		ESN:     c.Proposal.ESN == 1,
		In:      dataplane.Keys{Encr: in.Encr, Integ: in.Integ},
		Out:     dataplane.Keys{Encr: out.Encr, Integ: out.Integ},
		LocalTS: conv(c.LocalTS), RemoteTS: conv(c.RemoteTS), VirtualIP: c.VirtualIP,
		PeerID: a.PeerID.String(), IKESPIi: a.SPIi, IKESPIr: a.SPIr, Created: wallOf(c.Created, off),
		OutSeq: a.OutSeq, OutSeqLimit: a.OutSeqLimit, OutSeqMargin: a.OutSeqMargin, InSeqLow: a.InSeqLow,
	}
}

func recordOf(st *ike.SAState) *statestore.SARecord {
	r := &statestore.SARecord{
		SPIi: st.SPIi, SPIr: st.SPIr, Initiator: st.Initiator, State: 1,
		Suite: statestore.Suite{Encr: st.Proposal.Encr.ID, EncrKeyLen: st.Proposal.Encr.KeyLen,
			Integ: st.Proposal.Integ, PRF: st.Proposal.PRF, Group: st.Proposal.Group, AddKE: st.Proposal.AddKE},
		SKd: st.SKd, SKai: st.SKai, SKar: st.SKar, SKei: st.SKei, SKer: st.SKer,
		NextIn: st.NextIn, NextOut: st.NextOut, NextOutReserved: st.NextOutReserved, Local: st.Local, Remote: st.Remote,
		NATLocal: st.NATLocal, NATRemote: st.NATRemote,
		PeerID:    statestore.Identity{Type: st.PeerID.Type, Data: st.PeerID.Data},
		VirtualIP: st.VirtualIP, VirtualIP6: st.VirtualIP6, Created: st.Created, Established: st.Established,
	}
	if c := st.PeerCert; c != nil {
		r.PeerCert = &statestore.CertAttrs{Issuer: c.Issuer, Subject: c.Subject, SANs: c.SANs, EKUs: c.EKUs, Policies: c.Policies}
	}
	if st.PeerFrag {
		r.Flags |= flagPeerFrag
	}
	if st.MOBIKE {
		r.Flags |= flagMOBIKE
	}
	if st.MsgIDSync {
		r.Flags |= flagMsgIDSync
	}
	if st.Origin == ike.OriginUs {
		r.Flags |= flagOutbound
	}
	for _, c := range st.Children {
		r.Children = append(r.Children, statestore.ChildRecord{
			InSPI: c.InSPI, OutSPI: c.OutSPI,
			Suite: statestore.Suite{Encr: c.Proposal.Encr.ID, EncrKeyLen: c.Proposal.Encr.KeyLen,
				Integ: c.Proposal.Integ, Group: c.Proposal.Group, ESN: c.Proposal.ESN, AddKE: c.Proposal.AddKE},
			KeyIn:   statestore.ChildKeys{Encr: c.KeyIn.Encr, Integ: c.KeyIn.Integ},
			KeyOut:  statestore.ChildKeys{Encr: c.KeyOut.Encr, Integ: c.KeyOut.Integ},
			LocalTS: tsRecord(c.LocalTS), RemoteTS: tsRecord(c.RemoteTS), Encap: c.Encap,
			Created: c.Created, RekeyAt: c.RekeyAt,
			OutSeqReserved: c.OutSeqReserved, InSeqLow: c.InSeqLow, SeqBlock: c.SeqBlock,
		})
	}
	return r
}

// Engine-defined record flags.
const (
	flagPeerFrag uint32 = 1 << iota
	flagMOBIKE
	flagMsgIDSync // the peer supports RFC 6311
	flagOutbound  // we started the connection (ike.SAState.Origin)
)

// originOf reads a record's origin. A node starts no connections (every
// IKE SA it holds began with a gateway's IKE_SA_INIT), so a record of an
// earlier release, which kept no origin, is a gateway's: even one whose
// Initiator is set by an IKE rekey the node started.
func originOf(flags uint32) ike.Origin {
	if flags&flagOutbound != 0 {
		return ike.OriginUs
	}
	return ike.OriginPeer
}

func stateOf(r *statestore.SARecord) ike.SAState {
	st := ike.SAState{
		Initiator: r.Initiator, SPIi: r.SPIi, SPIr: r.SPIr, Local: r.Local, Remote: r.Remote,
		Proposal: ike.Selected{Protocol: ike.ProtoIKE, Encr: ike.EncrAlg{ID: r.Suite.Encr, KeyLen: r.Suite.EncrKeyLen},
			Integ: r.Suite.Integ, PRF: r.Suite.PRF, Group: r.Suite.Group, AddKE: r.Suite.AddKE},
		SKd: r.SKd, SKai: r.SKai, SKar: r.SKar, SKei: r.SKei, SKer: r.SKer,
		NextIn: r.NextIn, NextOut: r.NextOut, NextOutReserved: r.NextOutReserved, NATLocal: r.NATLocal, NATRemote: r.NATRemote,
		PeerFrag: r.Flags&flagPeerFrag != 0, MOBIKE: r.Flags&flagMOBIKE != 0, MsgIDSync: r.Flags&flagMsgIDSync != 0,
		Origin:    originOf(r.Flags),
		PeerID:    ike.Identity{Type: r.PeerID.Type, Data: r.PeerID.Data},
		VirtualIP: r.VirtualIP, VirtualIP6: r.VirtualIP6, Created: r.Created, Established: r.Established,
	}
	if c := r.PeerCert; c != nil {
		st.PeerCert = &ike.CertAttrs{Issuer: c.Issuer, Subject: c.Subject, SANs: c.SANs, EKUs: c.EKUs, Policies: c.Policies}
	}
	for _, c := range r.Children {
		st.Children = append(st.Children, ike.ChildState{
			InSPI: c.InSPI, OutSPI: c.OutSPI,
			Proposal: ike.Selected{Protocol: ike.ProtoESP, Encr: ike.EncrAlg{ID: c.Suite.Encr, KeyLen: c.Suite.EncrKeyLen},
				Integ: c.Suite.Integ, Group: c.Suite.Group, ESN: c.Suite.ESN, AddKE: c.Suite.AddKE},
			KeyIn:   ike.ChildKeys{Encr: c.KeyIn.Encr, Integ: c.KeyIn.Integ},
			KeyOut:  ike.ChildKeys{Encr: c.KeyOut.Encr, Integ: c.KeyOut.Integ},
			LocalTS: tsState(c.LocalTS), RemoteTS: tsState(c.RemoteTS), Encap: c.Encap,
			Created: c.Created, RekeyAt: c.RekeyAt,
			OutSeqReserved: c.OutSeqReserved, InSeqLow: c.InSeqLow, SeqBlock: c.SeqBlock,
		})
	}
	return st
}

func tsRecord(ts []ike.TrafficSelector) []statestore.TrafficSelector {
	out := make([]statestore.TrafficSelector, len(ts))
	for i, t := range ts {
		out[i] = statestore.TrafficSelector{IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort, Start: t.Start, End: t.End}
	}
	return out
}

func tsState(ts []statestore.TrafficSelector) []ike.TrafficSelector {
	out := make([]ike.TrafficSelector, len(ts))
	for i, t := range ts {
		out[i] = ike.TrafficSelector{IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort, Start: t.Start, End: t.End}
	}
	return out
}
