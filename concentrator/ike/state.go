package ike

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// SAState is an established IKE SA as it is persisted: everything another
// node (or this one after a restart) needs to carry on without
// re-authenticating the peer. It holds key material; the state store seals
// it before it leaves the process.
type SAState struct {
	Initiator bool // we are the original initiator (of this IKE SA)
	// Origin: who started the connection this SA continues, through any
	// IKE rekeys (OriginUnknown: a record of an earlier release, read as
	// Initiator says).
	Origin          Origin
	SPIi, SPIr      uint64
	Local, Remote   netip.AddrPort
	Proposal        Selected
	SKd             []byte
	SKei, SKai      []byte // initiator-to-responder
	SKer, SKar      []byte // responder-to-initiator
	NextIn, NextOut uint32 // message IDs: the peer's next request, our next request
	// NextOutReserved: every request message ID we ever used with this SA
	// is below it (NextOut <= NextOutReserved).
	NextOutReserved uint32
	// MsgIDSync: the peer announced RFC 6311 support.
	MsgIDSync           bool
	NATLocal, NATRemote bool
	PeerFrag            bool
	MOBIKE              bool
	PeerID              Identity
	// PeerCert: the attributes of the peer's authenticated end-entity
	// certificate (nil: it authenticated otherwise); a restore matches the
	// policies with them as IKE_AUTH did.
	PeerCert             *CertAttrs
	VirtualIP            netip.Addr
	VirtualIP6           netip.Addr // beside VirtualIP, from Config.Pool6
	Created, Established time.Time
	Children             []ChildState
}

// Origin says who started a connection.
type Origin uint8

const (
	OriginUnknown Origin = iota
	OriginPeer           // the peer's IKE_SA_INIT: a gateway we serve
	OriginUs             // our Initiation
)

// ChildState is a persisted CHILD SA.
type ChildState struct {
	InSPI, OutSPI     uint32
	Proposal          Selected
	KeyIn, KeyOut     ChildKeys
	LocalTS, RemoteTS []TrafficSelector
	Encap             bool
	Created           time.Time
	RekeyAt           time.Time
	// ESP sequence numbers (seq.go): every outbound number ever used is
	// <= OutSeqReserved; InSeqLow is the highest inbound number
	// authenticated at the time of the write; SeqBlock the SA's current
	// reservation block.
	OutSeqReserved, InSeqLow, SeqBlock uint64
}

// Snapshot returns the persistent state of an established SA. Its times
// (Created, Established, the children's Created and RekeyAt) are wall
// dates as of now (Config.Wall): the engine keeps them on monotonic time,
// which means nothing to another process.
func (sa *IKESA) Snapshot() (SAState, error) {
	if sa.state != stateEstablished {
		return SAState{}, fmt.Errorf("ike: SA %016x_%016x is %v, not established", sa.SPIi, sa.SPIr, sa.state)
	}
	var off time.Duration
	if sa.eng != nil {
		off = sa.eng.wallOffset()
	}
	wall := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.Add(off)
	}
	st := SAState{
		Initiator: sa.initiator, Origin: OriginPeer, SPIi: sa.SPIi, SPIr: sa.SPIr, Local: sa.Local, Remote: sa.Remote,
		Proposal: *sa.prop, SKd: sa.skd(), NextIn: sa.nextIn, NextOut: sa.nextOut,
		NextOutReserved: sa.outReserved, MsgIDSync: sa.msgIDSync,
		NATLocal: sa.natLocal, NATRemote: sa.natRemote, PeerFrag: sa.peerFrag, MOBIKE: sa.mobike,
		PeerID: sa.PeerID, PeerCert: sa.peerCert.Clone(), VirtualIP: sa.vip, VirtualIP6: sa.vip6, Created: wall(sa.created.Time()), Established: wall(sa.estab.Time()),
	}
	if sa.outbound {
		st.Origin = OriginUs
	}
	if sa.idUnknown {
		st.NextOut = sa.probeLo + 1 // still only a lower bound
	}
	st.SKei, st.SKai = sa.skKeys(sa.initiator)
	st.SKer, st.SKar = sa.skKeys(!sa.initiator)
	for _, c := range sa.children {
		if c.replacedBy != nil {
			continue // rekeyed: its Delete is under way; the successor is what counts
		}
		st.Children = append(st.Children, ChildState{
			InSPI: c.InSPI, OutSPI: c.OutSPI, Proposal: c.Proposal, KeyIn: c.KeyIn(), KeyOut: c.KeyOut(),
			LocalTS: c.LocalTS, RemoteTS: c.RemoteTS, Encap: c.Encap, Created: wall(c.Created), RekeyAt: wall(c.rekeyAt.Time()),
			OutSeqReserved: c.seq.outResv, InSeqLow: c.seq.inLow, SeqBlock: c.seq.block,
		})
	}
	return st, nil
}

