package ike

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// Session resumption (RFC 5723), ticket by value.
//
// A gateway that sends N(TICKET_REQUEST) in IKE_AUTH gets, once it is
// authenticated, N(TICKET_LT_OPAQUE): a lifetime and a ticket that only
// the cluster can open. The ticket holds what the IKE SA needs to be
// resumed without authenticating the gateway again: its identity, the
// negotiated IKE transforms and SK_d, sealed with AES-256-GCM under a key
// of the cluster-wide ticket key ring (TicketKeys; a key id in the clear
// says which). Any node holding the ring can resume it:
//
//	IKE_SESSION_RESUME  HDR(SPIi, 0), [N(COOKIE)], Ni, N(TICKET_OPAQUE), [N(NAT_DETECTION_*)]
//	                    HDR(SPIi, SPIr), Nr, [N(NAT_DETECTION_*)]
//	SKEYSEED = prf(SK_d (from the ticket), "Resumption" | Ni | Nr)
//	{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
//	IKE_AUTH            as usual, AUTH = prf(SK_px, <signed octets>) (method 2): the
//	                    proof of knowing SK_d; the IDi must be the ticket's identity
//
// A ticket is redeemed once its IKE_AUTH verifies: the key ring's Redeem
// refuses it a second time within its lifetime (single use). The record of
// used tickets is the key ring's to keep; an in-memory TicketRing keeps it
// per process, so in a cluster a ticket is single-use per node (a gateway
// that keeps its SK_d could resume once on each node; a third party that
// merely saw the ticket, which travels in the clear, cannot resume at all).
// A ticket is refused once expired, once its key left the ring, or when
// the ticket's transforms are no longer among the configured proposals.

// TicketKeys is the key ring tickets are sealed with. Implementations are
// shared by all engine shards and must be safe for concurrent use.
type TicketKeys interface {
	// Current returns the id and 32-octet AES-256 key new tickets are
	// sealed with; ok is false when there is none (no ticket is issued).
	Current() (id uint32, key []byte, ok bool)
	// Key returns the key with id while the ring holds it.
	Key(id uint32) ([]byte, bool)
	// Redeem records the use of the ticket with id at now; false if it was
	// used before. The record may be dropped after until (its expiry).
	Redeem(id [16]byte, now, until time.Time) bool
}

// DefaultTicketLifetime is how long an issued ticket is valid when
// Config.TicketLifetime is 0.
const DefaultTicketLifetime = 8 * time.Hour

// TicketKeyLen is the length of a ticket key (AES-256).
const TicketKeyLen = 32

// TicketRing is an in-memory TicketKeys: keys by id, a current one, and the
// ids of redeemed tickets until they expire.
type TicketRing struct {
	mu      sync.Mutex
	keys    map[uint32][]byte
	current uint32
	has     bool
	used    map[[16]byte]time.Time
	pruneAt time.Time
}

// NewTicketRing returns an empty ring.
func NewTicketRing() *TicketRing {
	return &TicketRing{keys: map[uint32][]byte{}, used: map[[16]byte]time.Time{}}
}

// Add puts a key into the ring (not current yet).
func (r *TicketRing) Add(id uint32, key []byte) error {
	if len(key) != TicketKeyLen {
		return fmt.Errorf("ike: ticket key %d has %d octets, want %d", id, len(key), TicketKeyLen)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys[id] = bytes.Clone(key)
	return nil
}

// SetCurrent makes the key with id the one new tickets are sealed with.
func (r *TicketRing) SetCurrent(id uint32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.keys[id]; !ok {
		return fmt.Errorf("ike: no ticket key %d", id)
	}
	r.current, r.has = id, true
	return nil
}

// Remove drops a key: tickets sealed with it are refused from then on.
func (r *TicketRing) Remove(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.keys[id]; ok {
		clear(k)
		delete(r.keys, id)
	}
	if r.current == id {
		r.has = false
	}
}

// IDs returns the ids of the keys in the ring and the current one.
func (r *TicketRing) IDs() (ids []uint32, current uint32, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id := range r.keys {
		ids = append(ids, id)
	}
	return ids, r.current, r.has
}

func (r *TicketRing) Current() (uint32, []byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.has {
		return 0, nil, false
	}
	return r.current, r.keys[r.current], true
}

func (r *TicketRing) Key(id uint32) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.keys[id]
	return k, ok
}

