package ike

import (
	"bytes"
	"encoding/binary"
	"time"
)

// IKE message IDs across restores and takeovers.
//
// Our own requests: the persisted state carries a reservation
// (SAState.NextOutReserved): every request ID we ever used is below it. A
// request whose ID reaches the committed reservation is sent in a batch
// that persists a new one (ID + Config.MessageIDBlock) first. A restored
// SA therefore knows that the peer expects our next request with an ID in
// [NextOut-1, NextOutReserved] (NextOut-1: a request outstanding at the
// last write may never have arrived) and never reuses an ID the peer has
// seen.
//
// Finding the exact ID after a restore: with a peer that announced
// IKEV2_MESSAGE_ID_SYNC_SUPPORTED, RFC 6311 synchronisation at once
// (an INFORMATIONAL with message ID 0), unless the IKE SA has an AEAD
// cipher (Config.MsgIDSyncAEAD: strongSwan cannot answer it then: it takes
// AEAD IVs from the message ID and has used 0 in both its IV spaces, so it
// fails to encrypt the answer and deletes the IKE SA). Otherwise, when the SA first needs
// to send a request, a probe: one empty INFORMATIONAL (a liveness check)
// per candidate ID, in increasing order, in one burst. A peer processes
// requests only with the ID it expects (strongSwan ignores lower and
// higher IDs and answers its expected ID minus one only for a byte-equal
// retransmission), so it answers the candidate it expects and, as they
// arrive in order, every later one; we continue at the highest answered
// ID plus one.
//
// The peer's requests: after a restore only the exact next ID is
// processed (or an RFC 6311 synchronisation request). One exception keeps
// peers without RFC 6311 alive: until the first request with the exact ID,
// an empty INFORMATIONAL request (a liveness check) with a higher ID is
// answered and moves the window. It changes no state, so a replayed one
// does no harm.

// reserveIDs makes sure request ID id is covered by a committed
// reservation once the current batch is: if it is not, the batch persists
// a new reservation (id + MessageIDBlock) before anything of it is sent.
func (sa *IKESA) reserveIDs(e *Engine, rd *Ready, id uint32) {
	if sa.state != stateEstablished || id < sa.outDurable {
		return
	}
	if id < sa.outReserved && sa.persistStep == e.step && sa.resvVersion == sa.version {
		return // this batch already writes a reservation above id
	}
	if id >= sa.outReserved {
		sa.outReserved = id + e.cfg.MessageIDBlock
	}
	e.stats.MsgIDReservations++
	sa.persist(e, PersistUpdated, rd)
}

// idKnown reports whether sa may start a request now. A restored SA that
// does not know the peer's expected ID yet starts finding it instead (if
// no exchange is under way) and reports false; the request is made once
// the ID is known.
func (sa *IKESA) idKnown(now time.Time, e *Engine, rd *Ready) bool {
	if !sa.idUnknown {
		return true
	}
	if sa.req == nil {
		sa.startProbe(now, e, rd)
	}
	return false
}

// startProbe sends one liveness check per candidate ID (see above).
func (sa *IKESA) startProbe(now time.Time, e *Engine, rd *Ready) {
	lo, hi := sa.probeLo, max(sa.outDurable, sa.probeLo)
	sa.reserveIDs(e, rd, hi)
	var pkts [][]byte
	for id := lo; ; id++ {
		m := sa.header(INFORMATIONAL, id, false)
		pkts = append(pkts, sa.seal(e, &m)...)
		if id == hi {
			break
		}
	}
	sa.req = &pendingRequest{msgID: lo, probeHi: hi, probe: true, dpd: true, exchange: INFORMATIONAL,
		packets: pkts, retransmitAt: now.Add(e.cfg.RetransmitTimeout)}
	sa.nextOut = hi + 1
	e.stats.MsgIDProbes++
	sa.reschedule(e)
	sa.send(pkts, rd)
}

// probeAnswered records the peer's answer to candidate id.
func (sa *IKESA) probeAnswered(now time.Time, e *Engine, id uint32, rd *Ready) {
	r := sa.req
	if !r.probeGot || id > r.probeBest {
		r.probeBest, r.probeGot = id, true
	}
	if id == r.probeHi {
		sa.probeDone(now, e, rd)
	}
	if sa.state != stateDead {
		sa.reschedule(e)
	}
}

// probeDone ends a probe that got an answer: the peer expects our next
// request with the highest answered ID plus one. What waited for it
// starts now.
func (sa *IKESA) probeDone(now time.Time, e *Engine, rd *Ready) {
	sa.nextOut = sa.req.probeBest + 1
	sa.req = nil
	sa.idUnknown = false
	sa.idFound(now, e, rd)
}

// idFound starts what waited for the message ID to be known.
func (sa *IKESA) idFound(now time.Time, e *Engine, rd *Ready) {
	if sa.deleteAfter {
		sa.deleteAfter = false
		e.deleteSA(now, sa.localSPI(), rd)
		return
	}
	sa.lifecycleTimers(now, e, rd)
}

// ---- RFC 6311 ----

const midSyncNonceLen = 4