// ErrSPIInUse is returned by Restore when the table already has the SPI.
var ErrSPIInUse = errors.New("ike: SPI already in use")

// Restore adds an established SA from its persisted state and returns the
// InstallChild actions that put its CHILD SAs (back) into the data plane.
// Message IDs continue where the state says; timers (DPD, rekeys) start
// from now. The state's times are wall dates (Snapshot): they are
// converted to engine time here, once, at the wall clock's offset from
// now, so a record written before a restart (where the monotonic clock
// starts again) or by another node keeps its rekey time. A rekey time
// that has passed, because it did or because the wall clock was stepped
// forward meanwhile, goes to the rekey scheduler, which spreads such
// rekeys under its rate cap.
func (e *Engine) Restore(now time.Time, st SAState, rd *Ready) (*IKESA, error) {
	e.begin(now)
	off := e.wall(now).Sub(now)
	prf, err := suite.NewPRF(st.Proposal.PRF)
	if err != nil {
		return nil, err
	}
	c, err := suite.NewCipher(st.Proposal.Encr.ID, int(st.Proposal.Encr.KeyLen), st.Proposal.Integ)
	if err != nil {
		return nil, err
	}
	if len(st.SKei) != c.EncrKeyLen() || len(st.SKer) != c.EncrKeyLen() || len(st.SKai) != c.IntegKeyLen() ||
		len(st.SKar) != c.IntegKeyLen() || len(st.SKd) != prf.Size() {
		return nil, errors.New("ike: restored key lengths do not fit the proposal")
	}
	for _, cs := range st.Children {
		in, out := cs.KeyIn, cs.KeyOut
		if len(in.Encr) != len(out.Encr) || len(in.Integ) != len(out.Integ) || len(in.Encr) > 0xff || len(in.Integ) > 0xff {
			return nil, fmt.Errorf("ike: restored CHILD SA %08x: key lengths %d+%d and %d+%d differ or are too long",
				cs.InSPI, len(in.Encr), len(in.Integ), len(out.Encr), len(out.Integ))
		}
	}
	prop := st.Proposal
	sa := &IKESA{
		eng: e, initiator: st.Initiator, outbound: st.Origin == OriginUs || st.Origin == OriginUnknown && st.Initiator, state: stateEstablished, SPIi: st.SPIi, SPIr: st.SPIr,
		Local: st.Local, Remote: st.Remote, prop: e.sharedProp(&prop), prf: prf, cipher: c, km: slices.Concat(st.SKd, st.SKai, st.SKar, st.SKei, st.SKer), // as km holds them
		natLocal: st.NATLocal, natRemote: st.NATRemote, peerFrag: st.PeerFrag, mobike: st.MOBIKE,
		PeerID: Identity{Type: st.PeerID.Type, Data: bytes.Clone(st.PeerID.Data)}, peerCert: st.PeerCert.Clone(), vip: st.VirtualIP, vip6: st.VirtualIP6,
		nextIn: st.NextIn, nextOut: st.NextOut, created: stampOf(e.engineTime(st.Created, off)), estab: stampOf(e.engineTime(st.Established, off)), lastRecv: stampOf(now),
		resync: true, stored: true, msgIDSync: st.MsgIDSync, idUnknown: true,
	}
	// The peer expects our next request with an ID in [NextOut-1,
	// NextOutReserved] (msgid.go).
	sa.outReserved = st.NextOutReserved
	if sa.outReserved == 0 || sa.outReserved < st.NextOut {
		// A record written without reservations (a reservation is never
		// 0): assume the default block.
		sa.outReserved = st.NextOut + e.cfg.MessageIDBlock
	}
	sa.outDurable = sa.outReserved
	sa.probeLo = st.NextOut
	if sa.probeLo > 0 {
		sa.probeLo--
	}
	if e.sas[sa.localSPI()] != nil {
		return nil, ErrSPIInUse
	}
	for _, cs := range st.Children {
		if e.inSPIs[cs.InSPI] != nil {
			return nil, fmt.Errorf("%w: ESP %08x", ErrSPIInUse, cs.InSPI)
		}
	}
	if pool := sa.pool(e); sa.vip.IsValid() && pool != nil {
		// Rebuild the pool: the address is not handed out again.
		if err := pool.Claim(sa.PeerID, sa.vip); errors.Is(err, ErrNotInPool) {
			sa.vipForeign = true // not ours to release either
		} else if err != nil {
			return nil, fmt.Errorf("ike: virtual IP %v: %w", st.VirtualIP, err)
		}
	}
	if sa.vip6.IsValid() && e.cfg.Pool6 != nil {
		if err := e.cfg.Pool6.Claim(sa.PeerID, sa.vip6); errors.Is(err, ErrNotInPool) {
			sa.vip6Foreign = true
		} else if err != nil {
			if pool := sa.pool(e); sa.vip.IsValid() && pool != nil && !sa.vipForeign {
				pool.Release(sa.vip)
			}
			return nil, fmt.Errorf("ike: virtual IP %v: %w", st.VirtualIP6, err)
		}
	}
	if e.cfg.IKERekeyAfter > 0 {
		sa.rekeyIKE = stampOf(now.Add(e.cfg.IKERekeyAfter))
	}
	e.sas[sa.localSPI()] = sa
	for _, cs := range st.Children {
		ch := &ChildSA{
			InSPI: cs.InSPI, OutSPI: cs.OutSPI, Proposal: cs.Proposal,
			LocalTS: e.sharedTS(cs.LocalTS), RemoteTS: cs.RemoteTS, Local: sa.Local, Remote: sa.Remote, Encap: cs.Encap,
			VirtualIP: st.VirtualIP, Created: e.engineTime(cs.Created, off), rekeyAt: stampOf(e.engineTime(cs.RekeyAt, off)),
		}
		keys := slices.Concat(cs.KeyIn.Encr, cs.KeyIn.Integ, cs.KeyOut.Encr, cs.KeyOut.Integ)
		_ = ch.setKeys(keys, len(cs.KeyIn.Encr), len(cs.KeyIn.Integ), true) // lengths checked above
		e.inSPIs[ch.InSPI] = sa
		sa.addChild(ch)
		start, legacy := ch.restoreSeq(cs)
		if legacy && ch.rekeyAt.IsZero() {
			ch.rekeyAt = stampOf(now) // its sequence numbers are unknown: replace it soon
		}
		sa.restoreRekey(e, ch, now)
		// Installed at once, sending above the committed reservation and
		// no further until the fresh one below is committed.
		ic := sa.install(ch, 0)
		ic.OutSeq, ic.OutSeqLimit = start, start
		rd.action(ic)
	}
	if !sa.outbound {
		var held []TrafficSelector
		for _, ch := range sa.children {
			held = append(held, ch.RemoteTS...)
		}
		sa.claimSelectors(e, held, true) // the state store is the authority: forced
	}
	if len(sa.children) > 0 {
		sa.persist(e, PersistReserved, rd)
		for _, ch := range sa.children {
			sa.dataPlane(e, rd, SetSeqLimit{InSPI: ch.InSPI, OutSeqLimit: ch.seq.outResv, OutSeqMargin: ch.seq.block / 2})
		}
	}
	if sa.msgIDSync && (!sa.cipher.AEAD() || e.cfg.MsgIDSyncAEAD) {
		sa.startMIDSync(now, e, rd)
	}
	sa.reschedule(e)
	return sa, nil
}

