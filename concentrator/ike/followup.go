package ike

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// IKE_FOLLOWUP_KE (RFC 9370 §2.2.4): additional key exchanges when a
// CREATE_CHILD_SA exchange creates or rekeys a CHILD SA or rekeys the IKE
// SA, with a proposal that has ADDKE transforms.
//
//	HDR(CREATE_CHILD_SA), SK {SA, Ni, KEi, [TSi, TSr]}  -->
//	           <--  HDR(CREATE_CHILD_SA), SK {SA, Nr, KEr, N(ADDITIONAL_KEY_EXCHANGE)(link1), [TSi, TSr]}
//	HDR(IKE_FOLLOWUP_KE), SK {KEi(1), N(ADDITIONAL_KEY_EXCHANGE)(link1)}  -->
//	           <--  HDR(IKE_FOLLOWUP_KE), SK {KEr(1)[, N(ADDITIONAL_KEY_EXCHANGE)(link2)]}
//	...
//
// The link is opaque data of the responder (ours: fresh random octets per
// step) that ties each IKE_FOLLOWUP_KE request to its exchange; the last
// response carries none. Only then does the new SA exist, with keys over
// every secret, concatenated after the nonces of the CREATE_CHILD_SA
// exchange (not chained as in IKE_INTERMEDIATE):
//
//	IKE SA rekey:             SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))
//	CHILD SA creation, rekey: KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))
//
// SK_d, the PRF and the message protection are the existing IKE SA's; the
// IKE_FOLLOWUP_KE exchanges are ordinary requests of it (message IDs,
// retransmissions, the response cache).
//
// Failures. A responder that cannot link a request answers STATE_NOT_FOUND
// and the initiator treats the whole exchange as failed and tries again
// later (a CHILD SA keeps its old keys, the IKE SA its old one); any other
// error notify does the same. A responder forgets an unfinished exchange
// after followupTimeout (releasing the inbound SPI it allotted), when the
// IKE SA is rekeyed or deleted, or when more than maxFollowups are open.
//
// Restarts and hand-offs. Nothing of an unfinished exchange is persisted:
// it is aborted and tried again. As responder, each answer that leaves an
// exchange open persists the peer's next message ID (a PersistReserved
// write), so a node that restores the SA takes the peer's next
// IKE_FOLLOWUP_KE request with the ID it expects and answers
// STATE_NOT_FOUND: the peer's rekey fails and is retried, the IKE SA
// lives on. As initiator, a restored SA has no request outstanding; a
// CHILD SA whose rekey time passed is rekeyed again soon (restoreRekey),
// the IKE SA after IKERekeyAfter; the peer forgets its half of the
// exchange after its own timeout.
//
// Simultaneous rekeys of the same CHILD SA where either exchange needs
// IKE_FOLLOWUP_KE are not resolved by nonces: as responder we answer
// TEMPORARY_FAILURE while our own rekey of it is under way, and we start
// none while the peer's is, so at most one completes. An IKE SA rekey
// of the peer is refused with TEMPORARY_FAILURE while ours is under way
// (as without additional key exchanges).

// followupTimeout is how long a responder keeps an unfinished
// IKE_FOLLOWUP_KE exchange (RFC 9370 suggests 5 to 20 seconds).
const followupTimeout = 20 * time.Second

// maxFollowups bounds the unfinished exchanges a peer may leave open on
// one IKE SA; the oldest goes first.
const maxFollowups = 2

// followup is a peer's CREATE_CHILD_SA exchange waiting for its
// IKE_FOLLOWUP_KE requests (we are its responder).
type followup struct {
	link    []byte
	expires time.Time
	sel     *Selected
	ni, nr  []byte
	secrets [][]byte // SK(0), SK(1), ... so far
	pending []uint16 // additional key exchanges still to run
	// A CHILD SA (old: the one it rekeys, nil: a new one), its keys not
	// yet derived, its inbound SPI allotted; or the IKE SA's successor
	// (its SPIs; it is built when the last exchange completes).
	child *ChildSA
	old   *ChildSA
	ike   *IKESA
}

func (f *followup) clear() {
	for _, s := range f.secrets {
		clear(s)
	}
	f.secrets = nil
}

func (rk *childRekey) clear() {
	for _, s := range rk.secrets {
		clear(s)
	}
	rk.secrets, rk.addKX = nil, nil
}

// ---- responder ----

// respondFollowup answers a CREATE_CHILD_SA request whose chosen proposal
// has additional key exchanges: head (SA, Nr, KEr), the link, tail (TSi,
// TSr), and keeps f until the peer's IKE_FOLLOWUP_KE requests come.
func (sa *IKESA) respondFollowup(now time.Time, e *Engine, msgID uint32, f *followup, head, tail []Payload, rd *Ready) {
	f.link = e.randBytes(8)
	f.expires = now.Add(followupTimeout)
	payloads := append(append(head, &Notify{NotifyType: ADDITIONAL_KEY_EXCHANGE, Data: f.link}), tail...)
	sa.respond(e, CREATE_CHILD_SA, msgID, payloads, rd)
	if len(sa.followups) >= maxFollowups {
		sa.endFollowup(e, sa.followups[0], "superseded by another exchange", rd)
	}
	sa.followups = append(sa.followups, f)
	// The peer's next message ID, so that a node restoring the SA answers
	// the next IKE_FOLLOWUP_KE with STATE_NOT_FOUND instead of ignoring it.
	sa.persist(e, PersistReserved, rd)
}

