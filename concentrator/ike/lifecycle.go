package ike

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// The life of an established IKE SA (RFC 7296 §1.3, §1.4, §2.4, §2.8):
// CREATE_CHILD_SA for new, rekeyed and IKE-rekeyed SAs in both roles,
// simultaneous-rekey resolution, CHILD deletes both ways, and liveness
// checks. Every timer of an SA folds into its one timer-wheel entry.

// childRekey is a CREATE_CHILD_SA exchange we started.
type childRekey struct {
	old     *ChildSA // nil: a new CHILD SA; with ike: the IKE SA itself
	ike     bool
	inSPI   uint32 // our new inbound ESP SPI
	newSPI  uint64 // our new IKE SPI (IKE rekey)
	ni      []byte
	kx      suite.KeyExchange
	localTS []TrafficSelector
	peerTS  []TrafficSelector

	// Once the CREATE_CHILD_SA response chose additional key exchanges
	// (RFC 9370 §2.2.4, followup.go): what it negotiated, and the
	// IKE_FOLLOWUP_KE exchanges still to run.
	sel      *Selected
	nr       []byte
	tsi, tsr []TrafficSelector // narrowed by the responder (CHILD SA)
	secrets  [][]byte          // SK(0), SK(1), ... so far
	pending  []uint16          // additional key exchanges still to run
	link     []byte            // the responder's ADDITIONAL_KEY_EXCHANGE data
	addKX    suite.KeyExchange // of the IKE_FOLLOWUP_KE request outstanding
}

// reschedule sets the SA's timer to its earliest pending deadline.
func (sa *IKESA) reschedule(e *Engine) {
	var at time.Time
	earlier := func(t time.Time) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	switch {
	case sa.req != nil:
		earlier(sa.req.retransmitAt)
	case sa.state == stateInitDone:
		earlier(sa.created.Add(e.cfg.HalfOpenTimeout))
	case sa.state == stateEstablished:
		if e.cfg.DPDDelay > 0 {
			if sa.trafficAsked {
				// The check goes out anyway if no count comes by then.
				earlier(sa.lastRecv.Add(e.cfg.DPDDelay + e.cfg.RetransmitTimeout))
			} else {
				earlier(sa.lastRecv.Add(e.cfg.DPDDelay))
			}
		}
		for _, c := range sa.children {
			if c.replacedBy == nil && !c.rekeying {
				earlier(c.rekeyAt.Time())
			}
			earlier(c.retireAt.Time())
		}
		earlier(sa.rekeyIKE.Time())
		for _, f := range sa.followups {
			earlier(f.expires)
		}
	}
	if sa.lastResp != nil && sa.state == stateEstablished {
		if sa.lastRespAt.IsZero() {
			sa.lastRespAt = stampOf(sa.lastRecv.Add(ResponseCacheTTL))
		}
		earlier(sa.lastRespAt.Time())
	}
	if sa.state == stateEstablished && sa.behindNAT && e.cfg.KeepaliveInterval > 0 {
		if sa.nextKeepalive.IsZero() {
			sa.nextKeepalive = stampOf(sa.lastRecv.Add(e.cfg.KeepaliveInterval))
		}
		earlier(sa.nextKeepalive.Time())
	}
	e.schedule(sa, at)
}

// lifecycleTimers starts whatever is due on an established SA with no
// request outstanding: one exchange at a time (window size 1).
// ResponseCacheTTL is how long an established SA keeps its last response
// for a retransmitted request: longer than any peer goes on retransmitting
// (strongSwan's defaults give up after about 165 s), and short enough that
// an idle SA does not hold an IKE_AUTH response with certificates forever.
const ResponseCacheTTL = 5 * time.Minute