// startMIDSync sends IKEV2_MESSAGE_ID_SYNC (RFC 6311 §4.2, §5.1): an
// INFORMATIONAL request with message ID 0 telling the peer the ID of our
// next request (M1, our committed reservation: above anything we used)
// and the ID we expect of its next request (P1); with CHILD SAs also
// IPSEC_REPLAY_COUNTER_SYNC, asking the peer to move its outbound
// sequence numbers past what we may have missed.
func (sa *IKESA) startMIDSync(now time.Time, e *Engine, rd *Ready) {
	nonce := e.randBytes(midSyncNonceLen)
	data := make([]byte, 0, midSyncNonceLen+8)
	data = append(data, nonce...)
	data = binary.BigEndian.AppendUint32(data, sa.outDurable)
	data = binary.BigEndian.AppendUint32(data, sa.nextIn)
	payloads := []Payload{&Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC, Data: data}}
	if delta := sa.replayDelta(); delta > 0 {
		payloads = append(payloads, &Notify{NotifyType: IPSEC_REPLAY_COUNTER_SYNC, Data: binary.BigEndian.AppendUint64(nil, delta)})
	}
	m := sa.header(INFORMATIONAL, 0, false)
	m.Payloads = payloads
	pkts := sa.seal(e, &m)
	sa.req = &pendingRequest{msgID: 0, midSync: true, syncNonce: nonce, exchange: INFORMATIONAL,
		packets: pkts, retransmitAt: now.Add(e.cfg.RetransmitTimeout)}
	e.stats.MsgIDSyncs++
	sa.reschedule(e)
	sa.send(pkts, rd)
}

// parseMIDSync reads an IKEV2_MESSAGE_ID_SYNC notify: the nonce, the
// sender's next request ID and the ID it expects of our next request.
func parseMIDSync(n *Notify) (nonce []byte, send, recv uint32, ok bool) {
	if n == nil || len(n.Data) != midSyncNonceLen+8 || n.Protocol != 0 || len(n.SPI) != 0 {
		return nil, 0, 0, false
	}
	d := n.Data
	return d[:midSyncNonceLen], binary.BigEndian.Uint32(d[midSyncNonceLen:]), binary.BigEndian.Uint32(d[midSyncNonceLen+4:]), true
}

// handleMIDSyncResponse takes the peer's answer to our synchronisation:
// our next request uses M2, the peer's next request P2.
func (sa *IKESA) handleMIDSyncResponse(now time.Time, e *Engine, m *Message, rd *Ready) bool {
	r := sa.req
	nonce, p2, m2, ok := parseMIDSync(findNotify(m.Payloads, IKEV2_MESSAGE_ID_SYNC))
	if !ok || !bytes.Equal(nonce, r.syncNonce) || m2 < sa.outDurable {
		return false
	}
	sa.req = nil
	sa.nextOut, sa.nextIn = m2, p2
	sa.idUnknown, sa.resync = false, false
	sa.lastResp = nil
	sa.persist(e, PersistUpdated, rd) // what we learnt, for the next restore
	sa.idFound(now, e, rd)
	if sa.state != stateDead {
		sa.reschedule(e)
	}
	return true
}

// isMIDSyncRequest reports a request carrying only RFC 6311 notifies.
func isMIDSyncRequest(m *Message) bool {
	found := false
	for _, p := range m.Payloads {
		n, ok := p.(*Notify)
		if !ok || (n.NotifyType != IKEV2_MESSAGE_ID_SYNC && n.NotifyType != IPSEC_REPLAY_COUNTER_SYNC) {
			return false
		}
		found = found || n.NotifyType == IKEV2_MESSAGE_ID_SYNC
	}
	return found
}

// answerMIDSync answers a peer's synchronisation request (RFC 6311 §5.1,
// the peer's side): ignored when M1 is below the ID we expect; otherwise
// we expect M2 = max(M1, ours) next and send our next request with
// P2 = max(P1, ours). The answer has message ID 0, is not cached and does
// not move the window. IPSEC_REPLAY_COUNTER_SYNC asks us to move our
// outbound sequence numbers on by its delta: the reservations grow by it
// and, once that is written, the data plane skips it (SkipSeq).
func (sa *IKESA) answerMIDSync(now time.Time, e *Engine, m *Message, rd *Ready) {
	nonce, m1, p1, ok := parseMIDSync(findNotify(m.Payloads, IKEV2_MESSAGE_ID_SYNC))
	if !ok || m1 < sa.nextIn {
		e.drop(rd, Packet{Local: sa.Local, Remote: sa.Remote}, m.SPIi, m.SPIr, ErrStaleMessage)
		return
	}
	m2, p2 := max(m1, sa.nextIn), max(p1, sa.nextOut)
	sa.nextIn, sa.nextOut = m2, p2
	sa.lastResp = nil // answers to requests before the sync are void
	data := make([]byte, 0, midSyncNonceLen+8)
	data = append(data, nonce...)
	data = binary.BigEndian.AppendUint32(data, p2)
	data = binary.BigEndian.AppendUint32(data, m2)
	var delta uint64
	if n := findNotify(m.Payloads, IPSEC_REPLAY_COUNTER_SYNC); n != nil {
		switch len(n.Data) {
		case 4:
			delta = uint64(binary.BigEndian.Uint32(n.Data))
		case 8:
			delta = binary.BigEndian.Uint64(n.Data)
		}
	}
	var skips []*ChildSA
	for _, c := range sa.children {
		if delta > 0 && c.replacedBy == nil && c.seq.outResv < c.maxSeq() {
			c.seq.outResv += min(delta, c.maxSeq()-c.seq.outResv)
			skips = append(skips, c)
		}
	}
	e.stats.MsgIDSyncsAnswered++
	resp := sa.header(INFORMATIONAL, 0, true)
	resp.Payloads = []Payload{&Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC, Data: data}}
	sa.send(sa.seal(e, &resp), rd)
	for _, c := range skips {
		sa.dataPlane(e, rd, SetSeqLimit{InSPI: c.InSPI, OutSeqLimit: c.seq.outResv, OutSeqMargin: c.seq.block / 2})
		sa.dataPlane(e, rd, SkipSeq{InSPI: c.InSPI, Delta: delta})
	}
	sa.persist(e, PersistUpdated, rd) // after: the data-plane changes wait for it
}