// handleFollowupRequest answers one IKE_FOLLOWUP_KE request.
func (sa *IKESA) handleFollowupRequest(now time.Time, e *Engine, m *Message, rd *Ready) {
	reply := func(n NotifyType) {
		sa.respond(e, IKE_FOLLOWUP_KE, m.MessageID, []Payload{&Notify{NotifyType: n}}, rd)
	}
	ln := findNotify(m.Payloads, ADDITIONAL_KEY_EXCHANGE)
	if ln == nil {
		reply(INVALID_SYNTAX)
		return
	}
	var f *followup
	for _, x := range sa.followups {
		if bytes.Equal(x.link, ln.Data) {
			f = x
		}
	}
	if f == nil {
		reply(STATE_NOT_FOUND) // never known, timed out, or lost in a restart
		return
	}
	ke := collectExchange(m.Payloads).ke
	if ke == nil || ke.Group != f.pending[0] {
		sa.endFollowup(e, f, "IKE_FOLLOWUP_KE without the KE payload of "+suite.GroupName(f.pending[0]), rd)
		reply(INVALID_SYNTAX)
		return
	}
	kx, secret, err := suite.Respond(ke.Group, ke.Data, e.cfg.Rand)
	if err != nil {
		sa.endFollowup(e, f, "peer's additional KE: "+err.Error(), rd)
		reply(INVALID_SYNTAX)
		return
	}
	f.secrets = append(f.secrets, secret)
	f.pending = f.pending[1:]
	payloads := []Payload{&KE{Group: ke.Group, Data: kx.Public()}}
	if len(f.pending) > 0 {
		f.link = e.randBytes(8)
		f.expires = now.Add(followupTimeout)
		sa.respond(e, IKE_FOLLOWUP_KE, m.MessageID, append(payloads, &Notify{NotifyType: ADDITIONAL_KEY_EXCHANGE, Data: f.link}), rd)
		sa.persist(e, PersistReserved, rd)
		return
	}
	sa.removeFollowup(f)
	defer f.clear()
	if f.ike != nil {
		// Built again: the SA may have moved (NAT, MOBIKE) meanwhile.
		nsa := sa.successor(e, false, f.ike.SPIi, f.ike.SPIr, f.sel)
		if err := nsa.deriveRekeyed(sa, f.ni, f.nr, f.secrets[0], f.secrets[1:]...); err != nil {
			reply(NO_PROPOSAL_CHOSEN)
			return
		}
		sa.respond(e, IKE_FOLLOWUP_KE, m.MessageID, payloads, rd)
		sa.handOver(now, e, nsa, rd)
		return
	}
	c, old := f.child, f.old
	if old != nil && sa.childByIn(old.InSPI) != old {
		// The peer deleted what it rekeys meanwhile.
		e.dropInSPI(c.InSPI)
		sa.respond(e, IKE_FOLLOWUP_KE, m.MessageID, []Payload{&Notify{Protocol: ProtoESP,
			SPI: binary.BigEndian.AppendUint32(nil, old.OutSPI), NotifyType: CHILD_SA_NOT_FOUND}}, rd)
		return
	}
	c.Local, c.Remote, c.Encap = sa.Local, sa.Remote, sa.natLocal || sa.natRemote // the SA may have moved meanwhile
	if err := sa.childKeys(c, f.secrets[0], f.ni, f.nr, false, f.secrets[1:]...); err != nil {
		e.dropInSPI(c.InSPI)
		reply(NO_PROPOSAL_CHOSEN)
		return
	}
	sa.respond(e, IKE_FOLLOWUP_KE, m.MessageID, payloads, rd)
	sa.installPeerChild(now, e, c, old, f.ni, f.nr, rd)
}

func (sa *IKESA) removeFollowup(f *followup) {
	for i, x := range sa.followups {
		if x == f {
			sa.followups = append(sa.followups[:i], sa.followups[i+1:]...)
			break
		}
	}
	if len(sa.followups) == 0 {
		sa.followups = nil
	}
}

// endFollowup forgets an unfinished exchange and reports it.
func (sa *IKESA) endFollowup(e *Engine, f *followup, reason string, rd *Ready) {
	sa.removeFollowup(f)
	f.clear()
	ev := sa.event(EventChildFailed)
	if f.ike != nil {
		ev.Kind = EventIKEFailed
	} else {
		e.dropInSPI(f.child.InSPI)
		ev.Child = f.old
	}
	ev.Reason = "IKE_FOLLOWUP_KE: " + reason
	rd.event(ev)
}