func (r *TicketRing) Redeem(id [16]byte, now, until time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.After(r.pruneAt) {
		for k, t := range r.used {
			if now.After(t) {
				delete(r.used, k)
			}
		}
		r.pruneAt = now.Add(time.Minute)
	}
	if t, ok := r.used[id]; ok && !now.After(t) {
		return false
	}
	r.used[id] = until
	return true
}

// Ticket is what our initiator keeps to resume an IKE SA: the opaque
// ticket and the state it stands for.
type Ticket struct {
	Opaque    []byte    // as the responder sent it
	Expires   time.Time // by the lifetime the responder announced
	SKd       []byte    // SK_d of the IKE SA the ticket was issued for
	Proposal  Selected  // its IKE transforms
	Responder Identity
}

// resumption is the resumption state of a half-open IKE SA.
type resumption struct {
	oldSKd  []byte // SK_d from the ticket
	id      [16]byte
	expires time.Time
	peer    Identity   // responder: the identity the ticket names
	cert    *CertAttrs // and its certificate's attributes (nil: none)
}

// ticketState is a ticket's sealed content.
type ticketState struct {
	id       [16]byte
	expires  time.Time
	proposal Selected
	skd      []byte
	peer     Identity
	// cert: the attributes of the certificate the peer authenticated
	// with, if it did (policies match them on resumption as at IKE_AUTH);
	// an optional trailer after the identity.
	cert *CertAttrs
}

const (
	ticketVersion = 1
	ticketNonce   = 12
	ticketAAD     = "ikefleet IKEv2 ticket v1"
)

// ErrTicket is a ticket that cannot be resumed (malformed, unknown key,
// tampered, expired).
var ErrTicket = errors.New("ike: ticket refused")

