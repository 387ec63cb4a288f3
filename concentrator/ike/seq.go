package ike

import (
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// ESP sequence number reservations. With AES-GCM the IV is the sequence
// number: a CHILD SA restored or moved with its keys must never send a
// number it sent before. The persisted state carries a reservation per
// CHILD SA, ChildState.OutSeqReserved: every outbound number ever used is
// at most that. A restored SA starts sending above it and, until a fresh
// reservation is committed, no further. The data plane reports progress
// (Engine.SeqProgress) once outbound crosses the reservation minus half a
// block; the engine persists a new reservation (outbound + block) and, once
// that is committed, raises the data plane's limit (SetSeqLimit). Inbound,
// InSeqLow is the highest authenticated number at the last write: after a
// restore, numbers up to it are refused.
//
// The block adapts: 2^12 numbers to start with, doubled whenever a renewal
// comes less than SeqRenewalInterval after the previous one (up to 2^24,
// or 2^32 with ESN), so a busy SA writes about once a minute and an idle
// one never.

const (
	// SeqBlockStart is the first reservation block of a CHILD SA.
	SeqBlockStart = 1 << 12
	// SeqRenewalInterval: renewals closer than this double the block.
	SeqRenewalInterval = time.Minute
	seqBlockMax32      = 1 << 24
	seqBlockMaxESN     = 1 << 32
)

// childSeq is a CHILD SA's reservation state beyond the committed values
// in ChildSA.OutSeqReserved and ChildSA.InSeqLow.
type childSeq struct {
	outResv, inLow uint64 // as last persisted (committed once seqVersion is)
	block          uint64 // current reservation block
	renewed        int64  // last renewal, UnixNano; 0: none
	seqVersion     uint64 // the state version that carries outResv and inLow
}

func (c *ChildSA) esn() bool { return c.Proposal.ESN == suite.ESNYes }

func (c *ChildSA) maxSeq() uint64 {
	if c.esn() {
		return 1<<64 - 1
	}
	return 1<<32 - 1
}

// initSeq gives a new CHILD SA its first reservation; a rekeyed one keeps
// its predecessor's block (a busy SA stays busy).
func (c *ChildSA) initSeq(pred *ChildSA) {
	c.seq.block = SeqBlockStart
	if pred != nil && pred.seq.block > c.seq.block {
		c.seq.block = pred.seq.block
	}
	c.seq.outResv = min(c.seq.block, c.maxSeq())
}

// install returns the InstallChild for c: a new SA starts at 0 with the
// reservation its creating batch writes as the limit.
func (sa *IKESA) install(c *ChildSA, replaces uint32) InstallChild {
	return InstallChild{SPIi: sa.SPIi, SPIr: sa.SPIr, PeerID: sa.PeerID, Child: c, Replaces: replaces,
		OutSeq: 0, OutSeqLimit: c.seq.outResv, OutSeqMargin: c.seq.block / 2, InSeqLow: c.seq.inLow}
}

// seqPersisted notes that the state version being written carries each
// CHILD SA's latest reservation.
func (sa *IKESA) seqPersisted() {
	for _, c := range sa.children {
		if c.seq.outResv != c.OutSeqReserved || c.seq.inLow != c.InSeqLow {
			c.seq.seqVersion = sa.version
		}
	}
}

// seqCommitted moves the reservations written with version to the
// committed values.
func (sa *IKESA) seqCommitted(version uint64) {
	for _, c := range sa.children {
		if version >= c.seq.seqVersion {
			c.OutSeqReserved, c.InSeqLow = c.seq.outResv, c.seq.inLow
		}
	}
}

// SeqProgress takes a data plane's report on the CHILD SA with inbound SPI
// inSPI: outSeq is the last outbound sequence number used, inSeq the
// highest inbound one authenticated. When outbound has crossed the
// reservation minus half a block, or inbound has advanced a block since
// the last write, it persists new values (PersistReserved) and asks the
// data plane to raise its limit (SetSeqLimit, applied once the write is
// committed).
func (e *Engine) SeqProgress(now time.Time, inSPI uint32, outSeq, inSeq uint64, rd *Ready) {
	e.begin(now)
	sa := e.inSPIs[inSPI]
	if sa == nil || sa.state != stateEstablished {
		return
	}
	c := sa.childByIn(inSPI)
	if c == nil {
		return
	}
	sa.flushDirty(e, rd)
	s := &c.seq
	needOut := outSeq+s.block/2 >= s.outResv && s.outResv < c.maxSeq()
	needIn := inSeq > s.inLow && inSeq-s.inLow >= s.block
	if !needOut && !needIn {
		return
	}
	if s.renewed != 0 && now.UnixNano()-s.renewed < int64(SeqRenewalInterval) {
		limit := uint64(seqBlockMax32)
		if c.esn() {
			limit = seqBlockMaxESN
		}
		s.block = min(2*s.block, limit)
	}
	s.renewed = now.UnixNano()
	s.inLow = max(s.inLow, inSeq)
	raised := false
	if r := min(outSeq+min(s.block, c.maxSeq()-outSeq), c.maxSeq()); r > s.outResv {
		s.outResv, raised = r, true
	}
	e.stats.SeqReservations++
	sa.persist(e, PersistReserved, rd)
	if raised {
		sa.dataPlane(e, rd, SetSeqLimit{InSPI: c.InSPI, OutSeqLimit: s.outResv, OutSeqMargin: s.block / 2})
	}
}

// restoreSeq takes a restored CHILD SA's reservation: it sends from the
// committed reservation on, limited to it until the fresh one (one block
// further, written by Restore's batch) is committed. A record without a
// reservation (written before there were any) starts halfway up the
// sequence number space and is rekeyed soon.
func (c *ChildSA) restoreSeq(cs ChildState) (start uint64, legacy bool) {
	c.seq.block = cs.SeqBlock
	if c.seq.block == 0 {
		c.seq.block = SeqBlockStart
	}
	start = cs.OutSeqReserved
	if start == 0 {
		start, legacy = c.maxSeq()/2, true
	}
	c.OutSeqReserved, c.InSeqLow = start, cs.InSeqLow
	c.seq.inLow = cs.InSeqLow
	c.seq.outResv = min(start+c.seq.block, c.maxSeq())
	return start, legacy
}

// replayDelta is how far RFC 6311's IPSEC_REPLAY_COUNTER_SYNC asks the
// peer to move its outbound ESP sequence numbers after a restore: past
// what we may have received since the last write (one block at most);
// 0 without CHILD SAs.
func (sa *IKESA) replayDelta() uint64 {
	var d uint64
	for _, c := range sa.children {
		d = max(d, c.seq.block)
	}
	return d
}
