package ike

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// handleInitRequest answers an IKE_SA_INIT request (RFC 7296 §1.2) and
// creates a half-open SA.
func (e *Engine) handleInitRequest(now time.Time, pkt Packet, h Header, rd *Ready) {
	if e.initHandled(pkt, h, rd) {
		return
	}
	m, err := Decode(pkt.Data)
	if err != nil {
		e.initError(now, pkt, h, rd, err)
		return
	}
	x := collectExchange(m.Payloads)
	saP, ke, nonce := x.sa, x.ke, x.nonce
	var cookie *Notify // a cookie counts only as the first payload (RFC 7296 §2.6)
	if len(m.Payloads) > 0 {
		if n, ok := m.Payloads[0].(*Notify); ok && n.NotifyType == COOKIE {
			cookie = n
		}
	}
	if saP == nil || ke == nil || nonce == nil || m.sk != nil || m.skf != nil {
		e.initError(now, pkt, h, rd, errorf(INVALID_SYNTAX, "IKE_SA_INIT needs SA, KE and Nonce"))
		return
	}
	// Under load, demand a cookie before doing any expensive work.
	valid := false
	if e.underPressure() {
		if cookie != nil && len(cookie.Data) > 1 {
			valid = e.cookieValid(now, cookie.Data, nonce.Data, pkt.Remote.Addr(), h.SPIi)
		}
		if !valid {
			e.stats.CookiesSent++
			e.cookies.demand(now)
			c := e.cookieFor(now, e.currentCookie(now), nonce.Data, pkt.Remote.Addr(), h.SPIi)
			resp := Message{SPIi: h.SPIi, Exchange: IKE_SA_INIT, Flags: FlagResponse,
				Payloads: []Payload{&Notify{NotifyType: COOKIE, Data: c}}}
			rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{resp.Encode()}})
			rd.event(Event{Kind: EventCookieSent, SPIi: h.SPIi, Local: pkt.Local, Remote: pkt.Remote, Notify: COOKIE})
			return
		}
	}
	if err := e.admit(now, pkt.Remote.Addr(), len(pkt.Data), valid); err != nil {
		e.drop(rd, pkt, h.SPIi, 0, err)
		return
	}
	sel := SelectProposal(e.cfg.IKEProposals, saP.Proposals, ProtoIKE, true)
	if sel == nil {
		e.initError(now, pkt, h, rd, errorf(NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal"))
		return
	}
	if ke.Group != sel.Group {
		err := errorf(INVALID_KE_PAYLOAD, "peer sent KE for group %d, we want %d", ke.Group, sel.Group)
		err.Data = binary.BigEndian.AppendUint16(nil, sel.Group)
		e.initError(now, pkt, h, rd, err)
		return
	}
	kx, shared, err := suite.Respond(sel.Group, ke.Data, e.cfg.Rand)
	if err != nil {
		e.initError(now, pkt, h, rd, &Error{Notify: INVALID_SYNTAX, Reason: "peer's KE", Err: err})
		return
	}
	sa := &IKESA{
		eng: e, state: stateInitDone, SPIi: h.SPIi, SPIr: e.newSPI(), Local: pkt.Local, Remote: pkt.Remote,
		prop: e.sharedProp(sel), created: stampOf(now), nextIn: 1,
		hs: &handshake{initRemote: pkt.Remote, initReq: bytes.Clone(pkt.Data), ni: bytes.Clone(nonce.Data), nr: e.randBytes(32)},
	}
	if err := sa.deriveKeys(e, shared); err != nil {
		e.initError(now, pkt, h, rd, err)
		return
	}
	natL, natR, natT := detectNAT(m, sa.SPIi, 0, pkt.Local, pkt.Remote)
	sa.natLocal, sa.natRemote = natL || (natT && e.cfg.ForceEncap), natR
	// Bound to a wildcard address we cannot tell: no keepalives then.
	sa.behindNAT = natL && !pkt.Local.Addr().IsUnspecified()
	sa.peerFrag = findNotify(m.Payloads, IKEV2_FRAGMENTATION_SUPPORTED) != nil
	sa.hs.peerHashes = parseHashes(findNotify(m.Payloads, SIGNATURE_HASH_ALGORITHMS))
	intermediate, err := sa.acceptIntermediate(m)
	if err != nil {
		e.initError(now, pkt, h, rd, err)
		return
	}

	resp := sa.header(IKE_SA_INIT, 0, true)
	resp.Payloads = []Payload{
		&SA{Proposals: []Proposal{sel.Proposal(nil)}},
		&KE{Group: sel.Group, Data: kx.Public()},
		&Nonce{Data: sa.hs.nr},
	}
	if natT {
		resp.Payloads = append(resp.Payloads, natNotifies(e, sa.SPIi, sa.SPIr, pkt.Local, pkt.Remote, e.cfg.ForceEncap)...)
	}
	if e.cfg.CertReq != nil {
		resp.Payloads = append(resp.Payloads, &CertReq{Encoding: CertX509Signature, Data: e.cfg.CertReq})
	}
	if sa.peerFrag {
		resp.Payloads = append(resp.Payloads, &Notify{NotifyType: IKEV2_FRAGMENTATION_SUPPORTED})
	}
	if sa.hs.peerHashes != nil {
		resp.Payloads = append(resp.Payloads, hashesNotify())
	}
	if intermediate {
		resp.Payloads = append(resp.Payloads, &Notify{NotifyType: INTERMEDIATE_EXCHANGE_SUPPORTED})
	}
	sa.hs.initResp = resp.Encode()
	e.sas[sa.SPIr] = sa
	e.initIndex[initKey{sa.SPIi, sa.hs.initRemote}] = sa
	e.halfOpenAdd(sa)
	sa.reschedule(e)
	rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{sa.hs.initResp}})
}