func (t *ticketState) marshal() []byte {
	b := make([]byte, 0, 64+len(t.skd)+len(t.peer.Data))
	b = append(b, ticketVersion)
	b = append(b, t.id[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(t.expires.Unix()))
	p := &t.proposal
	for _, v := range []uint16{p.Encr.ID, p.Encr.KeyLen, p.Integ, p.PRF, p.Group} {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	for _, v := range p.AddKE {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	b = append(b, byte(len(t.skd)))
	b = append(b, t.skd...)
	b = append(b, t.peer.Type)
	b = binary.BigEndian.AppendUint16(b, uint16(len(t.peer.Data)))
	b = append(b, t.peer.Data...)
	if t.cert != nil {
		b = appendCertAttrs(b, t.cert)
	}
	return b
}

func parseTicketState(b []byte) (*ticketState, error) {
	fail := func(r string) (*ticketState, error) { return nil, fmt.Errorf("%w: %s", ErrTicket, r) }
	const fixed = 1 + 16 + 8 + 2*(5+NumAddKE) + 1
	if len(b) < fixed || b[0] != ticketVersion {
		return fail("unknown layout")
	}
	t := &ticketState{proposal: Selected{Protocol: ProtoIKE, Num: 1}}
	copy(t.id[:], b[1:17])
	t.expires = time.Unix(int64(binary.BigEndian.Uint64(b[17:25])), 0)
	u := func(i int) uint16 { return binary.BigEndian.Uint16(b[25+2*i:]) }
	t.proposal.Encr = EncrAlg{ID: u(0), KeyLen: u(1)}
	t.proposal.Integ, t.proposal.PRF, t.proposal.Group = u(2), u(3), u(4)
	for i := range NumAddKE {
		t.proposal.AddKE[i] = u(5 + i)
	}
	off := 25 + 2*(5+NumAddKE)
	n := int(b[off])
	off++
	if len(b) < off+n+3 {
		return fail("truncated")
	}
	t.skd = bytes.Clone(b[off : off+n])
	off += n
	t.peer.Type = b[off]
	l := int(binary.BigEndian.Uint16(b[off+1:]))
	off += 3
	if len(b) < off+l || t.peer.Type == 0 {
		return fail("bad identity")
	}
	t.peer.Data = bytes.Clone(b[off : off+l])
	if off += l; off < len(b) {
		c, err := parseCertAttrs(b[off:])
		if err != nil {
			return fail(err.Error())
		}
		t.cert = c
	}
	return t, nil
}

func ticketAEAD(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// sealTicket: key id (4) | nonce (12) | AES-256-GCM(state, AAD = key id | ticketAAD).
func (e *Engine) sealTicket(t *ticketState) ([]byte, error) {
	id, key, ok := e.cfg.Tickets.Current()
	if !ok {
		return nil, errors.New("ike: no current ticket key")
	}
	aead, err := ticketAEAD(key)
	if err != nil {
		return nil, err
	}
	pt := t.marshal()
	defer clear(pt)
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+ticketNonce+len(pt)+aead.Overhead()), id)
	out = append(out, e.randBytes(ticketNonce)...)
	aad := append(binary.BigEndian.AppendUint32(nil, id), ticketAAD...)
	return aead.Seal(out, out[4:4+ticketNonce], pt, aad), nil
}

// openTicket opens and checks a ticket at now.
func (e *Engine) openTicket(now time.Time, b []byte) (*ticketState, error) {
	if len(b) < 4+ticketNonce+16 {
		return nil, fmt.Errorf("%w: %d octets", ErrTicket, len(b))
	}
	id := binary.BigEndian.Uint32(b)
	key, ok := e.cfg.Tickets.Key(id)
	if !ok {
		return nil, fmt.Errorf("%w: key %d is not in the ring", ErrTicket, id)
	}
	aead, err := ticketAEAD(key)
	if err != nil {
		return nil, err
	}
	aad := append(binary.BigEndian.AppendUint32(nil, id), ticketAAD...)
	pt, err := aead.Open(nil, b[4:4+ticketNonce], b[4+ticketNonce:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: does not open", ErrTicket)
	}
	defer clear(pt)
	t, err := parseTicketState(pt)
	if err != nil {
		return nil, err
	}
	if e.wall(now).After(t.expires) { // a wall date: the ticket outlives the process
		return nil, fmt.Errorf("%w: expired %v", ErrTicket, t.expires.UTC().Format(time.RFC3339))
	}
	// The transforms must still be acceptable.
	pr := t.proposal.Proposal(nil)
	if SelectProposal(e.cfg.IKEProposals, []Proposal{pr}, ProtoIKE, true) == nil {
		return nil, fmt.Errorf("%w: its IKE transforms %v are no longer configured", ErrTicket, t.proposal.String())
	}
	return t, nil
}

// deriveResumed computes a resumed IKE SA's keys (RFC 5723 §5.1).
func (sa *IKESA) deriveResumed(oldSKd []byte) error {
	prf, err := suite.NewPRF(sa.prop.PRF)
	if err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "PRF", Err: err}
	}
	c, err := suite.NewCipher(sa.prop.Encr.ID, int(sa.prop.Encr.KeyLen), sa.prop.Integ)
	if err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "cipher", Err: err}
	}
	if len(oldSKd) != prf.Size() {
		return errorf(INVALID_SYNTAX, "ticket SK_d of %d octets for %s", len(oldSKd), suite.PRFName(sa.prop.PRF))
	}
	skeyseed := prf.Sum(oldSKd, []byte("Resumption"), sa.hs.ni, sa.hs.nr)
	k := suite.DeriveIKEKeys(prf, skeyseed, sa.hs.ni, sa.hs.nr, sa.SPIi, sa.SPIr, c)
	clear(skeyseed)
	sa.prf, sa.cipher = prf, c
	sa.km, sa.hs.skpi, sa.hs.skpr = k.Kept, k.SKpi, k.SKpr
	return nil
}

// resumedAuth is our AUTH payload over octets in a resumed IKE_AUTH:
// prf(SK_px, octets) (RFC 5723 §5.2).
func (sa *IKESA) resumedAuth(octets []byte) []Payload {
	key := sa.hs.skpr
	if sa.initiator {
		key = sa.hs.skpi
	}
	return []Payload{&Auth{Method: sig.MethodPSK, Data: sa.prf.Sum(key, octets)}}
}