// dropFollowups forgets unfinished exchanges without a report: those of
// IKE SA rekeys only (ikeOnly), or all (the SA is rekeyed or removed).
func (sa *IKESA) dropFollowups(e *Engine, ikeOnly bool) {
	keep := sa.followups[:0]
	for _, f := range sa.followups {
		if ikeOnly && f.ike == nil {
			keep = append(keep, f)
			continue
		}
		f.clear()
		if f.child != nil {
			e.dropInSPI(f.child.InSPI)
		}
	}
	clear(sa.followups[len(keep):])
	sa.followups = keep
	if len(keep) == 0 {
		sa.followups = nil
	}
}

// expireFollowups forgets exchanges the peer did not continue in time.
func (sa *IKESA) expireFollowups(now time.Time, e *Engine, rd *Ready) {
	for i := 0; i < len(sa.followups); {
		if f := sa.followups[i]; !now.Before(f.expires) {
			sa.endFollowup(e, f, "the peer did not continue in time", rd)
			continue
		}
		i++
	}
}

// peerRekeying reports whether the peer's rekey of c (or, c nil, of the
// IKE SA) waits for IKE_FOLLOWUP_KE requests.
func (sa *IKESA) peerRekeying(c *ChildSA) bool {
	for _, f := range sa.followups {
		if c == nil && f.ike != nil || c != nil && f.old == c {
			return true
		}
	}
	return false
}

// ---- initiator ----

// startFollowup continues our CREATE_CHILD_SA exchange (rk) with
// IKE_FOLLOWUP_KE when the response chose additional key exchanges, and
// reports whether it did (or failed the rekey); false: the exchange is
// complete.
func (sa *IKESA) startFollowup(now time.Time, e *Engine, rk *childRekey, m *Message, rd *Ready) bool {
	pending := rk.sel.AddKEs()
	ln := findNotify(m.Payloads, ADDITIONAL_KEY_EXCHANGE)
	if len(pending) == 0 {
		if ln != nil {
			sa.rekeyFailed(now, e, rk, "ADDITIONAL_KEY_EXCHANGE without additional key exchanges", INVALID_SYNTAX, rd)
			return true
		}
		return false
	}
	if ln == nil || len(ln.Data) == 0 {
		sa.rekeyFailed(now, e, rk, "additional key exchanges chosen without ADDITIONAL_KEY_EXCHANGE", INVALID_SYNTAX, rd)
		return true
	}
	rk.pending, rk.link = pending, bytes.Clone(ln.Data)
	sa.sendFollowup(now, e, rk, rd)
	return true
}

func (sa *IKESA) sendFollowup(now time.Time, e *Engine, rk *childRekey, rd *Ready) {
	kx, err := suite.GenerateKeyExchange(rk.pending[0], e.cfg.Rand)
	if err != nil {
		sa.rekeyFailed(now, e, rk, err.Error(), NO_PROPOSAL_CHOSEN, rd)
		return
	}
	rk.addKX = kx
	sa.request(now, e, IKE_FOLLOWUP_KE, []Payload{
		&KE{Group: kx.Group(), Data: kx.Public()},
		&Notify{NotifyType: ADDITIONAL_KEY_EXCHANGE, Data: rk.link},
	}, rd)
	sa.req.rekey = rk
}

// handleFollowupResponse takes the answer to our IKE_FOLLOWUP_KE request:
// the next one, or the new SA.
func (sa *IKESA) handleFollowupResponse(now time.Time, e *Engine, rk *childRekey, m *Message, rd *Ready) {
	fail := func(reason string, n NotifyType) { sa.rekeyFailed(now, e, rk, reason, n, rd) }
	if n := firstError(m.Payloads); n != nil {
		fail("peer refused IKE_FOLLOWUP_KE: "+n.NotifyType.String(), n.NotifyType)
		return
	}
	ke := collectExchange(m.Payloads).ke
	if ke == nil || rk.addKX == nil || ke.Group != rk.addKX.Group() {
		fail("IKE_FOLLOWUP_KE response without the KE payload of "+suite.GroupName(rk.pending[0]), INVALID_SYNTAX)
		return
	}
	secret, err := rk.addKX.SharedSecret(ke.Data)
	if err != nil {
		fail(err.Error(), INVALID_SYNTAX)
		return
	}
	rk.secrets = append(rk.secrets, secret)
	rk.addKX = nil
	rk.pending = rk.pending[1:]
	ln := findNotify(m.Payloads, ADDITIONAL_KEY_EXCHANGE)
	if len(rk.pending) > 0 {
		if ln == nil || len(ln.Data) == 0 {
			fail("IKE_FOLLOWUP_KE response without ADDITIONAL_KEY_EXCHANGE", INVALID_SYNTAX)
			return
		}
		rk.link = bytes.Clone(ln.Data)
		sa.sendFollowup(now, e, rk, rd)
		return
	}
	if ln != nil {
		fail("ADDITIONAL_KEY_EXCHANGE after the last additional key exchange", INVALID_SYNTAX)
		return
	}
	if rk.ike {
		sa.finishIKERekey(now, e, rk, rd)
		return
	}
	sa.finishChildRekey(now, e, rk, rd)
}
