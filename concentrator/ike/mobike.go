package ike

import (
	"bytes"
	"crypto/subtle"
	"net/netip"
	"time"
)

// Address changes of an established SA: NAT rebindings (RFC 7296 §2.23)
// and MOBIKE (RFC 4555). Addresses move only on authenticated messages;
// the CHILD SAs follow in the data plane without being renegotiated.

// mayMove reports whether an authenticated message m that came over other
// addresses than sa's moves sa: before it is established (the NAT-T port
// float during IKE_AUTH, RFC 7296 §2.23), when the peer is behind a NAT
// (a NAT rebinding), or with MOBIKE for the peer's UPDATE_SA_ADDRESSES
// request (RFC 4555 §3.5). Otherwise a peer not behind a NAT, or a
// MOBIKE peer's other messages, keep the SA where it is: an authenticated
// message replayed or reflected from elsewhere does not divert it.
func (sa *IKESA) mayMove(m *Message) bool {
	switch {
	case sa.state != stateEstablished:
		return true
	case sa.natRemote:
		return true
	case sa.mobike:
		return !m.IsResponse() && m.Exchange == INFORMATIONAL && findNotify(m.Payloads, UPDATE_SA_ADDRESSES) != nil
	}
	return false
}

// moved records that an authenticated message came over new addresses.
func (sa *IKESA) moved(now time.Time, e *Engine, local, remote netip.AddrPort, m *Message, rd *Ready) {
	oldRemote := sa.Remote
	sa.Local, sa.Remote = local, remote
	if sa.state != stateEstablished || len(sa.children) == 0 {
		return // e.g. the NAT-T port float during IKE_AUTH
	}
	for _, c := range sa.children {
		c.Local, c.Remote = local, remote
		sa.dataPlane(e, rd, UpdateChild{SPIi: sa.SPIi, SPIr: sa.SPIr, PeerID: sa.PeerID, Child: c})
	}
	ev := sa.event(EventAddressChanged)
	ev.Reason = "from " + oldRemote.String()
	rd.event(ev)
	sa.persist(e, PersistAddressChanged, rd)
}

// mobikeInformational handles the MOBIKE notifies of an INFORMATIONAL
// request and returns what the response carries: NAT detection for the
// new addresses and the peer's COOKIE2 (RFC 4555 §3.5, §3.7).
func (sa *IKESA) mobikeInformational(now time.Time, e *Engine, m *Message) []Payload {
	var reply []Payload
	update := findNotify(m.Payloads, UPDATE_SA_ADDRESSES) != nil
	if update && sa.mobike {
		if natL, natR, ok := detectNAT(m, sa.SPIi, sa.SPIr, sa.Local, sa.Remote); ok {
			sa.natLocal, sa.natRemote = natL || e.cfg.ForceEncap, natR
			reply = append(reply, natNotifies(e, sa.SPIi, sa.SPIr, sa.Local, sa.Remote, e.cfg.ForceEncap)...)
		}
	}
	if c2 := findNotify(m.Payloads, COOKIE2); c2 != nil && len(c2.Data) >= 8 && len(c2.Data) <= 64 {
		reply = append(reply, &Notify{NotifyType: COOKIE2, Data: bytes.Clone(c2.Data)})
	}
	return reply
}

// checkCookie2 verifies the COOKIE2 echoed in the response to our
// return-routability check.
func (sa *IKESA) checkCookie2(m *Message) bool {
	c2 := findNotify(m.Payloads, COOKIE2)
	ok := c2 != nil && subtle.ConstantTimeCompare(c2.Data, sa.cookie2) == 1
	sa.cookie2 = nil
	return ok
}

// startRoutabilityCheck sends an INFORMATIONAL with COOKIE2 to the peer's
// new address (RFC 4555 §3.7): if it does not come back, the SA goes.
func (sa *IKESA) startRoutabilityCheck(now time.Time, e *Engine, rd *Ready) {
	if sa.req != nil || !sa.idKnown(now, e, rd) {
		return
	}
	sa.cookie2 = e.randBytes(16)
	sa.request(now, e, INFORMATIONAL, []Payload{&Notify{NotifyType: COOKIE2, Data: sa.cookie2}}, rd)
	sa.req.rrCheck = true
}

// UpdateAddresses moves the IKE SA with our SPI spi to a new local address
// (the initiator side of MOBIKE, RFC 4555 §3.5): UPDATE_SA_ADDRESSES with
// NAT detection and COOKIE2, sent from the new address.
func (e *Engine) UpdateAddresses(now time.Time, spi uint64, local netip.AddrPort, rd *Ready) {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateEstablished || !sa.mobike || sa.req != nil {
		return
	}
	sa.flushDirty(e, rd)
	if !sa.idKnown(now, e, rd) {
		return // the caller asks again once the probe is done
	}
	sa.Local = local
	for _, c := range sa.children {
		c.Local = local
		sa.dataPlane(e, rd, UpdateChild{SPIi: sa.SPIi, SPIr: sa.SPIr, PeerID: sa.PeerID, Child: c})
	}
	sa.cookie2 = e.randBytes(16)
	payloads := []Payload{&Notify{NotifyType: UPDATE_SA_ADDRESSES}}
	payloads = append(payloads, natNotifies(e, sa.SPIi, sa.SPIr, sa.Local, sa.Remote, e.cfg.ForceEncap)...)
	payloads = append(payloads, &Notify{NotifyType: COOKIE2, Data: sa.cookie2})
	sa.request(now, e, INFORMATIONAL, payloads, rd)
	sa.req.rrCheck = true
}