// verifyResumed checks the peer's AUTH in a resumed IKE_AUTH.
func (sa *IKESA) verifyResumed(a authPayloads, octets []byte) error {
	if a.auth == nil || a.auth.Method != sig.MethodPSK {
		return errorf(AUTHENTICATION_FAILED, "resumed IKE_AUTH without a shared-key AUTH")
	}
	key := sa.hs.skpi
	if sa.initiator {
		key = sa.hs.skpr
	}
	if subtle.ConstantTimeCompare(sa.prf.Sum(key, octets), a.auth.Data) != 1 {
		return errorf(AUTHENTICATION_FAILED, "resumed AUTH of %v does not verify", sa.PeerID)
	}
	return nil
}

// ---- responder ----

// ticketPayloads answers a TICKET_REQUEST in IKE_AUTH: a ticket for the
// now authenticated SA, or TICKET_NACK.
func (sa *IKESA) ticketPayloads(now time.Time, e *Engine, m *Message) []Payload {
	if findNotify(m.Payloads, TICKET_REQUEST) == nil {
		return nil
	}
	if e.cfg.Tickets == nil {
		return []Payload{&Notify{NotifyType: TICKET_NACK}}
	}
	life := e.cfg.TicketLifetime
	if life <= 0 {
		life = DefaultTicketLifetime
	}
	t := &ticketState{expires: e.wall(now).Add(life), proposal: *sa.prop, skd: sa.skd(), peer: sa.PeerID, cert: sa.peerCert}
	e.read(t.id[:])
	opaque, err := e.sealTicket(t)
	if err != nil {
		return []Payload{&Notify{NotifyType: TICKET_NACK}}
	}
	e.stats.TicketsIssued++
	data := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(opaque)), uint32(life/time.Second))
	return []Payload{&Notify{NotifyType: TICKET_LT_OPAQUE, Data: append(data, opaque...)}}
}