func (sa *IKESA) lifecycleTimers(now time.Time, e *Engine, rd *Ready) {
	if sa.lastResp != nil && !sa.lastRespAt.IsZero() && !now.Before(sa.lastRespAt.Time()) {
		sa.lastResp, sa.lastRespAt = nil, 0
	}
	if sa.behindNAT && e.cfg.KeepaliveInterval > 0 && !now.Before(sa.nextKeepalive.Time()) {
		// NAT-T keepalive (RFC 3948 §2.3): keeps our NAT's mapping alive.
		sa.nextKeepalive = stampOf(now.Add(e.cfg.KeepaliveInterval))
		rd.send(Send{Local: sa.Local, Remote: sa.Remote, Keepalive: true})
	}
	sa.expireFollowups(now, e, rd)
	for _, c := range sa.children {
		if c.overdue {
			c.overdue = false
			if rs, ok := e.cfg.ChildRekey.(RestoreScheduler); ok {
				c.rekeyAt = stampOf(rs.Overdue(now))
			}
		}
	}
	if sa.req != nil {
		return
	}
	// A restored SA finds the peer's expected message ID first (msgid.go).
	for _, c := range sa.children {
		if !c.retireAt.IsZero() && !now.Before(c.retireAt.Time()) {
			if !sa.idKnown(now, e, rd) {
				return
			}
			c.retireAt = 0
			sa.deleteChild(now, e, c, rd)
			return
		}
	}
	if !sa.rekeyIKE.IsZero() && !now.Before(sa.rekeyIKE.Time()) {
		if sa.peerRekeying(nil) {
			// The peer's IKE rekey is under way (followup.go).
			sa.rekeyIKE = stampOf(now.Add(e.cfg.RetransmitTimeout))
		} else if sa.idKnown(now, e, rd) {
			sa.startIKERekey(now, e, rd)
		}
		return
	}
	for _, c := range sa.children {
		if c.replacedBy == nil && !c.rekeying && !c.rekeyAt.IsZero() && !now.Before(c.rekeyAt.Time()) {
			if sa.peerRekeying(c) {
				c.rekeyAt = stampOf(now.Add(e.cfg.RetransmitTimeout)) // the peer's rekey of it is under way
				continue
			}
			if sa.idKnown(now, e, rd) {
				sa.startChildRekey(now, e, c, rd)
			}
			return
		}
	}
	if e.cfg.DPDDelay > 0 && !now.Before(sa.lastRecv.Add(e.cfg.DPDDelay)) {
		if e.cfg.TrafficLiveness && !sa.trafficAsked {
			// Inbound ESP is as good a sign of life (RFC 7296 §2.4): ask
			// for its count before sending anything.
			if c := sa.trafficCheck(); len(c.InSPIs) > 0 {
				sa.trafficAsked = true
				rd.DataPlane = append(rd.DataPlane, c)
				return
			}
		}
		sa.trafficAsked = false
		sa.livenessCheck(now, e, rd)
	}
}

// livenessCheck sends the SA's liveness check, an empty INFORMATIONAL
// request (or the message ID probe of a restored SA, which is one too).
func (sa *IKESA) livenessCheck(now time.Time, e *Engine, rd *Ready) {
	// Counted, not reported one by one: an idle fleet of a million SAs
	// sends this every DPDDelay.
	e.stats.DPDSent++
	if !sa.idKnown(now, e, rd) {
		return
	}
	sa.request(now, e, INFORMATIONAL, nil, rd)
	sa.req.dpd = true
}

// trafficCheck is the count of inbound ESP the SA's liveness check asks
// for: its CHILD SAs' inbound SPIs.
func (sa *IKESA) trafficCheck() CheckTraffic {
	c := CheckTraffic{SPI: sa.localSPI()}
	for _, ch := range sa.children {
		c.InSPIs = append(c.InSPIs, ch.InSPI)
	}
	return c
}

// Traffic answers the SA's CheckTraffic: packets[i] is how many inbound
// ESP packets the data plane authenticated for InSPIs[i] since it was
// installed (TrafficUnknown if it cannot tell). A count that changed since
// the SA's last check is a sign of life: the check waits another DPDDelay.
// Otherwise the liveness check goes out now.
func (e *Engine) Traffic(now time.Time, spi uint64, inSPIs []uint32, packets []uint64, rd *Ready) {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi || !sa.trafficAsked {
		return
	}
	sa.trafficAsked = false
	if sa.state != stateEstablished {
		return
	}
	seen := false
	for i, in := range inSPIs {
		c := sa.childByIn(in)
		if c == nil || i >= len(packets) || packets[i] == TrafficUnknown || packets[i] == c.inSeen {
			continue
		}
		c.inSeen, seen = packets[i], true
	}
	switch {
	case seen:
		sa.lastRecv = stampOf(now)
		e.stats.DPDTraffic++
	case sa.req == nil && !now.Before(sa.lastRecv.Add(e.cfg.DPDDelay)):
		sa.flushDirty(e, rd)
		sa.livenessCheck(now, e, rd)
	}
	sa.reschedule(e)
}

// Policy for CHILD SAs: an SA we initiated follows its Initiation, one we
// accepted follows the engine's configuration.
func (sa *IKESA) espSpecs(e *Engine) []ProposalSpec {
	if sa.ini != nil {
		return sa.ini.ESPProposals
	}
	return e.cfg.ESPProposals
}

func (sa *IKESA) ikeSpecs(e *Engine) []ProposalSpec {
	if sa.ini != nil {
		return sa.ini.IKEProposals
	}
	return e.cfg.IKEProposals
}

// allowedTS returns the selectors we accept for our side and the peer's.
func (sa *IKESA) allowedTS(e *Engine) (local, remote []TrafficSelector) {
	if sa.ini != nil {
		return sa.ini.TSi, sa.ini.TSr
	}
	remote = sa.peerPolicy(e).RemoteTS
	if vips := sa.vipSelectors(); vips != nil {
		remote = vips
	}
	return e.cfg.LocalTS, remote
}

// scheduleChildRekey asks the configured scheduler when to rekey c;
// renewal: c replaces a CHILD SA rekeyed on schedule.
func (sa *IKESA) scheduleChildRekey(e *Engine, c *ChildSA, renewal bool) {
	if e.cfg.ChildRekey != nil {
		c.rekeyAt = stampOf(e.cfg.ChildRekey.Schedule(c.Created, renewal))
	}
}

func (sa *IKESA) childByOut(spi uint32) *ChildSA {
	for _, c := range sa.children {
		if c.OutSPI == spi {
			return c
		}
	}
	return nil
}