// restoreRekey keeps a restored CHILD SA's rekey time: no rekey merely
// because of a restore. One whose time has passed is placed by the
// scheduler (spread out, under its rate cap) when its timer first runs.
func (sa *IKESA) restoreRekey(e *Engine, c *ChildSA, now time.Time) {
	if c.rekeyAt.IsZero() {
		return // the peer rekeys it
	}
	rs, ok := e.cfg.ChildRekey.(RestoreScheduler)
	switch {
	case c.rekeyAt.Time().After(now) && ok:
		rs.Restored(c.rekeyAt.Time())
	case c.rekeyAt.Time().After(now):
	case ok:
		// Placed at the first Tick, once every SA of the restore has told
		// the scheduler which seconds its kept rekey times load.
		c.rekeyAt, c.overdue = stampOf(now), true
	default:
		// No scheduler that spreads: within the next minute, at random.
		var b [8]byte
		e.read(b[:])
		c.rekeyAt = stampOf(now.Add(time.Duration(binary.BigEndian.Uint64(b[:]) % uint64(time.Minute))))
	}
}

// persist appends a Persist of a change of an established SA: its state
// after the change under a new version.
func (sa *IKESA) persist(e *Engine, kind PersistKind, rd *Ready, released ...uint32) {
	p := Persist{Kind: kind, SPI: sa.localSPI(), Released: released, PeerID: sa.PeerID}
	if kind == PersistEstablished {
		p.Unique = sa.unique
		if p.Unique == UniqueNone && e.cfg.UniqueIDs != UniqueNever {
			p.Unique = UniqueIndexOnly // an SA we started: found by later ones, replaces none
		}
	}
	if kind != PersistDeleted {
		st, err := sa.Snapshot()
		if err != nil {
			return // not established: nothing of it is persisted yet
		}
		p.State = &st
	}
	if kind == PersistIKERekeyed {
		p.OldSPI = sa.rekeyedFrom
	}
	if e.cfg.Selectors != nil && sa.selectorsHeld {
		p.ExclusiveSelectors = true
		if kind != PersistDeleted {
			p.Selectors = e.cfg.Selectors.HeldBy(sa.localSPI())
		}
	}
	if sa.outReserved == 0 && p.State != nil {
		// The first write: reserve our first request IDs.
		sa.outReserved = sa.nextOut + e.cfg.MessageIDBlock
		p.State.NextOutReserved = sa.outReserved
	}
	if p.State != nil {
		e.markSPIs(sa, true, false)
	}
	sa.version++
	p.Version = sa.version
	sa.persistStep = e.step
	if p.State != nil {
		sa.resvVersion = sa.version // it carries outReserved
		sa.seqPersisted()
	}
	sa.dirty = false
	rd.persist(p)
	keep := sa.pendingDP[:0]
	for _, d := range sa.pendingDP {
		switch {
		case d.step == e.step:
			d.version = sa.version
		case d.version == 0:
			continue // from a batch without a write: applied at once
		}
		keep = append(keep, d)
	}
	clear(sa.pendingDP[len(keep):])
	sa.pendingDP = keep
}