// initError answers a failed IKE_SA_INIT request with the error's notify
// (unencrypted, responder SPI zero) and reports it.
func (e *Engine) initError(now time.Time, pkt Packet, h Header, rd *Ready, err error) {
	n := NotifyFor(err)
	ev := Event{Kind: EventIKEFailed, SPIi: h.SPIi, Local: pkt.Local, Remote: pkt.Remote, Notify: n, Reason: err.Error()}
	e.stats.Failed[n]++
	if n != 0 {
		data := NotifyDataFor(err)
		resp := Message{SPIi: h.SPIi, Exchange: IKE_SA_INIT, Flags: FlagResponse,
			Payloads: []Payload{&Notify{NotifyType: n, Data: data}}}
		rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{resp.Encode()}})
	}
	rd.event(ev)
}

// initHandled does what a request that creates a half-open SA
// (IKE_SA_INIT, IKE_SESSION_RESUME) needs before it is parsed: it drops a
// non-zero message ID or an oversized request, and answers a
// retransmission from the cache. It reports whether pkt was dealt with.
func (e *Engine) initHandled(pkt Packet, h Header, rd *Ready) bool {
	if h.MessageID != 0 {
		e.drop(rd, pkt, h.SPIi, 0, ErrStaleMessage)
		return true
	}
	if sa := e.initIndex[initKey{h.SPIi, pkt.Remote}]; sa != nil {
		// A retransmission: answer from the cache; a different request with
		// the same SPI is dropped (RFC 7296 §2.1).
		if sa.state == stateInitDone && bytes.Equal(sa.hs.initReq, pkt.Data) {
			e.stats.DuplicateRequests++
			rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{sa.hs.initResp}})
			return true
		}
		e.drop(rd, pkt, h.SPIi, 0, ErrRetransmission)
		return true
	}
	if h.Exchange == IKE_SA_INIT && e.recentlyEstablished(e.now, initKey{h.SPIi, pkt.Remote}) {
		// A late copy of the request of an SA established meanwhile (a
		// retransmission or a cookie retry that waited in a queue): a
		// half-open SA made from it would never see an IKE_AUTH, and
		// would hold its source's half-open quota until it timed out.
		e.stats.DuplicateRequests++
		e.drop(rd, pkt, h.SPIi, 0, ErrRetransmission)
		return true
	}
	if len(pkt.Data) > e.cfg.MaxInitSize {
		// Nothing legitimate is this large; keeping it would let a padded
		// request make a half-open SA cost tens of kilobytes.
		e.stats.Oversized++
		e.drop(rd, pkt, h.SPIi, 0, ErrInitTooLarge)
		return true
	}
	return false
}