func (sa *IKESA) childByIn(spi uint32) *ChildSA {
	for _, c := range sa.children {
		if c.InSPI == spi {
			return c
		}
	}
	return nil
}

// ---- responder side of CREATE_CHILD_SA ----

func (sa *IKESA) handleCreateChild(now time.Time, e *Engine, m *Message, rd *Ready) {
	x := collectExchange(m.Payloads)
	saP, nonce, ke, tsi, tsr := x.sa, x.nonce, x.ke, x.tsi, x.tsr
	rekeyN := findNotify(m.Payloads, REKEY_SA)
	reply := func(n NotifyType, data []byte) {
		sa.respond(e, CREATE_CHILD_SA, m.MessageID, []Payload{&Notify{NotifyType: n, Data: data}}, rd)
	}
	if saP == nil || nonce == nil {
		reply(INVALID_SYNTAX, nil)
		return
	}
	if tsi == nil && tsr == nil {
		sa.handleIKERekey(now, e, m, saP, nonce, ke, rd)
		return
	}
	if tsi == nil || tsr == nil {
		reply(INVALID_SYNTAX, nil)
		return
	}
	var old *ChildSA
	if rekeyN != nil {
		if rekeyN.Protocol != ProtoESP || len(rekeyN.SPI) != 4 {
			reply(INVALID_SYNTAX, nil)
			return
		}
		if old = sa.childByOut(binary.BigEndian.Uint32(rekeyN.SPI)); old == nil {
			sa.respond(e, CREATE_CHILD_SA, m.MessageID, []Payload{&Notify{Protocol: ProtoESP, SPI: rekeyN.SPI, NotifyType: CHILD_SA_NOT_FOUND}}, rd)
			return
		}
	} else if len(sa.children) >= e.cfg.MaxChildren {
		reply(NO_ADDITIONAL_SAS, nil)
		return
	}
	specs := sa.espSpecs(e)
	if ke != nil {
		specs = pfsSpecs(specs, sa.prop)
	}
	sel := SelectProposal(specs, saP.Proposals, ProtoESP, ke != nil)
	if sel == nil || len(sel.SPI) != 4 {
		reply(NO_PROPOSAL_CHOSEN, nil)
		return
	}
	addKEs := sel.AddKEs()
	if len(addKEs) > 0 && old != nil && (old.rekeying || sa.peerRekeying(old)) {
		// Both sides rekey the same CHILD SA and this exchange needs
		// IKE_FOLLOWUP_KE: the peer retries later (followup.go).
		reply(TEMPORARY_FAILURE, nil)
		return
	}
	var shared []byte
	var kx suite.KeyExchange
	if ke != nil {
		if ke.Group != sel.Group {
			reply(INVALID_KE_PAYLOAD, binary.BigEndian.AppendUint16(nil, sel.Group))
			return
		}
		var err error
		if kx, shared, err = suite.Respond(sel.Group, ke.Data, e.cfg.Rand); err != nil {
			reply(INVALID_SYNTAX, nil)
			return
		}
	}
	localAllowed, remoteAllowed := sa.allowedTS(e)
	ntsi, ntsr := Narrow(tsi.Selectors, remoteAllowed), e.sharedTS(Narrow(tsr.Selectors, localAllowed))
	if len(ntsi) == 0 || len(ntsr) == 0 {
		reply(TS_UNACCEPTABLE, nil)
		return
	}
	if !sa.outbound {
		if err := sa.claimSelectors(e, ntsi, false); err != nil {
			ev := sa.event(EventChildFailed)
			ev.Notify, ev.Reason = TS_UNACCEPTABLE, err.Error()
			rd.event(ev)
			reply(TS_UNACCEPTABLE, nil)
			return
		}
	}
	nr := e.randBytes(32)
	c := &ChildSA{
		OutSPI: binary.BigEndian.Uint32(sel.SPI), Proposal: sel.kept(), LocalTS: ntsr, RemoteTS: ntsi,
		Local: sa.Local, Remote: sa.Remote, Encap: sa.natLocal || sa.natRemote, VirtualIP: sa.firstVIP(), Created: now,
	}
	c.InSPI = e.newESPSPI(sa)
	if len(addKEs) > 0 {
		// Keys once the IKE_FOLLOWUP_KE exchanges are done.
		f := &followup{child: c, old: old, ni: bytes.Clone(nonce.Data), nr: nr, sel: sel,
			secrets: [][]byte{shared}, pending: addKEs}
		sa.respondFollowup(now, e, m.MessageID, f, []Payload{
			&SA{Proposals: []Proposal{sel.Proposal(binary.BigEndian.AppendUint32(nil, c.InSPI))}},
			&Nonce{Data: nr},
			&KE{Group: sel.Group, Data: kx.Public()},
		}, []Payload{&TS{Selectors: ntsi}, &TS{Responder: true, Selectors: ntsr}}, rd)
		return
	}
	if err := sa.childKeys(c, shared, nonce.Data, nr, false); err != nil {
		e.dropInSPI(c.InSPI)
		reply(NO_PROPOSAL_CHOSEN, nil)
		return
	}
	payloads := []Payload{
		&SA{Proposals: []Proposal{sel.Proposal(binary.BigEndian.AppendUint32(nil, c.InSPI))}},
		&Nonce{Data: nr},
	}
	if kx != nil {
		payloads = append(payloads, &KE{Group: sel.Group, Data: kx.Public()})
	}
	payloads = append(payloads, &TS{Selectors: ntsi}, &TS{Responder: true, Selectors: ntsr})
	sa.respond(e, CREATE_CHILD_SA, m.MessageID, payloads, rd)
	sa.installPeerChild(now, e, c, old, nonce.Data, nr, rd)
}

