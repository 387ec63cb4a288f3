package ike

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// SAState is an established IKE SA as it is persisted: everything another
// node (or this one after a restart) needs to carry on without
// re-authenticating the peer. It holds key material; the state store seals
// it before it leaves the process.
type SAState struct {
	Initiator            bool // we are the original initiator
	SPIi, SPIr           uint64
	Local, Remote        netip.AddrPort
	Proposal             Selected
	SKd                  []byte
	SKei, SKai           []byte // initiator-to-responder
	SKer, SKar           []byte // responder-to-initiator
	NextIn, NextOut      uint32 // message IDs: the peer's next request, our next request
	NATLocal, NATRemote  bool
	PeerFrag             bool
	MOBIKE               bool
	PeerID               Identity
	VirtualIP            netip.Addr
	Created, Established time.Time
	Children             []ChildState
}

// ChildState is a persisted CHILD SA.
type ChildState struct {
	InSPI, OutSPI     uint32
	Proposal          Selected
	KeyIn, KeyOut     ChildKeys
	LocalTS, RemoteTS []TrafficSelector
	Encap             bool
	Created           time.Time
	RekeyAt           time.Time
}

// Snapshot returns the persistent state of an established SA.
func (sa *IKESA) Snapshot() (SAState, error) {
	if sa.state != stateEstablished {
		return SAState{}, fmt.Errorf("ike: SA %016x_%016x is %v, not established", sa.SPIi, sa.SPIr, sa.state)
	}
	st := SAState{
		Initiator: sa.initiator, SPIi: sa.SPIi, SPIr: sa.SPIr, Local: sa.Local, Remote: sa.Remote,
		Proposal: *sa.prop, SKd: sa.skd, NextIn: sa.nextIn, NextOut: sa.nextOut,
		NATLocal: sa.natLocal, NATRemote: sa.natRemote, PeerFrag: sa.peerFrag, MOBIKE: sa.mobike,
		PeerID: sa.PeerID, VirtualIP: sa.vip, Created: sa.created, Established: sa.Establish,
	}
	i2r, r2i := sa.keyOut, sa.keyIn
	if !sa.initiator {
		i2r, r2i = r2i, i2r
	}
	st.SKei, st.SKai, st.SKer, st.SKar = i2r.encr, i2r.integ, r2i.encr, r2i.integ
	for _, c := range sa.children {
		if c.replacedBy != nil {
			continue // rekeyed: its Delete is under way; the successor is what counts
		}
		st.Children = append(st.Children, ChildState{
			InSPI: c.InSPI, OutSPI: c.OutSPI, Proposal: c.Proposal, KeyIn: c.KeyIn, KeyOut: c.KeyOut,
			LocalTS: c.LocalTS, RemoteTS: c.RemoteTS, Encap: c.Encap, Created: c.Created, RekeyAt: c.rekeyAt,
		})
	}
	return st, nil
}

// ErrSPIInUse is returned by Restore when the table already has the SPI.
var ErrSPIInUse = errors.New("ike: SPI already in use")