// handleResumeRequest answers IKE_SESSION_RESUME (RFC 5723 §4.3) and
// creates a half-open SA whose keys come from the ticket.
func (e *Engine) handleResumeRequest(now time.Time, pkt Packet, h Header, rd *Ready) {
	if e.initHandled(pkt, h, rd) {
		return
	}
	nack := func(reason string) {
		e.stats.ResumesRefused++
		resp := Message{SPIi: h.SPIi, Exchange: IKE_SESSION_RESUME, Flags: FlagResponse,
			Payloads: []Payload{&Notify{NotifyType: TICKET_NACK}}}
		rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{resp.Encode()}})
		rd.event(Event{Kind: EventIKEFailed, SPIi: h.SPIi, Local: pkt.Local, Remote: pkt.Remote, Notify: TICKET_NACK, Reason: reason})
	}
	m, err := Decode(pkt.Data)
	if err != nil {
		e.drop(rd, pkt, h.SPIi, 0, err)
		return
	}
	nonce := collectExchange(m.Payloads).nonce
	opaque := findNotify(m.Payloads, TICKET_OPAQUE)
	if nonce == nil || opaque == nil || m.sk != nil || m.skf != nil {
		e.initError(now, pkt, h, rd, errorf(INVALID_SYNTAX, "IKE_SESSION_RESUME needs Ni and N(TICKET_OPAQUE)"))
		return
	}
	if e.cfg.Tickets == nil {
		nack("session resumption is not enabled")
		return
	}
	valid := false
	if e.underPressure() {
		var cookie *Notify
		if n, ok := m.Payloads[0].(*Notify); ok && n.NotifyType == COOKIE {
			cookie = n
		}
		if cookie != nil && len(cookie.Data) > 1 {
			valid = e.cookieValid(now, cookie.Data, nonce.Data, pkt.Remote.Addr(), h.SPIi)
		}
		if !valid {
			e.stats.CookiesSent++
			e.cookies.demand(now)
			c := e.cookieFor(now, e.currentCookie(now), nonce.Data, pkt.Remote.Addr(), h.SPIi)
			resp := Message{SPIi: h.SPIi, Exchange: IKE_SESSION_RESUME, Flags: FlagResponse,
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
	t, err := e.openTicket(now, opaque.Data)
	if err != nil {
		nack(err.Error())
		return
	}
	prop := t.proposal
	sa := &IKESA{
		eng: e, state: stateInitDone, SPIi: h.SPIi, SPIr: e.newSPI(), Local: pkt.Local, Remote: pkt.Remote,
		prop: e.sharedProp(&prop), created: stampOf(now), nextIn: 1,
		hs:     &handshake{initRemote: pkt.Remote, initReq: bytes.Clone(pkt.Data), ni: bytes.Clone(nonce.Data), nr: e.randBytes(32)},
		resume: &resumption{id: t.id, expires: t.expires, peer: t.peer, cert: t.cert},
	}
	if err := sa.deriveResumed(t.skd); err != nil {
		nack(err.Error())
		return
	}
	clear(t.skd)
	natL, natR, natT := detectNAT(m, sa.SPIi, 0, pkt.Local, pkt.Remote)
	sa.natLocal, sa.natRemote = natL || (natT && e.cfg.ForceEncap), natR
	sa.behindNAT = natL && !pkt.Local.Addr().IsUnspecified()
	sa.peerFrag = findNotify(m.Payloads, IKEV2_FRAGMENTATION_SUPPORTED) != nil
	resp := sa.header(IKE_SESSION_RESUME, 0, true)
	resp.Payloads = []Payload{&Nonce{Data: sa.hs.nr}}
	if natT {
		resp.Payloads = append(resp.Payloads, natNotifies(e, sa.SPIi, sa.SPIr, pkt.Local, pkt.Remote, e.cfg.ForceEncap)...)
	}
	if sa.peerFrag {
		resp.Payloads = append(resp.Payloads, &Notify{NotifyType: IKEV2_FRAGMENTATION_SUPPORTED})
	}
	sa.hs.initResp = resp.Encode()
	e.sas[sa.SPIr] = sa
	e.initIndex[initKey{sa.SPIi, sa.hs.initRemote}] = sa
	e.halfOpenAdd(sa)
	sa.reschedule(e)
	rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{sa.hs.initResp}})
}

// checkResumed verifies a resumed initiator in IKE_AUTH: the ticket's
// identity, the AUTH over the resumption exchange, and that the ticket
// was not redeemed before.
func (sa *IKESA) checkResumed(now time.Time, e *Engine, a authPayloads) error {
	if !sa.PeerID.Equal(sa.resume.peer) {
		return errorf(AUTHENTICATION_FAILED, "resumed with identity %v, the ticket is %v's", sa.PeerID, sa.resume.peer)
	}
	if err := sa.verifyResumed(a, sa.authOctets(true, a.id)); err != nil {
		return err
	}
	if !e.cfg.Tickets.Redeem(sa.resume.id, e.wall(now), sa.resume.expires) {
		e.stats.ResumesRefused++
		return errorf(AUTHENTICATION_FAILED, "ticket of %v used before", sa.PeerID)
	}
	e.stats.Resumed++
	sa.peerCert = sa.resume.cert // authenticated by the ticket's issuer
	return nil
}

// ---- initiator ----

// startResume begins IKE_SESSION_RESUME with ini.Resume.
func (e *Engine) startResume(now time.Time, ini Initiation, rd *Ready) (uint64, error) {
	t := ini.Resume
	if len(t.Opaque) == 0 || len(t.SKd) == 0 {
		return 0, errors.New("ike: resumption needs a ticket and its SK_d")
	}
	if !t.Expires.IsZero() && now.After(t.Expires) {
		return 0, fmt.Errorf("%w: expired", ErrTicket)
	}
	prop := t.Proposal
	prop.Protocol = ProtoIKE
	sa := &IKESA{
		eng: e, initiator: true, outbound: true, state: stateResumeSent, SPIi: e.newSPI(), Local: ini.Local, Remote: ini.Remote,
		created: stampOf(now), ini: &ini, prop: e.sharedProp(&prop), hs: &handshake{ni: e.randBytes(32)},
		resume: &resumption{oldSKd: bytes.Clone(t.SKd), peer: t.Responder},
	}
	e.sas[sa.SPIi] = sa
	sa.sendResume(now, e, rd)
	return sa.SPIi, nil
}