// installPeerChild installs the CHILD SA c the peer created (replacing old, if
// it rekeyed one) once the response that completes it is sent. Its events
// name its proposal (with any additional key exchanges) through Child.
func (sa *IKESA) installPeerChild(now time.Time, e *Engine, c, old *ChildSA, ni, nr []byte, rd *Ready) {
	c.initSeq(old)
	sa.addChild(c)
	sa.scheduleChildRekey(e, c, old != nil)
	sa.dataPlane(e, rd, sa.install(c, 0))
	ev := sa.event(EventChildInstalled)
	ev.Child = c
	if old == nil {
		rd.event(ev)
		sa.persist(e, PersistChildCreated, rd)
		return
	}
	ev.Kind, ev.Reason = EventChildRekeyed, "rekeyed by peer"
	e.stats.ChildRekeys++
	if old.rekeying {
		// Both sides rekey the same CHILD SA; resolved when our own
		// exchange completes (RFC 7296 §2.8.1).
		old.collision = c
		c.collisionNonce = minBytes(bytes.Clone(ni), nr)
	} else {
		old.replacedBy = c // the peer deletes the old one
	}
	rd.event(ev)
	sa.persist(e, PersistChildRekeyed, rd)
}

// pfsSpecs gives ESP proposals without groups the IKE SA's group, so a
// peer asking for PFS in CREATE_CHILD_SA gets it, and with it, optionally,
// the IKE SA's additional key exchanges (RFC 9370): a peer that protected
// the IKE SA with ML-KEM may do the same for its CHILD SAs.
func pfsSpecs(specs []ProposalSpec, ike *Selected) []ProposalSpec {
	out := make([]ProposalSpec, len(specs))
	for i, s := range specs {
		out[i] = s
		if len(s.Groups) == 0 {
			out[i].Groups = []uint16{ike.Group}
			for j, g := range ike.AddKE {
				if g != 0 {
					out[i].AddKEs[j] = []uint16{g, 0}
				}
			}
		}
	}
	return out
}

// handleIKERekey answers a peer's rekey of this IKE SA (RFC 7296 §1.3.2,
// §2.18): a new IKE SA with new SPIs and keys takes over the CHILD SAs.
func (sa *IKESA) handleIKERekey(now time.Time, e *Engine, m *Message, saP *SA, nonce *Nonce, ke *KE, rd *Ready) {
	reply := func(n NotifyType, data []byte) {
		sa.respond(e, CREATE_CHILD_SA, m.MessageID, []Payload{&Notify{NotifyType: n, Data: data}}, rd)
	}
	if sa.req != nil && sa.req.rekey != nil && sa.req.rekey.ike {
		reply(TEMPORARY_FAILURE, nil) // our own IKE rekey is under way
		return
	}
	sa.dropFollowups(e, true) // a new rekey supersedes one the peer left unfinished
	sel := SelectProposal(sa.ikeSpecs(e), saP.Proposals, ProtoIKE, true)
	if sel == nil || len(sel.SPI) != 8 || ke == nil {
		reply(NO_PROPOSAL_CHOSEN, nil)
		return
	}
	if ke.Group != sel.Group {
		reply(INVALID_KE_PAYLOAD, binary.BigEndian.AppendUint16(nil, sel.Group))
		return
	}
	kx, shared, err := suite.Respond(sel.Group, ke.Data, e.cfg.Rand)
	if err != nil {
		reply(INVALID_SYNTAX, nil)
		return
	}
	nr := e.randBytes(32)
	ni := bytes.Clone(nonce.Data)
	nsa := sa.successor(e, false, binary.BigEndian.Uint64(sel.SPI), e.newSPI(), sel)
	payloads := []Payload{
		&SA{Proposals: []Proposal{sel.Proposal(binary.BigEndian.AppendUint64(nil, nsa.SPIr))}},
		&Nonce{Data: nr},
		&KE{Group: sel.Group, Data: kx.Public()},
	}
	if addKEs := sel.AddKEs(); len(addKEs) > 0 {
		// The successor is made once the IKE_FOLLOWUP_KE exchanges are
		// done (followup.go).
		f := &followup{ike: nsa, ni: ni, nr: nr, sel: sel, secrets: [][]byte{shared}, pending: addKEs}
		sa.respondFollowup(now, e, m.MessageID, f, payloads, nil, rd)
		return
	}
	if err := nsa.deriveRekeyed(sa, ni, nr, shared); err != nil {
		reply(NO_PROPOSAL_CHOSEN, nil)
		return
	}
	sa.respond(e, CREATE_CHILD_SA, m.MessageID, payloads, rd)
	sa.handOver(now, e, nsa, rd)
}