// pendingDP is a data-plane change of a batch whose write is pending: if
// the write fails, the change is made again behind the next write.
type pendingDP struct {
	step, version uint64
	a             Action
}

// dataPlane adds a data-plane change of sa to the batch.
func (sa *IKESA) dataPlane(e *Engine, rd *Ready, a Action) {
	rd.action(a)
	sa.pendingDP = append(sa.pendingDP, pendingDP{step: e.step, a: a})
}

// canSend reports whether a message of sa may go into the current batch:
// every state change of it is committed, or the batch commits its state
// before anything of it is sent.
func (sa *IKESA) canSend(e *Engine) bool {
	return sa.committed == sa.version || sa.persistStep == e.step
}

// flushDirty persists the full state of an SA whose last write failed,
// before anything else of it goes out.
func (sa *IKESA) flushDirty(e *Engine, rd *Ready) {
	if !sa.dirty {
		return
	}
	if sa.state != stateEstablished {
		// Being deleted or replaced: nothing more of it is written (its
		// record goes with PersistDeleted or PersistIKERekeyed), so
		// nothing waits for a write either.
		sa.dirty, sa.committed = false, sa.version
		return
	}
	kind := PersistUpdated
	if !sa.stored && sa.rekeyedFrom != 0 {
		kind = PersistIKERekeyed // its record has yet to replace its predecessor's
	}
	// The failed batches' data-plane changes were not made: make them
	// behind this write.
	for i := range sa.pendingDP {
		if d := &sa.pendingDP[i]; d.version > sa.committed {
			d.step = e.step
			rd.action(d.a)
		}
	}
	sa.persist(e, kind, rd)
}