// handleAuthRequest authenticates the initiator, authenticates us, and
// sets up the first CHILD SA (RFC 7296 §1.2).
func (sa *IKESA) handleAuthRequest(now time.Time, e *Engine, m *Message, rd *Ready) {
	a := collectAuth(m.Payloads, true)
	fail := func(err error) { sa.failAuth(e, m.MessageID, err, nil, rd) }
	if sa.hs.eap != nil {
		sa.eapRequest(now, e, m, a, fail, rd)
		return
	}
	if a.id == nil {
		fail(errorf(INVALID_SYNTAX, "IKE_AUTH without IDi"))
		return
	}
	if sa.inter != nil && len(sa.inter.pending) > 0 {
		fail(errorf(INVALID_SYNTAX, "IKE_AUTH before the additional key exchanges"))
		return
	}
	sa.PeerID = Identity{Type: a.id.IDType, Data: bytes.Clone(a.id.Data)}
	sa.peerCertReq = a.certRq
	var psk []byte
	if e.cfg.PSKs != nil {
		psk, _ = e.cfg.PSKs.PSK(sa.PeerID)
	}
	if sa.resume != nil {
		if err := sa.checkResumed(now, e, a); err != nil {
			fail(err)
			return
		}
	} else {
		if a.auth == nil && e.cfg.EAP != nil {
			sa.startEAP(now, e, m, a, psk, fail, rd)
			return
		}
		if err := sa.verifyInitiator(now, e, a, a.id, psk); err != nil {
			if errors.Is(err, sig.ErrRevocationPending) {
				// The node is fetching a CRL or an OCSP answer: park the
				// exchange by not answering. Nothing moved on (message ID,
				// state), so the peer's retransmission is processed afresh,
				// by when the answer is in memory (or its fetch failed and
				// policy decides). The half-open timeout bounds the wait.
				e.stats.RevocationParked++
				return
			}
			fail(err)
			return
		}
	}
	// Authenticate ourselves the way the peer did, if we can: PSK peers get
	// PSK, certificate peers get our signature.
	usePSK := a.auth.Method == sig.MethodPSK || e.cfg.Local.Signer == nil
	idr := &ID{Responder: true, IDType: e.cfg.Local.ID.Type, Data: e.cfg.Local.ID.Data}
	sendCerts := e.cfg.Local.SendCert == SendCertAlways || sa.peerCertReq
	var auth []Payload
	var err error
	if sa.resume != nil {
		auth = sa.resumedAuth(sa.authOctets(false, idr))
	} else {
		auth, err = sa.ourAuth(e, &e.cfg.Local, sa.authOctets(false, idr), usePSK, psk, sendCerts)
	}
	if err != nil {
		fail(err)
		return
	}
	ours := append(append([]Payload{idr}, auth...), sa.ticketPayloads(now, e, m)...)
	sa.establishResponder(now, e, m.MessageID, m.Payloads, a, ours, rd)
}

// verifyInitiator checks the initiator's AUTH over its message 1 with
// identity id, keyed by psk when it is a shared-key MIC.
func (sa *IKESA) verifyInitiator(now time.Time, e *Engine, a authPayloads, id *ID, psk []byte) error {
	err := sa.verifyPeer(now, e, a, sa.authOctets(true, id), psk, e.cfg.Verifier)
	if err == nil {
		return nil
	}
	// Under load we may have demanded a cookie for this IKE_SA_INIT and
	// then accepted its cookieless retransmission; the initiator signs the
	// message 1 it sent last: the one with our cookie.
	for _, msg1 := range sa.cookieRetries(now, e) {
		if sa.verifyPeer(now, e, a, sa.signedOctets(msg1, sa.hs.nr, sa.hs.skpi, id), psk, e.cfg.Verifier) == nil {
			return nil
		}
	}
	return err
}