// successor builds the IKE SA that replaces sa after a rekey; we are its
// original initiator if we started the rekey.
func (sa *IKESA) successor(e *Engine, initiator bool, spii, spir uint64, sel *Selected) *IKESA {
	return &IKESA{
		eng: e, initiator: initiator, outbound: sa.outbound, state: stateEstablished, SPIi: spii, SPIr: spir, Local: sa.Local, Remote: sa.Remote,
		prop: e.sharedProp(sel), natLocal: sa.natLocal, natRemote: sa.natRemote, peerFrag: sa.peerFrag,
		PeerID: sa.PeerID, vip: sa.vip, created: sa.created, estab: sa.estab,
		msgIDSync: sa.msgIDSync, vipForeign: sa.vipForeign, policy: sa.policy, peerCert: sa.peerCert, vip6: sa.vip6, vip6Foreign: sa.vip6Foreign,
		ini: sa.ini, // an SA we initiated keeps its Initiation's policy, whoever rekeys it
	}
}

// deriveRekeyed computes a rekeyed IKE SA's keys: SKEYSEED = prf(SK_d
// (old), g^ir (new) | Ni | Nr) with the old SA's PRF, then prf+ with the
// new one (RFC 7296 §2.18); the secrets of additional key exchanges follow
// the nonces (RFC 9370 §2.2.4).
func (nsa *IKESA) deriveRekeyed(old *IKESA, ni, nr, shared []byte, addKE ...[]byte) error {
	skeyseed := suite.RekeySKEYSEED(old.prf, old.skd(), shared, ni, nr, addKE...)
	prf, err := suite.NewPRF(nsa.prop.PRF)
	if err != nil {
		return err
	}
	c, err := suite.NewCipher(nsa.prop.Encr.ID, int(nsa.prop.Encr.KeyLen), nsa.prop.Integ)
	if err != nil {
		return err
	}
	k := suite.DeriveIKEKeys(prf, skeyseed, ni, nr, nsa.SPIi, nsa.SPIr, c)
	nsa.prf, nsa.cipher, nsa.km = prf, c, k.Kept
	return nil
}

// handOver moves the CHILD SAs to the new IKE SA and retires the old one.
func (sa *IKESA) handOver(now time.Time, e *Engine, nsa *IKESA, rd *Ready) {
	sa.dropFollowups(e, false) // unfinished CHILD SA exchanges of the peer end with the old SA
	for _, c := range sa.children {
		nsa.addChild(c)
		e.inSPIs[c.InSPI] = nsa
	}
	clear(sa.children)
	sa.children = nil
	sa.vip, sa.vip6 = netip.Addr{}, netip.Addr{} // the successor owns the virtual IPs now
	if sa.selectorsHeld {                        // and the selectors
		e.cfg.Selectors.Move(sa.localSPI(), nsa.localSPI())
		sa.selectorsHeld, nsa.selectorsHeld = false, true
	}
	nsa.lastRecv = stampOf(now)
	if e.cfg.IKERekeyAfter > 0 {
		nsa.rekeyIKE = stampOf(now.Add(e.cfg.IKERekeyAfter))
	}
	e.sas[nsa.localSPI()] = nsa
	sa.state = stateRekeyed
	sa.superseded = true // its record went with PersistIKERekeyed
	sa.rekeyIKE = 0
	nsa.reschedule(e)
	e.stats.IKERekeys++
	ev := nsa.event(EventIKERekeyed)
	ev.Reason = "replaces " + spiPair(sa.SPIi, sa.SPIr)
	rd.event(ev)
	nsa.rekeyedFrom = sa.localSPI()
	nsa.persist(e, PersistIKERekeyed, rd)
}

func spiPair(i, r uint64) string { return fmt.Sprintf("%016x_%016x", i, r) }

// ---- initiator side of CREATE_CHILD_SA ----

// startChildRekey rekeys c: CREATE_CHILD_SA with REKEY_SA (RFC 7296 §1.3.3),
// with PFS when the ESP proposals name a group.
func (sa *IKESA) startChildRekey(now time.Time, e *Engine, c *ChildSA, rd *Ready) {
	specs := sa.espSpecs(e)
	rk := &childRekey{old: c, ni: e.randBytes(32), localTS: c.LocalTS, peerTS: c.RemoteTS}
	if len(specs) > 0 && len(specs[0].Groups) > 0 {
		kx, err := suite.GenerateKeyExchange(specs[0].Groups[0], e.cfg.Rand)
		if err == nil {
			rk.kx = kx
		}
	}
	rk.inSPI = e.newESPSPI(sa)
	payloads := []Payload{
		&Notify{Protocol: ProtoESP, SPI: binary.BigEndian.AppendUint32(nil, c.InSPI), NotifyType: REKEY_SA},
		&SA{Proposals: Proposals(specs, ProtoESP, binary.BigEndian.AppendUint32(nil, rk.inSPI), rk.kx != nil)},
		&Nonce{Data: rk.ni},
	}
	if rk.kx != nil {
		payloads = append(payloads, &KE{Group: rk.kx.Group(), Data: rk.kx.Public()})
	}
	payloads = append(payloads, &TS{Selectors: c.LocalTS}, &TS{Responder: true, Selectors: c.RemoteTS})
	c.rekeying = true
	sa.request(now, e, CREATE_CHILD_SA, payloads, rd)
	sa.req.rekey = rk
}