func (sa *IKESA) sendResume(now time.Time, e *Engine, rd *Ready) {
	m := sa.header(IKE_SESSION_RESUME, 0, false)
	if sa.hs.cookie != nil {
		m.Payloads = append(m.Payloads, &Notify{NotifyType: COOKIE, Data: sa.hs.cookie})
	}
	m.Payloads = append(m.Payloads, &Nonce{Data: sa.hs.ni}, &Notify{NotifyType: TICKET_OPAQUE, Data: sa.ini.Resume.Opaque})
	m.Payloads = append(m.Payloads, natNotifies(e, sa.SPIi, 0, sa.Local, sa.Remote, e.cfg.ForceEncap)...)
	m.Payloads = append(m.Payloads, &Notify{NotifyType: IKEV2_FRAGMENTATION_SUPPORTED})
	sa.hs.initReq = m.Encode()
	sa.req = &pendingRequest{msgID: 0, exchange: IKE_SESSION_RESUME, packets: [][]byte{sa.hs.initReq}, retransmitAt: now.Add(e.cfg.RetransmitTimeout)}
	sa.nextOut = 1
	sa.reschedule(e)
	sa.send(sa.req.packets, rd)
}

func (sa *IKESA) handleResumeResponse(now time.Time, e *Engine, pkt Packet, rd *Ready) {
	m, err := Decode(pkt.Data)
	if err != nil {
		e.drop(rd, pkt, sa.SPIi, 0, err)
		return
	}
	if c := findNotify(m.Payloads, COOKIE); c != nil {
		if bytes.Equal(c.Data, sa.hs.cookie) {
			e.drop(rd, pkt, sa.SPIi, 0, ErrStaleMessage)
			return
		}
		sa.hs.cookie = bytes.Clone(c.Data)
		sa.req = nil
		sa.sendResume(now, e, rd)
		return
	}
	if findNotify(m.Payloads, TICKET_NACK) != nil {
		sa.failInit(e, TICKET_NACK, "responder refused the ticket", rd)
		return
	}
	if n := firstError(m.Payloads); n != nil {
		sa.failInit(e, n.NotifyType, "responder answered "+n.NotifyType.String(), rd)
		return
	}
	nonce := collectExchange(m.Payloads).nonce
	if nonce == nil || m.SPIr == 0 {
		sa.failInit(e, INVALID_SYNTAX, "IKE_SESSION_RESUME response needs Nr", rd)
		return
	}
	sa.req = nil
	sa.SPIr = m.SPIr
	sa.hs.nr = bytes.Clone(nonce.Data)
	sa.hs.initResp = bytes.Clone(pkt.Data)
	if err := sa.deriveResumed(sa.resume.oldSKd); err != nil {
		sa.failInit(e, NotifyFor(err), err.Error(), rd)
		return
	}
	sa.afterInitResponse(e, m)
	sa.sendAuth(now, e, rd)
}

// takeTicket keeps the ticket of an IKE_AUTH response (N(TICKET_LT_OPAQUE)).
func (sa *IKESA) takeTicket(now time.Time, m *Message) {
	n := findNotify(m.Payloads, TICKET_LT_OPAQUE)
	if n == nil || len(n.Data) <= 4 {
		return
	}
	life := time.Duration(binary.BigEndian.Uint32(n.Data)) * time.Second
	sa.ticket = &Ticket{Opaque: bytes.Clone(n.Data[4:]), Expires: now.Add(life), SKd: bytes.Clone(sa.skd()),
		Proposal: *sa.prop, Responder: sa.PeerID}
}

// Ticket returns the resumption ticket the responder issued for this IKE
// SA (we asked with Initiation.RequestTicket), or nil.
func (sa *IKESA) Ticket() *Ticket { return sa.ticket }

// Resumed reports whether the SA was established by session resumption.
func (sa *IKESA) Resumed() bool { return sa.resume != nil }