// establishResponder completes IKE_AUTH: the IKE SA is authenticated (by
// ours, the payloads that authenticate us), the CHILD SA that req (the
// first IKE_AUTH request's payloads, collected in a) asked for is set up,
// and the answer to message msgID goes out.
func (sa *IKESA) establishResponder(now time.Time, e *Engine, msgID uint32, req []Payload, a authPayloads, ours []Payload, rd *Ready) {
	payloads := ours
	if e.cfg.MOBIKE && findNotify(req, MOBIKE_SUPPORTED) != nil {
		sa.mobike = true
		payloads = append(payloads, &Notify{NotifyType: MOBIKE_SUPPORTED})
	}
	// RFC 6311: we synchronise message IDs after a restore and answer
	// a peer that does.
	sa.msgIDSync = findNotify(req, IKEV2_MESSAGE_ID_SYNC_SUPPORTED) != nil
	payloads = append(payloads, &Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC_SUPPORTED})
	// RFC 7296 §2.4: INITIAL_CONTACT counts in the first IKE_AUTH request
	// only (req is that one's payloads, with EAP too).
	sa.unique = e.cfg.UniqueIDs.Action(findNotify(req, INITIAL_CONTACT) != nil)

	// The IKE SA is authenticated; a CHILD SA failure below does not undo it.
	sa.state = stateEstablished
	sa.estab = stampOf(now)
	sa.hs.eap = nil
	e.halfOpenDone(now, sa, true)
	delete(e.initIndex, initKey{sa.SPIi, sa.hs.initRemote})
	e.noteEstablishedInit(now, initKey{sa.SPIi, sa.hs.initRemote})
	sa.lastRecv = stampOf(now)
	e.stats.Established++
	rd.event(sa.event(EventIKEEstablished))

	child, childPayloads, cerr := sa.acceptChild(now, e, a)
	payloads = append(payloads, childPayloads...)
	sa.respond(e, IKE_AUTH, msgID, payloads, rd)
	sa.hs = nil // AUTH is done and the first CHILD SA keyed: free what only they needed
	defer sa.reschedule(e)
	if cerr != nil {
		ev := sa.event(EventChildFailed)
		ev.Notify, ev.Reason = NotifyFor(cerr), cerr.Error()
		rd.event(ev)
		sa.persist(e, PersistEstablished, rd)
		return
	}
	if e.cfg.IKERekeyAfter > 0 {
		sa.rekeyIKE = stampOf(now.Add(e.cfg.IKERekeyAfter))
	}
	if child != nil {
		sa.scheduleChildRekey(e, child, false)
		sa.dataPlane(e, rd, sa.install(child, 0))
		ev := sa.event(EventChildInstalled)
		ev.Child = child
		rd.event(ev)
	}
	sa.persist(e, PersistEstablished, rd)
}