func (sa *IKESA) handleCreateChildResponse(now time.Time, e *Engine, rk *childRekey, m *Message, rd *Ready) {
	if rk.ike {
		sa.handleIKERekeyResponse(now, e, rk, m, rd)
		return
	}
	fail := func(reason string, n NotifyType) { sa.rekeyFailed(now, e, rk, reason, n, rd) }
	if n := firstError(m.Payloads); n != nil {
		fail("peer refused the CHILD SA rekey", n.NotifyType)
		return
	}
	x := collectExchange(m.Payloads)
	saP, nonce, ke, tsi, tsr := x.sa, x.nonce, x.ke, x.tsi, x.tsr
	specs := sa.espSpecs(e)
	if saP == nil || nonce == nil || tsi == nil || tsr == nil {
		fail("CREATE_CHILD_SA response is missing payloads", INVALID_SYNTAX)
		return
	}
	sel, err := AcceptSelected(specs, saP, ProtoESP, rk.kx != nil)
	if err != nil || len(sel.SPI) != 4 {
		fail("peer chose an ESP proposal we did not offer", NO_PROPOSAL_CHOSEN)
		return
	}
	var shared []byte
	if rk.kx != nil {
		if ke == nil || ke.Group != rk.kx.Group() {
			fail("peer's KE does not match", INVALID_KE_PAYLOAD)
			return
		}
		if shared, err = rk.kx.SharedSecret(ke.Data); err != nil {
			fail(err.Error(), INVALID_SYNTAX)
			return
		}
	}
	if !Within(tsi.Selectors, rk.localTS) || !Within(tsr.Selectors, rk.peerTS) {
		fail("peer widened the traffic selectors", TS_UNACCEPTABLE)
		return
	}
	rk.sel, rk.nr, rk.secrets = sel, bytes.Clone(nonce.Data), [][]byte{shared}
	rk.tsi, rk.tsr = tsi.Selectors, tsr.Selectors
	if sa.startFollowup(now, e, rk, m, rd) {
		return
	}
	sa.finishChildRekey(now, e, rk, rd)
}

// rekeyFailed ends a rekey we started that did not complete: the CHILD SA
// or the IKE SA is rekeyed again later.
func (sa *IKESA) rekeyFailed(now time.Time, e *Engine, rk *childRekey, reason string, n NotifyType, rd *Ready) {
	rk.clear()
	retry := e.cfg.RetransmitTimeout * 8
	if n == TEMPORARY_FAILURE {
		// Perhaps the peer's exchange collided with ours: retry after a
		// random delay, so that the two sides do not meet again.
		var b [2]byte
		e.read(b[:])
		retry += time.Duration(binary.BigEndian.Uint16(b[:])) * retry / 65536
	}
	if rk.ike {
		e.dropSPI(rk.newSPI)
		if e.cfg.IKERekeyAfter > 0 {
			sa.rekeyIKE = stampOf(now.Add(retry))
		}
		ev := sa.event(EventIKEFailed)
		ev.Notify, ev.Reason = n, reason
		rd.event(ev)
		return
	}
	old := rk.old
	old.rekeying = false
	e.dropInSPI(rk.inSPI)
	if peer := old.collision; peer != nil {
		// The peer's rekey of the same SA went through: keep its result.
		old.replacedBy, old.collision = peer, nil
		sa.scheduleChildRekey(e, peer, true)
		return
	}
	old.rekeyAt = stampOf(now.Add(retry)) // try again later
	ev := sa.event(EventChildFailed)
	ev.Child, ev.Notify, ev.Reason = old, n, reason
	rd.event(ev)
}