// Restore adds an established SA from its persisted state and returns the
// InstallChild actions that put its CHILD SAs (back) into the data plane.
// Message IDs continue where the state says; timers (DPD, rekeys) start
// from now.
func (e *Engine) Restore(now time.Time, st SAState, out []Action) (*IKESA, []Action, error) {
	prf, err := suite.NewPRF(st.Proposal.PRF)
	if err != nil {
		return nil, out, err
	}
	c, err := suite.NewCipher(st.Proposal.Encr.ID, int(st.Proposal.Encr.KeyLen), st.Proposal.Integ)
	if err != nil {
		return nil, out, err
	}
	if len(st.SKei) != c.EncrKeyLen() || len(st.SKer) != c.EncrKeyLen() || len(st.SKai) != c.IntegKeyLen() ||
		len(st.SKar) != c.IntegKeyLen() || len(st.SKd) != prf.Size() {
		return nil, out, errors.New("ike: restored key lengths do not fit the proposal")
	}
	prop := st.Proposal
	sa := &IKESA{
		initiator: st.Initiator, state: stateEstablished, SPIi: st.SPIi, SPIr: st.SPIr,
		Local: st.Local, Remote: st.Remote, prop: &prop, prf: prf, cipher: c, skd: bytes.Clone(st.SKd),
		natLocal: st.NATLocal, natRemote: st.NATRemote, peerFrag: st.PeerFrag, mobike: st.MOBIKE,
		PeerID: Identity{Type: st.PeerID.Type, Data: bytes.Clone(st.PeerID.Data)}, vip: st.VirtualIP,
		nextIn: st.NextIn, nextOut: st.NextOut, created: st.Created, Establish: st.Established, lastRecv: now,
		resync: true,
	}
	i2r, r2i := skKeys{bytes.Clone(st.SKei), bytes.Clone(st.SKai)}, skKeys{bytes.Clone(st.SKer), bytes.Clone(st.SKar)}
	if sa.initiator {
		sa.keyOut, sa.keyIn = i2r, r2i
	} else {
		sa.keyOut, sa.keyIn = r2i, i2r
	}
	if e.sas[sa.localSPI()] != nil {
		return nil, out, ErrSPIInUse
	}
	for _, cs := range st.Children {
		if e.inSPIs[cs.InSPI] != nil {
			return nil, out, fmt.Errorf("%w: ESP %08x", ErrSPIInUse, cs.InSPI)
		}
	}
	if e.cfg.IKERekeyAfter > 0 {
		sa.rekeyIKE = now.Add(e.cfg.IKERekeyAfter)
	}
	e.sas[sa.localSPI()] = sa
	for _, cs := range st.Children {
		ch := &ChildSA{
			InSPI: cs.InSPI, OutSPI: cs.OutSPI, Proposal: cs.Proposal, KeyIn: cs.KeyIn, KeyOut: cs.KeyOut,
			LocalTS: cs.LocalTS, RemoteTS: cs.RemoteTS, Local: sa.Local, Remote: sa.Remote, Encap: cs.Encap,
			VirtualIP: sa.vip, Created: cs.Created, rekeyAt: cs.RekeyAt,
		}
		if e.cfg.ChildRekey != nil {
			// The outbound sequence number the data plane reached was not
			// persisted: rekey soon (spread over RestoreRekeyWindow) so the
			// peer's replay window sees fresh SAs.
			var b [8]byte
			e.read(b[:])
			ch.rekeyAt = now.Add(time.Duration(binary.BigEndian.Uint64(b[:]) % uint64(e.cfg.RestoreRekeyWindow+1)))
		}
		e.inSPIs[ch.InSPI] = sa
		sa.children = append(sa.children, ch)
		out = append(out, InstallChild{SPIi: sa.SPIi, SPIr: sa.SPIr, PeerID: sa.PeerID, Child: ch})
	}
	sa.reschedule(e)
	return sa, out, nil
}

// persist appends a Persist action for a change of an established SA.
func (sa *IKESA) persist(kind PersistKind, out []Action, released ...uint32) []Action {
	p := Persist{Kind: kind, SPI: sa.localSPI(), Released: released}
	if kind != PersistDeleted {
		st, err := sa.Snapshot()
		if err != nil {
			return out // not established: nothing of it is persisted yet
		}
		p.State = &st
	}
	return append(out, p)
}

// Forget removes the IKE SA with our SPI spi without telling the peer:
// another node owns it now. Its CHILD SAs leave the data plane.
func (e *Engine) Forget(spi uint64, out []Action) []Action {
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi {
		return out
	}
	for _, c := range sa.children {
		out = append(out, RemoveChild{SPIi: sa.SPIi, SPIr: sa.SPIr, Child: c})
	}
	e.remove(sa)
	return out
}

// SetSPITag changes the fixed bits of the IKE SPIs allocated from now on
// (the node's slot once it has registered).
func (e *Engine) SetSPITag(tag, mask uint64) {
	e.cfg.SPITag, e.cfg.SPITagMask = tag, mask
}