// acceptChild negotiates the CHILD SA carried in IKE_AUTH. It returns the
// payloads for the response: the CHILD SA's, or an error notify.
func (sa *IKESA) acceptChild(now time.Time, e *Engine, a authPayloads) (*ChildSA, []Payload, error) {
	if a.sa == nil && a.tsi == nil && a.tsr == nil {
		return nil, nil, nil // childless (RFC 6023)
	}
	failN := func(err *Error) (*ChildSA, []Payload, error) {
		return nil, []Payload{&Notify{NotifyType: err.Notify}}, err
	}
	if a.sa == nil || a.tsi == nil || a.tsr == nil {
		return failN(errorf(INVALID_SYNTAX, "CHILD SA needs SA, TSi and TSr"))
	}
	sel := SelectProposal(e.cfg.ESPProposals, a.sa.Proposals, ProtoESP, false)
	if sel == nil {
		return failN(errorf(NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal"))
	}
	if len(sel.SPI) != 4 {
		return failN(errorf(INVALID_SYNTAX, "ESP proposal with a %d-byte SPI", len(sel.SPI)))
	}
	var payloads []Payload
	pol := sa.peerPolicy(e)
	remoteAllowed := pol.RemoteTS
	if a.cp != nil && a.cp.CfgType == CFG_REQUEST {
		reply, allowed, err := sa.assignVIPs(e, a.cp)
		if err != nil {
			return failN(err)
		}
		if reply != nil {
			payloads = append(payloads, reply)
			remoteAllowed = allowed
		}
	}
	tsi := Narrow(a.tsi.Selectors, remoteAllowed)
	tsr := e.sharedTS(Narrow(a.tsr.Selectors, e.cfg.LocalTS))
	if len(tsi) == 0 || len(tsr) == 0 {
		sa.releaseVIPs(e)
		return failN(errorf(TS_UNACCEPTABLE, "traffic selectors %s === %s not allowed for %s (policy %s)",
			FormatSelectors(a.tsi.Selectors), FormatSelectors(a.tsr.Selectors), sa.PeerID, pol.Name))
	}
	if err := sa.claimSelectors(e, tsi, false); err != nil {
		sa.releaseVIPs(e)
		return failN(err.(*Error))
	}
	c := &ChildSA{
		OutSPI: binary.BigEndian.Uint32(sel.SPI), Proposal: sel.kept(),
		LocalTS: tsr, RemoteTS: tsi, Local: sa.Local, Remote: sa.Remote,
		Encap: sa.natLocal || sa.natRemote, VirtualIP: sa.firstVIP(), Created: now,
	}
	c.InSPI = e.newESPSPI(sa)
	if err := sa.childKeys(c, nil, sa.hs.ni, sa.hs.nr, sa.initiator); err != nil {
		e.dropInSPI(c.InSPI)
		return failN(err.(*Error))
	}
	c.initSeq(nil)
	sa.addChild(c)
	spi := binary.BigEndian.AppendUint32(nil, c.InSPI)
	payloads = append(payloads,
		&SA{Proposals: []Proposal{sel.Proposal(spi)}},
		&TS{Selectors: tsi},
		&TS{Responder: true, Selectors: tsr},
	)
	return c, payloads, nil
}

// handleInformational answers liveness checks and deletes (RFC 7296 §1.4).
func (sa *IKESA) handleInformational(now time.Time, e *Engine, m *Message, rd *Ready) {
	reply := sa.mobikeInformational(now, e, m)
	var freed []uint32
	for _, p := range m.Payloads {
		d, ok := p.(*Delete)
		if !ok {
			continue
		}
		switch d.Protocol {
		case ProtoIKE:
			sa.respond(e, INFORMATIONAL, m.MessageID, nil, rd)
			sa.terminate(e, "deleted by peer", rd)
			return
		case ProtoESP:
			if d.SPISize != 4 {
				continue
			}
			var ours [][]byte
			for _, spi := range d.SPIs {
				if c := sa.removeChildByOut(binary.BigEndian.Uint32(spi)); c != nil {
					e.dropInSPI(c.InSPI)
					ours = append(ours, binary.BigEndian.AppendUint32(nil, c.InSPI))
					sa.dataPlane(e, rd, RemoveChild{SPIi: sa.SPIi, SPIr: sa.SPIr, Child: c})
					ev := sa.event(EventChildDeleted)
					ev.Child, ev.Reason = c, "deleted by peer"
					rd.event(ev)
				}
			}
			if len(ours) > 0 {
				reply = append(reply, &Delete{Protocol: ProtoESP, SPISize: 4, SPIs: ours})
				for _, o := range ours {
					freed = append(freed, binary.BigEndian.Uint32(o))
				}
			}
		}
	}
	sa.respond(e, INFORMATIONAL, m.MessageID, reply, rd)
	if len(freed) > 0 {
		sa.persist(e, PersistChildDeleted, rd, freed...)
	}
	if sa.mobike && findNotify(m.Payloads, UPDATE_SA_ADDRESSES) != nil {
		sa.startRoutabilityCheck(now, e, rd)
	}
}

func (sa *IKESA) removeChildByOut(spi uint32) *ChildSA {
	for i, c := range sa.children {
		if c.OutSPI == spi {
			sa.children = slices.Delete(sa.children, i, i+1)
			return c
		}
	}
	return nil
}

// terminate removes the SA and its CHILD SAs.
func (sa *IKESA) terminate(e *Engine, reason string, rd *Ready) {
	if !sa.superseded && (sa.state == stateEstablished || sa.state == stateDeleting) {
		var freed []uint32
		for _, c := range sa.children {
			freed = append(freed, c.InSPI)
		}
		sa.persist(e, PersistDeleted, rd, freed...)
	}
	for _, c := range sa.children {
		rd.action(RemoveChild{SPIi: sa.SPIi, SPIr: sa.SPIr, Child: c})
	}
	ev := sa.event(EventIKEDeleted)
	ev.Reason = reason
	e.remove(sa)
	rd.event(ev)
}

// Discard removes the IKE SA with our SPI spi at once, without an exchange
// with its peer: its deletion is persisted, its CHILD SAs leave the data
// plane. For an SA whose last answer was never sent (a cluster gave the
// selectors it claimed to an earlier claim of another identity): the peer
// does not know it, or must not keep it.
func (e *Engine) Discard(spi uint64, reason string, rd *Ready) {
	e.step++
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi {
		return
	}
	sa.terminate(e, reason, rd)
}

// Delete starts deleting the IKE SA with our SPI spi: an INFORMATIONAL
// request with a Delete payload; the SA goes when the peer answers or the
// request times out.
func (e *Engine) Delete(now time.Time, spi uint64, rd *Ready) {
	e.begin(now)
	e.deleteSA(now, spi, rd)
}

func (e *Engine) deleteSA(now time.Time, spi uint64, rd *Ready) {
	sa := e.sas[spi]
	if sa == nil {
		return
	}
	sa.flushDirty(e, rd)
	if sa.state != stateEstablished {
		sa.terminate(e, "deleted locally", rd)
		return
	}
	if sa.req != nil || !sa.idKnown(now, e, rd) {
		sa.deleteAfter = true // one exchange at a time: after the one under way
		return
	}
	sa.state = stateDeleting
	sa.request(now, e, INFORMATIONAL, []Payload{&Delete{Protocol: ProtoIKE}}, rd)
	sa.req.deleteIKE = true
}

// cookieRetries returns the IKE_SA_INIT requests the initiator may have
// sent after the cookieless one we answered: the same message with our
// cookie as its first payload (RFC 7296 §2.6), for the current and the
// previous cookie secret. None when the message we answered carried a
// cookie already.
func (sa *IKESA) cookieRetries(now time.Time, e *Engine) [][]byte {
	m1 := sa.hs.initReq
	if len(m1) < 28 || PayloadType(m1[16]) == PayloadNotify {
		return nil // answered with a cookie (the first payload), or malformed
	}
	var out [][]byte
	cur := e.currentCookie(now)
	for _, v := range []byte{cur, cur - 1} {
		c := e.cookieFor(now, v, sa.hs.ni, sa.hs.initRemote.Addr(), sa.SPIi)
		if c == nil {
			continue
		}
		n := 8 + len(c) // generic header, protocol, SPI size, type, data
		b := make([]byte, 0, len(m1)+n)
		b = append(b, m1[:28]...)
		b[16] = byte(PayloadNotify)
		binary.BigEndian.PutUint32(b[24:], uint32(len(m1)+n))
		b = append(b, m1[16], 0)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
		b = append(b, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(COOKIE))
		b = append(b, c...)
		out = append(out, append(b, m1[28:]...))
	}
	return out
}