// Committed tells the engine that version (Persist.Version) of the SA with
// our SPI spi is in the state store. Messages held back for it (answers to
// retransmitted requests) go out from then on.
func (e *Engine) Committed(spi, version uint64) {
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi || version > sa.version {
		return
	}
	sa.stored = true
	sa.rekeyedFrom = 0
	e.markSPIs(sa, false, true)
	if version > sa.committed {
		sa.committed = version
	}
	if version >= sa.resvVersion {
		sa.outDurable = max(sa.outDurable, sa.outReserved)
	}
	sa.seqCommitted(version)
	keep := sa.pendingDP[:0]
	for _, d := range sa.pendingDP {
		if d.version == 0 && d.step == e.step || d.version > version {
			keep = append(keep, d)
		}
	}
	clear(sa.pendingDP[len(keep):])
	sa.pendingDP = keep
	if len(keep) == 0 {
		sa.pendingDP = nil
	}
}

// PersistFailed tells the engine that writing version of the SA with our
// SPI spi failed; nothing of that batch was sent or applied. An SA that
// never reached the state store is forgotten (the peer tries again later);
// any other SA persists its full state in its next step, before anything
// else of it goes out.
func (e *Engine) PersistFailed(spi, version uint64, rd *Ready) {
	e.persistFailed(spi, version, false, rd)
}

func (e *Engine) persistFailed(spi, version uint64, refused bool, rd *Ready) {
	e.step++
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi || version > sa.version || version <= sa.committed {
		return
	}
	e.stats.PersistFailures++
	// A write that may have landed names its SPIs for good; one refused
	// unwritten names them no more, unless a later write is under way.
	e.markSPIs(sa, false, !refused || version != sa.version)
	if !sa.stored && sa.rekeyedFrom == 0 {
		ev := sa.event(EventIKEFailed)
		ev.Reason = "state not persisted"
		e.remove(sa)
		rd.event(ev)
		return
	}
	sa.dirty = true
	if !e.now.IsZero() {
		e.schedule(sa, e.now) // flushed at the next Tick if nothing else comes
	}
}

// PersistRefused is PersistFailed for a write that the state store
// refused without writing anything of it (its conditions did not hold:
// the identity is held on another node under unique_ids keep, the
// virtual IP was taken). If no later write of the SA is under way, the
// reserved SPIs that only it named are handed back as the SA or CHILD SA
// goes (Config.ReturnIKESPI, ReturnESPSPI).
func (e *Engine) PersistRefused(spi, version uint64, rd *Ready) {
	e.persistFailed(spi, version, true, rd)
}

// Disowned is PersistFailed for a write the state store refused because
// the SA is not this node's (another node owns it, or no one does: it
// was deleted cluster-wide, say replaced by a newer SA of its identity
// on another node). Retrying cannot succeed, and serving it here would
// send for an SA that etcd gives to someone else: it is forgotten as
// after a hand-off (Forget). It reports whether it was.
func (e *Engine) Disowned(spi, version uint64, rd *Ready) bool {
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi || version > sa.version || version <= sa.committed || !sa.stored {
		e.PersistFailed(spi, version, rd) // stale, or never stored: as any failure
		return false
	}
	e.stats.PersistFailures++
	e.Forget(spi, rd)
	return true
}

// Forget removes the IKE SA with our SPI spi without telling the peer:
// another node owns it now. Its CHILD SAs leave the data plane.
func (e *Engine) Forget(spi uint64, rd *Ready) {
	e.step++
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi {
		return
	}
	for _, c := range sa.children {
		rd.action(RemoveChild{SPIi: sa.SPIi, SPIr: sa.SPIr, Child: c})
	}
	// Its virtual IP goes with it: a pool shared by the nodes keeps the
	// lease, a pool of this node's frees the address here.
	sa.forgetVIPs(e)
	e.remove(sa)
}

// SetSPITag changes the fixed bits of the IKE SPIs allocated from now on
// (the node's slot once it has registered).
func (e *Engine) SetSPITag(tag, mask uint64) {
	e.cfg.SPITag, e.cfg.SPITagMask = tag, mask
}