// finishChildRekey installs the CHILD SA our rekey negotiated (rk.sel,
// rk.nr, rk.secrets) and retires the old one.
func (sa *IKESA) finishChildRekey(now time.Time, e *Engine, rk *childRekey, rd *Ready) {
	old, sel := rk.old, rk.sel
	c := &ChildSA{
		InSPI: rk.inSPI, OutSPI: binary.BigEndian.Uint32(sel.SPI), Proposal: sel.kept(),
		LocalTS: rk.tsi, RemoteTS: rk.tsr, Local: sa.Local, Remote: sa.Remote,
		Encap: sa.natLocal || sa.natRemote, VirtualIP: old.VirtualIP, Created: now,
	}
	err := sa.childKeys(c, rk.secrets[0], rk.ni, rk.nr, true, rk.secrets[1:]...)
	if err != nil {
		sa.rekeyFailed(now, e, rk, err.Error(), NO_PROPOSAL_CHOSEN, rd)
		return
	}
	rk.clear()
	old.rekeying = false
	c.initSeq(old)
	sa.addChild(c)
	sa.scheduleChildRekey(e, c, true)
	e.stats.ChildRekeys++
	sa.dataPlane(e, rd, sa.install(c, old.InSPI))
	ev := sa.event(EventChildRekeyed)
	ev.Child, ev.Reason = c, "rekeyed by us"
	rd.event(ev)
	defer sa.persist(e, PersistChildRekeyed, rd)

	victim := old
	old.replacedBy = c
	if peer := old.collision; peer != nil {
		// Simultaneous rekey (RFC 7296 §2.8.1): of the two new SAs, the one
		// created with the lowest of the four nonces is closed by the side
		// that created it; the winner's creator deletes the old SA.
		e.stats.RekeyCollisions++
		old.collision = nil
		if bytes.Compare(minBytes(rk.ni, rk.nr), peer.collisionNonce) < 0 {
			old.replacedBy = peer // ours is redundant; the peer deletes the old SA
			c.replacedBy = peer
			victim = c
		} else {
			peer.rekeyAt = 0 // the peer deletes its redundant SA
		}
		peer.collisionNonce = nil
	}
	if victim == old && e.cfg.RekeyOverlap > 0 {
		// Keep the old SA until the new one carries traffic (ChildActive)
		// or the overlap has passed, so packets in flight are not lost.
		old.retireAt = stampOf(now.Add(e.cfg.RekeyOverlap))
		return
	}
	sa.deleteChild(now, e, victim, rd)
}

// ExpireChild handles a data plane's expiry of the CHILD SA with inbound
// SPI inSPI: soft (its sequence numbers or lifetime are nearly used up)
// rekeys it now, hard (unusable) deletes it.
func (e *Engine) ExpireChild(now time.Time, inSPI uint32, hard bool, rd *Ready) {
	e.begin(now)
	sa := e.inSPIs[inSPI]
	if sa == nil || sa.state != stateEstablished {
		return
	}
	sa.flushDirty(e, rd)
	c := sa.childByIn(inSPI)
	if c == nil {
		return
	}
	if hard {
		if sa.req == nil {
			sa.deleteChild(now, e, c, rd)
			return
		}
		c.retireAt = stampOf(now) // as soon as the exchange under way is done
	} else if c.replacedBy == nil && !c.rekeying {
		c.rekeyAt = stampOf(now)
	}
	sa.reschedule(e)
}

// ChildActive tells the engine that the CHILD SA with inbound SPI inSPI
// has received traffic: a predecessor kept after a rekey can go now.
func (e *Engine) ChildActive(now time.Time, inSPI uint32) {
	sa := e.inSPIs[inSPI]
	if sa == nil {
		return
	}
	c := sa.childByIn(inSPI)
	for _, x := range sa.children {
		if c != nil && x.replacedBy == c && !x.retireAt.IsZero() && now.Before(x.retireAt.Time()) {
			x.retireAt = stampOf(now)
			sa.reschedule(e)
		}
	}
}

func minBytes(a, b []byte) []byte {
	if bytes.Compare(a, b) <= 0 {
		return a
	}
	return b
}

// deleteChild sends an INFORMATIONAL Delete for c (our inbound SPI); c goes
// when the peer answers.
func (sa *IKESA) deleteChild(now time.Time, e *Engine, c *ChildSA, rd *Ready) {
	if sa.req != nil {
		return // one exchange at a time; the old SA is retried by its own rekeyAt
	}
	if !sa.idKnown(now, e, rd) {
		c.retireAt = stampOf(now) // once the message ID is known
		return
	}
	sa.request(now, e, INFORMATIONAL, []Payload{
		&Delete{Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{binary.BigEndian.AppendUint32(nil, c.InSPI)}},
	}, rd)
	sa.req.deleteChild = c
}

// childDeleted removes c after its Delete exchange.
func (sa *IKESA) childDeleted(e *Engine, c *ChildSA, reason string, rd *Ready) {
	for i, x := range sa.children {
		if x == c {
			sa.children = slices.Delete(sa.children, i, i+1)
			e.dropInSPI(c.InSPI)
			sa.dataPlane(e, rd, RemoveChild{SPIi: sa.SPIi, SPIr: sa.SPIr, Child: c})
			ev := sa.event(EventChildDeleted)
			ev.Child, ev.Reason = c, reason
			rd.event(ev)
			sa.persist(e, PersistChildDeleted, rd, c.InSPI)
			return
		}
	}
}

// startIKERekey rekeys the IKE SA itself; we become the original initiator
// of its successor. Proposals with additional key exchanges run them in
// IKE_FOLLOWUP_KE exchanges on this SA before the successor exists.
func (sa *IKESA) startIKERekey(now time.Time, e *Engine, rd *Ready) {
	specs := sa.ikeSpecs(e)
	kx, err := suite.GenerateKeyExchange(sa.prop.Group, e.cfg.Rand)
	if err != nil {
		sa.rekeyIKE = 0
		return
	}
	rk := &childRekey{ike: true, newSPI: e.newSPI(), ni: e.randBytes(32), kx: kx}
	// Offer our proposals, the current group first so the KE fits.
	prs := Proposals(specs, ProtoIKE, binary.BigEndian.AppendUint64(nil, rk.newSPI), true)
	sa.request(now, e, CREATE_CHILD_SA, []Payload{
		&SA{Proposals: prs},
		&Nonce{Data: rk.ni},
		&KE{Group: kx.Group(), Data: kx.Public()},
	}, rd)
	sa.req.rekey = rk
	sa.rekeyIKE = 0
	// Reserve the new SPI so no other SA takes it meanwhile.
	e.sas[rk.newSPI] = sa
}

func (sa *IKESA) handleIKERekeyResponse(now time.Time, e *Engine, rk *childRekey, m *Message, rd *Ready) {
	x := collectExchange(m.Payloads)
	saP, nonce, ke := x.sa, x.nonce, x.ke
	retry := func(reason string, n NotifyType) { sa.rekeyFailed(now, e, rk, reason, n, rd) }
	if n := firstError(m.Payloads); n != nil {
		retry("peer refused the IKE SA rekey: "+n.NotifyType.String(), n.NotifyType)
		return
	}
	if saP == nil || nonce == nil || ke == nil {
		retry("IKE rekey response is missing payloads", INVALID_SYNTAX)
		return
	}
	sel, err := AcceptSelected(sa.ikeSpecs(e), saP, ProtoIKE, true)
	if err != nil || len(sel.SPI) != 8 || sel.Group != rk.kx.Group() || ke.Group != sel.Group {
		retry("peer chose an IKE proposal we cannot use", NO_PROPOSAL_CHOSEN)
		return
	}
	shared, err := rk.kx.SharedSecret(ke.Data)
	if err != nil {
		retry(err.Error(), INVALID_SYNTAX)
		return
	}
	rk.sel, rk.nr, rk.secrets = sel, bytes.Clone(nonce.Data), [][]byte{shared}
	if sa.startFollowup(now, e, rk, m, rd) {
		return
	}
	sa.finishIKERekey(now, e, rk, rd)
}

// finishIKERekey makes the successor our IKE rekey negotiated and deletes
// this SA.
func (sa *IKESA) finishIKERekey(now time.Time, e *Engine, rk *childRekey, rd *Ready) {
	nsa := sa.successor(e, true, rk.newSPI, binary.BigEndian.Uint64(rk.sel.SPI), rk.sel)
	if err := nsa.deriveRekeyed(sa, rk.ni, rk.nr, rk.secrets[0], rk.secrets[1:]...); err != nil {
		sa.rekeyFailed(now, e, rk, err.Error(), NO_PROPOSAL_CHOSEN, rd)
		return
	}
	rk.clear()
	delete(e.sas, rk.newSPI)
	sa.handOver(now, e, nsa, rd)
	// Delete the old IKE SA (its CHILD SAs now belong to the successor).
	sa.state = stateDeleting
	sa.request(now, e, INFORMATIONAL, []Payload{&Delete{Protocol: ProtoIKE}}, rd)
	sa.req.deleteIKE = true
}

// ---- operator and test entry points ----

// RekeyChild starts rekeying the CHILD SA with inbound SPI inSPI of the IKE
// SA with our SPI spi, if no other exchange is under way.
func (e *Engine) RekeyChild(now time.Time, spi uint64, inSPI uint32, rd *Ready) {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateEstablished || sa.req != nil {
		return
	}
	sa.flushDirty(e, rd)
	if c := sa.childByIn(inSPI); c != nil && !sa.idKnown(now, e, rd) {
		c.rekeyAt = stampOf(now) // once the message ID is known
		return
	}
	if c := sa.childByIn(inSPI); c != nil && c.replacedBy == nil && !sa.peerRekeying(c) {
		sa.startChildRekey(now, e, c, rd)
		return
	}
}

// CheckLiveness sends a liveness check (an empty INFORMATIONAL request, as
// DPD does after DPDDelay of silence) on the IKE SA with our SPI spi now;
// a gateway does this when its path to the responder may have changed. It
// reports false when nothing was started: no such established SA, or an
// exchange is under way (whose answer proves liveness as well).
func (e *Engine) CheckLiveness(now time.Time, spi uint64, rd *Ready) bool {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateEstablished || sa.req != nil || sa.localSPI() != spi {
		return false
	}
	sa.flushDirty(e, rd)
	sa.livenessCheck(now, e, rd)
	return true
}

// RekeyIKE starts rekeying the IKE SA with our SPI spi.
func (e *Engine) RekeyIKE(now time.Time, spi uint64, rd *Ready) {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateEstablished || sa.req != nil || sa.localSPI() != spi {
		return
	}
	sa.flushDirty(e, rd)
	if !sa.idKnown(now, e, rd) {
		sa.rekeyIKE = stampOf(now) // once the message ID is known
		return
	}
	if sa.peerRekeying(nil) {
		return
	}
	sa.startIKERekey(now, e, rd)
}

// DeleteChild deletes one CHILD SA of the IKE SA with our SPI spi.
func (e *Engine) DeleteChild(now time.Time, spi uint64, inSPI uint32, rd *Ready) {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateEstablished {
		return
	}
	sa.flushDirty(e, rd)
	if c := sa.childByIn(inSPI); c != nil {
		sa.deleteChild(now, e, c, rd)
		return
	}
}
