package ike

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

type saState uint8

const (
	stateInitSent    saState = iota + 1 // initiator: IKE_SA_INIT request sent
	stateInitDone                       // responder: IKE_SA_INIT answered, waiting for IKE_AUTH
	stateAuthSent                       // initiator: IKE_AUTH request sent
	stateEstablished                    // authenticated
	stateDeleting                       // we sent a Delete for the IKE SA
	stateRekeyed                        // replaced by a rekeyed IKE SA, waiting for its Delete
	stateDead                           // removed from the table
	stateIntSent                        // initiator: an IKE_INTERMEDIATE request sent (intermediate.go)
	stateResumeSent                     // initiator: IKE_SESSION_RESUME request sent (resumption.go)
)

var stateNames = [...]string{"", "INIT_SENT", "INIT_DONE", "AUTH_SENT", "ESTABLISHED", "DELETING", "REKEYED", "DEAD", "INTERMEDIATE_SENT", "RESUME_SENT"}

func (s saState) String() string { return stateNames[s] }

// IKESA is one IKE SA and its CHILD SAs, in either role.
type IKESA struct {
	initiator bool
	state     saState
	halfOpen  bool
	stored    bool // a version of it is in the state store
	// trafficAsked: its liveness check is due and waits for the caller's
	// count of inbound ESP (CheckTraffic, Engine.Traffic).
	trafficAsked bool
	SPIi, SPIr   uint64
	Local        netip.AddrPort
	Remote       netip.AddrPort
	hs           *handshake // until the SA is established; nil after, and for SAs restored or rekeyed

	prop   *Selected
	prf    *suite.PRF
	cipher *suite.Cipher
	km     []byte        // SK_d | SK_ai | SK_ar | SK_ei | SK_er (skd, skKeys)
	inter  *intermediate // IKE_INTERMEDIATE exchanges (intermediate.go); nil: none
	resume *resumption   // resumed from a ticket (resumption.go); nil: authenticated anew
	ticket *Ticket       // initiator: the ticket the responder issued

	natLocal, natRemote bool // we / the peer are behind a NAT (or encapsulation is forced)
	behindNAT           bool // we really are behind a NAT: send keepalives
	peerFrag            bool // peer supports RFC 7383 fragmentation
	peerCertReq         bool
	peerByRawKey        bool // the peer authenticated with its raw public key (rpk.go)
	// outbound: we started the connection (an Initiation, or a resumption
	// of one), so the peer is not a gateway we serve: no policy, pool or
	// selector claims. Unlike initiator (the role in this IKE SA's own
	// IKE_SA_INIT or rekey), it survives IKE rekeys started by either side.
	outbound      bool
	dirty         bool // a write failed: the next step persists the full state first
	nextKeepalive stamp

	PeerID      Identity
	mobike      bool // both sides announced MOBIKE_SUPPORTED (RFC 4555)
	superseded  bool // replaced by an IKE rekey: nothing more of it is persisted
	deleteAfter bool // Delete asked while an exchange was under way
	vipForeign  bool // restored with vip, an address the pool does not have
	vip6Foreign bool // the same for vip6
	// selectorsHeld: it holds selectors in Config.Selectors.
	selectorsHeld bool
	resync        bool       // restored: a liveness check with a higher message ID may move the window
	cookie2       []byte     // our outstanding return-routability check
	children      []*ChildSA // in child0 while there is at most one (addChild)
	child0        [1]*ChildSA
	vip           netip.Addr
	vip6          netip.Addr // a dual-stack peer's virtual IPv6 address (Pool6)
	lastMapCheck  stamp      // the last liveness check sent for a NAT mapping change (natmap.go)
	// policy is the peer's PeerPolicy (policy.go), looked up once it is
	// authenticated.
	policy *PeerPolicy
	// peerCert: the attributes of the peer's end-entity certificate, set
	// once verifyPeer accepted it (nil: authenticated otherwise); persisted.
	peerCert *CertAttrs

	nextOut    uint32   // message ID of our next request
	nextIn     uint32   // message ID of the peer's next request
	lastResp   [][]byte // our last response, for retransmitted requests
	lastRespAt stamp    // when lastResp is dropped (a peer retransmits for minutes, not hours)
	req        *pendingRequest
	followups  []*followup // the peer's exchanges awaiting IKE_FOLLOWUP_KE (followup.go)

	// Persistence (Ready batches): the SA's state versions.
	version     uint64      // of the last Persist made
	committed   uint64      // the highest version the caller reported committed
	persistStep uint64      // the engine step that made the last Persist
	rekeyedFrom uint64      // our SPI of the IKE SA this one replaced, until stored
	pendingDP   []pendingDP // data-plane changes whose batch's write is not yet committed

	// Message IDs of our requests (msgid.go).
	outReserved uint32 // every request ID we used is below it, as last persisted
	outDurable  uint32 // the same, as committed
	resvVersion uint64 // the version that carries outReserved
	probeLo     uint32
	idUnknown   bool         // restored: the peer expects our next request ID in [probeLo, outDurable]
	msgIDSync   bool         // the peer announced IKEV2_MESSAGE_ID_SYNC_SUPPORTED (RFC 6311)
	unique      UniqueAction // what the Established write does about older SAs of the identity

	eng      *Engine // its engine (the wall-date conversion of Snapshot)
	deadline int64   // engine time (UnixNano) of the SA's timer in the wheel; 0: none
	// lastRecv: the last sign of life from the peer: an authenticated
	// IKE message, or inbound ESP that a liveness check's count found
	// (Engine.Traffic).
	lastRecv stamp
	rekeyIKE stamp // when we rekey the IKE SA; zero: never
	created  stamp
	frags    *reassembly
	estab    stamp // when it was established (EstablishedAt)

	// initiator state
	ini *Initiation
}

// stamp is an instant an SA keeps: nanoseconds since the Unix epoch, 0
// for none. A time.Time takes 24 bytes (8 of them a pointer the
// collector follows) and an IKE SA keeps six instants; a stamp takes 8.
// Like the timer wheel's deadlines it has no monotonic reading, and
// loses nothing by it: the times the engine is given carry none either
// (the node's clock is its start's wall reading plus the monotonic time
// since, so it never steps).
type stamp int64

// stampOf returns t as a stamp (0 for the zero time).
func stampOf(t time.Time) stamp {
	if t.IsZero() {
		return 0
	}
	return stamp(t.UnixNano())
}

// Time returns s as a time.Time (the zero time for 0).
func (s stamp) Time() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(s))
}

func (s stamp) IsZero() bool { return s == 0 }

// Add returns s+d as a time.Time.
func (s stamp) Add(d time.Duration) time.Time { return s.Time().Add(d) }

// handshake is what an IKE SA needs only until it is established: the
// messages, nonces and keys its AUTH payloads sign (the nonces key the
// first CHILD SA too), the half-open accounting, the initiator's key
// exchange, cookie and EAP method, the responder's EAP conversation. The
// SA drops it once established (an established SA keeps only what it
// uses: IKESA is 696 bytes, 1,024 with these and time.Time instants
// inline), so only code that runs before then may use it: SAs restored
// from the store or made by an IKE rekey never have one.
type handshake struct {
	initRemote   netip.AddrPort // the address IKE_SA_INIT came from (retransmit index)
	initReq      []byte         // IKE_SA_INIT request as sent (AUTH signs it)
	initResp     []byte         // IKE_SA_INIT response as sent
	skpi, skpr   []byte
	ni, nr       []byte   // the IKE_SA_INIT nonces (the first CHILD SA's keys use them too)
	halfOpenCost int32    // bytes counted in Engine.halfOpenBytes while halfOpen
	peerHashes   []uint16 // the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427); nil: not sent

	// initiator
	kx           suite.KeyExchange
	cookie       []byte
	keRetries    uint32
	pendingInSPI uint32          // inbound ESP SPI offered in our IKE_AUTH request
	eapc         *eapClientState // our EAP method in IKE_AUTH

	eap *eapState // responder: EAP conversation in IKE_AUTH
}

// skd returns the SA's SK_d.
func (sa *IKESA) skd() []byte {
	n := sa.prf.Size()
	return sa.km[:n:n]
}

// skKeys returns one direction's SK_e and SK_a: ours (out), or those the
// peer protects its messages with. The SK ciphers are keyed from them per
// message: an IKE SA exchanges a message an hour or so, and keeping keyed
// AES-GCM state for a million idle SAs would cost more memory than the SAs
// themselves. The SA keeps its keys in one array (km, as
// suite.IKEKeys.Kept lays them out), whose parts' lengths are its PRF's
// and cipher's: one slice header instead of five.
func (sa *IKESA) skKeys(out bool) (encr, integ []byte) {
	d, ik, ek := sa.prf.Size(), sa.cipher.IntegKeyLen(), sa.cipher.EncrKeyLen()
	k := sa.km[d:]
	ai, ar, k := k[:ik:ik], k[ik:2*ik:2*ik], k[2*ik:]
	ei, er := k[:ek:ek], k[ek:2*ek:2*ek]
	if out == sa.initiator {
		return ei, ai
	}
	return er, ar
}

type pendingRequest struct {
	msgID        uint32
	exchange     ExchangeType
	packets      [][]byte
	tries        int
	retransmitAt time.Time
	deleteIKE    bool
	dpd          bool
	deleteChild  *ChildSA    // a Delete of this CHILD SA
	rrCheck      bool        // a MOBIKE return-routability check
	rekey        *childRekey // a CREATE_CHILD_SA we started
	// A message ID probe: candidates msgID..probeHi, the highest answered.
	probe     bool
	probeHi   uint32
	probeBest uint32
	probeGot  bool
	midSync   bool           // an RFC 6311 IKEV2_MESSAGE_ID_SYNC
	mapCheck  bool           // a liveness check of a NAT mapping change (natmap.go)
	to        netip.AddrPort // sent to this address, not the SA's (a mapping check)
	syncNonce []byte         // its nonce
}

// expects reports whether a response with message ID id answers r.
func (r *pendingRequest) expects(id uint32) bool {
	if r.probe {
		return id >= r.msgID && id <= r.probeHi
	}
	return id == r.msgID
}

// State returns the SA's state name.
func (sa *IKESA) State() string { return sa.state.String() }

// Established reports whether the SA is authenticated and usable.
func (sa *IKESA) Established() bool { return sa.state == stateEstablished }

// EstablishedAt returns when the SA was established, in engine time; an
// IKE rekey's successor keeps its predecessor's.
func (sa *IKESA) EstablishedAt() time.Time { return sa.estab.Time() }

// LastReceived is when the SA last took an authenticated message.
func (sa *IKESA) LastReceived() time.Time { return sa.lastRecv.Time() }

// IsInitiator reports whether we were the original initiator.
func (sa *IKESA) IsInitiator() bool { return sa.initiator }

// Children returns the CHILD SAs.
func (sa *IKESA) Children() []*ChildSA { return sa.children }

// addChild adds c to the SA's CHILD SAs; the first goes in place, so that
// an SA with one CHILD SA (most of a fleet's) costs no object for the list.
func (sa *IKESA) addChild(c *ChildSA) {
	if sa.children == nil {
		sa.children = sa.child0[:0]
	}
	sa.children = append(sa.children, c)
}

// Proposal returns the negotiated IKE proposal, or nil before IKE_SA_INIT completes.
func (sa *IKESA) Proposal() *Selected { return sa.prop }

func (sa *IKESA) localSPI() uint64 {
	if sa.initiator {
		return sa.SPIi
	}
	return sa.SPIr
}

func (sa *IKESA) event(kind EventKind) Event {
	ev := Event{Kind: kind, SPIi: sa.SPIi, SPIr: sa.SPIr, Local: sa.Local, Remote: sa.Remote, PeerID: sa.PeerID, Initiator: sa.initiator}
	if sa.prop != nil {
		ev.Proposal = sa.prop.String()
	}
	return ev
}

// ---- message protection ----

func (sa *IKESA) header(ex ExchangeType, msgID uint32, response bool) Message {
	m := Message{SPIi: sa.SPIi, SPIr: sa.SPIr, Exchange: ex, MessageID: msgID}
	if sa.initiator {
		m.Flags |= FlagInitiator
	}
	if response {
		m.Flags |= FlagResponse
	}
	return m
}

// seal encodes an encrypted message, fragmented if the peer supports it
// and the message is too large for one datagram.
func (sa *IKESA) seal(e *Engine, m *Message) [][]byte {
	iv := func() []byte { return e.randBytes(sa.cipher.IVLen()) }
	out, err := sa.cipher.Key(sa.skKeys(true))
	if err != nil {
		panic("ike: SK key of the negotiated length rejected: " + err.Error())
	}
	b := m.EncodeEncrypted(out, iv())
	if sa.peerFrag && len(b) > e.cfg.FragmentSize {
		if frags := m.EncodeFragments(out, e.cfg.FragmentSize, iv); frags != nil {
			return frags
		}
	}
	return [][]byte{b}
}

func (sa *IKESA) send(pkts [][]byte, rd *Ready) {
	rd.send(Send{Local: sa.Local, Remote: sa.Remote, Messages: pkts})
}

// respond sends and caches an encrypted response to the peer's request.
func (sa *IKESA) respond(e *Engine, ex ExchangeType, msgID uint32, payloads []Payload, rd *Ready) {
	m := sa.header(ex, msgID, true)
	m.Payloads = payloads
	pkts := sa.seal(e, &m)
	sa.lastResp = pkts
	sa.lastRespAt = 0 // set by reschedule: dropped after ResponseCacheTTL
	sa.nextIn = msgID + 1
	sa.send(pkts, rd)
}

// request sends a new encrypted request and arms its retransmission timer.
func (sa *IKESA) request(now time.Time, e *Engine, ex ExchangeType, payloads []Payload, rd *Ready) {
	sa.requestTo(now, e, ex, payloads, netip.AddrPort{}, rd)
}

// requestTo is request sent (and retransmitted) to another address than
// the SA's; the zero address: the SA's.
func (sa *IKESA) requestTo(now time.Time, e *Engine, ex ExchangeType, payloads []Payload, to netip.AddrPort, rd *Ready) {
	sa.reserveIDs(e, rd, sa.nextOut)
	m := sa.header(ex, sa.nextOut, false)
	m.Payloads = payloads
	pkts := sa.seal(e, &m)
	sa.req = &pendingRequest{msgID: sa.nextOut, exchange: ex, packets: pkts, retransmitAt: now.Add(e.cfg.RetransmitTimeout), to: to}
	sa.nextOut++
	sa.reschedule(e)
	sa.sendTo(pkts, to, rd)
}

// sendTo sends to another remote address than the SA's, if valid.
func (sa *IKESA) sendTo(pkts [][]byte, to netip.AddrPort, rd *Ready) {
	if !to.IsValid() {
		to = sa.Remote
	}
	rd.send(Send{Local: sa.Local, Remote: to, Messages: pkts})
}

// ---- dispatch ----

func (sa *IKESA) handle(now time.Time, e *Engine, pkt Packet, h Header, rd *Ready) {
	if h.Flags&FlagResponse != 0 {
		if sa.req == nil || !sa.req.expects(h.MessageID) {
			e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
			return
		}
	} else {
		switch {
		case h.MessageID == sa.nextIn:
		case h.MessageID+1 == sa.nextIn && sa.lastResp != nil:
			if h.NextPayload == PayloadSKF && !isFirstFragment(pkt.Data) {
				return // answer a fragmented retransmission once, on its first fragment
			}
			to := Send{Local: sa.Local, Remote: sa.Remote, Messages: sa.lastResp}
			if pkt.Remote != sa.Remote || pkt.Local != sa.Local {
				// From elsewhere: the peer's NAT mapping may have changed
				// after our answer left for the old one, and the peer
				// retransmits from the new. The answer goes where the copy
				// came from (RFC 7296 §2.11), once the copy proves to be
				// the peer's: a request altered, or made up, and sent from
				// a forged address gets nothing sent anywhere.
				if err := sa.verifyCopy(pkt); err != nil {
					e.drop(rd, pkt, h.SPIi, h.SPIr, err)
					return
				}
				if !e.answerElsewhere(now) {
					// A genuine copy replayed from forged addresses
					// faster than rebinding gateways need answers.
					e.drop(rd, pkt, h.SPIi, h.SPIr, ErrRetransmission)
					return
				}
				to.Local, to.Remote = pkt.Local, pkt.Remote
			}
			sa.flushDirty(e, rd)
			if !sa.canSend(e) {
				// Its answer goes out once the state it reflects is
				// committed; a retransmission cannot overtake it.
				e.stats.HeldRetransmits++
				return
			}
			e.stats.DuplicateRequests++
			rd.send(to)
			return
		case h.MessageID == 0 && h.Exchange == INFORMATIONAL && sa.msgIDSync && sa.state == stateEstablished:
			// Perhaps an RFC 6311 synchronisation: seen once decrypted.
		case sa.resync && h.MessageID > sa.nextIn && h.Exchange == INFORMATIONAL:
			// Restored: perhaps a liveness check of a peer that moved on
			// with exchanges never persisted; seen once decrypted.
		default:
			e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
			return
		}
	}
	if h.Exchange == IKE_SESSION_RESUME {
		if sa.initiator && sa.state == stateResumeSent && h.Flags&FlagResponse != 0 {
			sa.handleResumeResponse(now, e, pkt, rd)
			return
		}
		e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
		return
	}
	if h.Exchange == IKE_SA_INIT {
		if sa.initiator && sa.state == stateInitSent {
			sa.handleInitResponse(now, e, pkt, rd)
			return
		}
		e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
		return
	}
	if sa.cipher == nil {
		e.drop(rd, pkt, h.SPIi, h.SPIr, ErrUnknownSA)
		return
	}
	in, err := sa.cipher.Key(sa.skKeys(false))
	if err != nil {
		e.drop(rd, pkt, h.SPIi, h.SPIr, err)
		return
	}
	m, err := Decode(pkt.Data)
	if err != nil {
		e.drop(rd, pkt, h.SPIi, h.SPIr, err)
		return
	}
	switch {
	case m.sk != nil:
		if err := m.Decrypt(in); err != nil {
			sa.protocolError(now, e, pkt, m, err, rd)
			return
		}
	case m.skf != nil:
		done, err := sa.reassemble(now, e, m, in)
		if err != nil {
			sa.protocolError(now, e, pkt, m, err, rd)
			return
		}
		if !done {
			return
		}
	default:
		e.drop(rd, pkt, h.SPIi, h.SPIr, &ParseError{Reason: "unprotected " + h.Exchange.String()})
		return
	}
	if !m.IsResponse() && m.MessageID == 0 && sa.msgIDSync && sa.state == stateEstablished && isMIDSyncRequest(m) {
		sa.lastRecv = stampOf(now)
		sa.flushDirty(e, rd)
		sa.answerMIDSync(now, e, m, rd)
		sa.reschedule(e)
		return
	}
	if !m.IsResponse() && m.MessageID != sa.nextIn {
		switch {
		case sa.resync && m.MessageID > sa.nextIn && m.Exchange == INFORMATIONAL && len(m.Payloads) == 0:
			// A liveness check after a restore: harmless even if replayed.
		default:
			e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
			return
		}
	} else if !m.IsResponse() {
		sa.resync = false // in step with the peer's requests again
	}
	// An authenticated message: NAT-T may have moved the peer (port float
	// to 4500, a NAT rebinding, MOBIKE), and the peer is alive.
	sa.lastRecv = stampOf(now)
	sa.flushDirty(e, rd)
	if pkt.Local != sa.Local || pkt.Remote != sa.Remote {
		// Our own address may change (the SA came to another node of the
		// cluster, a multi-homed node); the peer's only by the rules of
		// mayMove.
		remote := pkt.Remote
		if remote != sa.Remote && !sa.mayMove(m) {
			e.stats.MovesRefused++
			remote = sa.Remote
		}
		if pkt.Local != sa.Local || remote != sa.Remote {
			sa.moved(now, e, pkt.Local, remote, m, rd)
		}
	}
	if m.IsResponse() {
		switch {
		case sa.req.probe:
			sa.probeAnswered(now, e, m.MessageID, rd)
		case sa.req.midSync:
			if !sa.handleMIDSyncResponse(now, e, m, rd) {
				e.drop(rd, pkt, h.SPIi, h.SPIr, ErrStaleMessage)
			}
		default:
			sa.handleResponse(now, e, m, rd)
		}
		return
	}
	sa.handleRequest(now, e, m, rd)
	if sa.state != stateDead {
		sa.reschedule(e)
	}
}

// verifyCopy checks the integrity of a copy of the peer's last request
// (or of its first fragment) without acting on it.
func (sa *IKESA) verifyCopy(pkt Packet) error {
	if sa.cipher == nil {
		return ErrUnknownSA
	}
	in, err := sa.cipher.Key(sa.skKeys(false))
	if err != nil {
		return err
	}
	m, err := Decode(pkt.Data)
	if err != nil {
		return err
	}
	switch {
	case m.sk != nil:
		return m.Decrypt(in)
	case m.skf != nil:
		_, err := m.DecryptFragment(in)
		return err
	}
	return &ParseError{Reason: "unprotected " + m.Exchange.String()}
}

// protocolError answers an authenticated but malformed request with the
// notify the error names; failed integrity is dropped silently.
func (sa *IKESA) protocolError(now time.Time, e *Engine, pkt Packet, m *Message, err error, rd *Ready) {
	n := NotifyFor(err)
	if err == ErrIntegrity || n == 0 || m.IsResponse() {
		e.drop(rd, pkt, m.SPIi, m.SPIr, err)
		return
	}
	e.stats.Dropped++
	sa.respond(e, m.Exchange, m.MessageID, []Payload{&Notify{NotifyType: n, Data: NotifyDataFor(err)}}, rd)
	if sa.state == stateInitDone {
		ev := sa.event(EventIKEFailed)
		ev.Notify, ev.Reason = n, err.Error()
		e.stats.Failed[n]++
		e.remove(sa)
		rd.event(ev)
		return
	}
}

func (sa *IKESA) handleRequest(now time.Time, e *Engine, m *Message, rd *Ready) {
	switch m.Exchange {
	case IKE_AUTH:
		if sa.initiator || sa.state != stateInitDone {
			break
		}
		sa.handleAuthRequest(now, e, m, rd)
		return
	case IKE_INTERMEDIATE:
		if sa.initiator || sa.state != stateInitDone || sa.inter == nil {
			break
		}
		sa.handleIntermediateRequest(now, e, m, rd)
		return
	case INFORMATIONAL:
		if sa.state != stateEstablished && sa.state != stateDeleting && sa.state != stateRekeyed {
			break
		}
		sa.handleInformational(now, e, m, rd)
		return
	case CREATE_CHILD_SA, IKE_FOLLOWUP_KE:
		if sa.state != stateEstablished {
			if sa.state == stateDeleting || sa.state == stateRekeyed {
				sa.respond(e, m.Exchange, m.MessageID, []Payload{&Notify{NotifyType: TEMPORARY_FAILURE}}, rd)
				return
			}
			break
		}
		if m.Exchange == IKE_FOLLOWUP_KE {
			sa.handleFollowupRequest(now, e, m, rd)
		} else {
			sa.handleCreateChild(now, e, m, rd)
		}
		return
	}
	e.drop(rd, Packet{Local: sa.Local, Remote: sa.Remote}, m.SPIi, m.SPIr, errorf(INVALID_SYNTAX, "%v request in state %v", m.Exchange, sa.state))
}

func (sa *IKESA) handleResponse(now time.Time, e *Engine, m *Message, rd *Ready) {
	req := sa.req
	sa.req = nil
	switch {
	case req.exchange == IKE_AUTH && sa.state == stateAuthSent:
		sa.handleAuthResponse(now, e, m, rd)
	case req.exchange == IKE_INTERMEDIATE && sa.state == stateIntSent:
		sa.handleIntermediateResponse(now, e, m, rd)
	case req.exchange == INFORMATIONAL && req.deleteIKE:
		sa.terminate(e, "deleted by us", rd)
		return
	case req.exchange == INFORMATIONAL && req.deleteChild != nil:
		sa.childDeleted(e, req.deleteChild, "deleted by us", rd)
	case req.exchange == CREATE_CHILD_SA && req.rekey != nil:
		sa.handleCreateChildResponse(now, e, req.rekey, m, rd)
	case req.exchange == IKE_FOLLOWUP_KE && req.rekey != nil:
		sa.handleFollowupResponse(now, e, req.rekey, m, rd)
	case req.rrCheck:
		if !sa.checkCookie2(m) {
			sa.terminate(e, "return routability check failed", rd)
			return
		}
	}
	if sa.state == stateEstablished && sa.deleteAfter && sa.req == nil {
		sa.deleteAfter = false
		e.deleteSA(now, sa.localSPI(), rd)
		return
	}
	if sa.state != stateDead {
		sa.reschedule(e)
	}
}

func (sa *IKESA) onTimer(now time.Time, e *Engine, rd *Ready) {
	sa.flushDirty(e, rd)
	if r := sa.req; r != nil {
		if now.Before(r.retransmitAt) {
			sa.reschedule(e)
			return
		}
		if !sa.canSend(e) {
			// The request leaves once the state of the batch it went out
			// with is committed: try again later (not counted as a try).
			r.retransmitAt = now.Add(e.cfg.RetransmitTimeout)
			sa.reschedule(e)
			return
		}
		if r.probe && r.probeGot {
			sa.probeDone(now, e, rd) // the rest of the answers were lost
			if sa.state != stateDead {
				sa.reschedule(e)
			}
			return
		}
		if r.midSync && r.tries >= 2 {
			// No answer to RFC 6311: probe instead.
			sa.req = nil
			sa.startProbe(now, e, rd)
			return
		}
		if r.mapCheck && r.tries >= 2 {
			// The new mapping does not answer: stay where we are (the
			// SA's own liveness checks decide whether the peer is dead).
			sa.req = nil
			sa.reschedule(e)
			return
		}
		if r.tries >= e.cfg.RetransmitTries {
			reason := "peer did not answer " + r.exchange.String()
			if r.dpd {
				reason = "dead peer: no answer to liveness checks"
				e.stats.DPDDead++
			}
			if sa.state != stateEstablished && sa.state != stateDeleting && sa.state != stateRekeyed {
				ev := sa.event(EventIKEFailed)
				ev.Reason = reason
				e.remove(sa)
				rd.event(ev)
				return
			}
			sa.terminate(e, reason, rd)
			return
		}
		r.tries++
		e.stats.Retransmits++
		r.retransmitAt = now.Add(e.cfg.RetransmitTimeout << r.tries)
		sa.reschedule(e)
		sa.sendTo(r.packets, r.to, rd)
		return
	}
	if sa.state == stateInitDone {
		if now.Before(sa.created.Add(e.cfg.HalfOpenTimeout)) {
			sa.reschedule(e)
			return
		}
		ev := sa.event(EventIKEFailed)
		ev.Reason = "half-open SA timed out"
		e.remove(sa)
		rd.event(ev)
		return
	}
	if sa.state == stateEstablished {
		sa.lifecycleTimers(now, e, rd)
	}
	if sa.state != stateDead {
		sa.reschedule(e)
	}
}

// ---- shared key schedule ----

func (sa *IKESA) deriveKeys(e *Engine, shared []byte) error {
	prf, err := suite.NewPRF(sa.prop.PRF)
	if err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "PRF", Err: err}
	}
	c, err := suite.NewCipher(sa.prop.Encr.ID, int(sa.prop.Encr.KeyLen), sa.prop.Integ)
	if err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "cipher", Err: err}
	}
	skeyseed := suite.SKEYSEED(prf, sa.hs.ni, sa.hs.nr, shared)
	k := suite.DeriveIKEKeys(prf, skeyseed, sa.hs.ni, sa.hs.nr, sa.SPIi, sa.SPIr, c)
	sa.prf, sa.cipher = prf, c
	sa.km, sa.hs.skpi, sa.hs.skpr = k.Kept, k.SKpi, k.SKpr
	return nil
}

// authOctets returns the octets the AUTH payload of one side signs
// (RFC 7296 §2.15): that side's IKE_SA_INIT message, the other side's
// nonce, and prf(SK_px, IDx').
func (sa *IKESA) authOctets(ofInitiator bool, id *ID) []byte {
	msg, nonce, key := sa.hs.initReq, sa.hs.nr, sa.hs.skpi
	if !ofInitiator {
		msg, nonce, key = sa.hs.initResp, sa.hs.ni, sa.hs.skpr
	}
	return sa.signedOctets(msg, nonce, key, id)
}

// signedOctets: message 1 or 2, the other side's nonce, prf(SK_p, ID'),
// and IntAuth after IKE_INTERMEDIATE exchanges (RFC 9242 §3.3.2).
func (sa *IKESA) signedOctets(msg, nonce, key []byte, id *ID) []byte {
	mac := sa.prf.Sum(key, id.Body())
	ia := sa.intAuth()
	o := make([]byte, 0, len(msg)+len(nonce)+len(mac)+len(ia))
	return append(append(append(append(o, msg...), nonce...), mac...), ia...)
}

var keyPad = []byte("Key Pad for IKEv2")

func (sa *IKESA) pskAuth(psk, octets []byte) []byte {
	return sa.prf.Sum(sa.prf.Sum(psk, keyPad), octets)
}

// childKeys derives a CHILD SA's keys from SK_d (RFC 7296 §2.17). The
// initiator-to-responder keys come first, "initiator" meaning whoever
// started the exchange that creates the CHILD SA. addKE are the secrets of
// additional key exchanges in IKE_FOLLOWUP_KE (RFC 9370 §2.2.4).
func (sa *IKESA) childKeys(c *ChildSA, shared []byte, ni, nr []byte, exchangeInitiator bool, addKE ...[]byte) error {
	cipher, err := suite.NewCipher(c.Proposal.Encr.ID, int(c.Proposal.Encr.KeyLen), c.Proposal.Integ)
	if err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "ESP cipher", Err: err}
	}
	el, il := cipher.EncrKeyLen(), cipher.IntegKeyLen()
	// The initiator's direction first: ours if we started the exchange.
	km := suite.ChildKeys(sa.prf, sa.skd(), shared, ni, nr, 2*(el+il), addKE...)
	if err := c.setKeys(km, el, il, !exchangeInitiator); err != nil {
		return &Error{Notify: NO_PROPOSAL_CHOSEN, Reason: "ESP keys", Err: err}
	}
	return nil
}

// ---- NAT detection (RFC 7296 §2.23) ----

func natHash(spii, spir uint64, a netip.AddrPort) []byte {
	h := sha1.New()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], spii)
	binary.BigEndian.PutUint64(b[8:], spir)
	h.Write(b[:])
	h.Write(a.Addr().Unmap().AsSlice())
	binary.BigEndian.PutUint16(b[:], a.Port())
	h.Write(b[:2])
	return h.Sum(nil)
}

// natNotifies returns our NAT_DETECTION payloads. With force, the source
// hash is of random data, so the peer believes we are behind a NAT and
// encapsulates ESP in UDP.
func natNotifies(e *Engine, spii, spir uint64, local, remote netip.AddrPort, force bool) []Payload {
	src := natHash(spii, spir, local)
	if force {
		// Claim a NAT: hash an address that is not ours. The same one for
		// the SA's every message, so that an IKE_SA_INIT retried with a
		// cookie is the first one plus the cookie (RFC 7296 §2.6): the
		// responder may have answered either, and AUTH signs the one the
		// initiator sent last.
		src = natHash(spii, spir, e.forcedNATAddr())
	}
	return []Payload{
		&Notify{NotifyType: NAT_DETECTION_SOURCE_IP, Data: src},
		&Notify{NotifyType: NAT_DETECTION_DESTINATION_IP, Data: natHash(spii, spir, remote)},
	}
}

// detectNAT evaluates the peer's NAT_DETECTION notifies. ok is false when
// the peer sent none (it does not do NAT-T).
func detectNAT(m *Message, spii, spir uint64, local, remote netip.AddrPort) (natLocal, natRemote, ok bool) {
	srcMatch, dstMatch, sawSrc, sawDst := false, false, false, false
	want := natHash(spii, spir, remote)
	wantDst := natHash(spii, spir, local)
	for _, p := range m.Payloads {
		n, isN := p.(*Notify)
		if !isN {
			continue
		}
		switch n.NotifyType {
		case NAT_DETECTION_SOURCE_IP:
			sawSrc = true
			srcMatch = srcMatch || hmac.Equal(n.Data, want)
		case NAT_DETECTION_DESTINATION_IP:
			sawDst = true
			dstMatch = dstMatch || hmac.Equal(n.Data, wantDst)
		}
	}
	if !sawSrc || !sawDst {
		return false, false, false
	}
	return !dstMatch, !srcMatch, true
}

// ---- payload helpers ----

func findNotify(ps []Payload, t NotifyType) *Notify {
	for _, p := range ps {
		if n, ok := p.(*Notify); ok && n.NotifyType == t {
			return n
		}
	}
	return nil
}

// firstError returns the first error notify in ps.
func firstError(ps []Payload) *Notify {
	for _, p := range ps {
		if n, ok := p.(*Notify); ok && n.NotifyType.IsError() {
			return n
		}
	}
	return nil
}

// exchangePayloads are the payloads IKE_SA_INIT and CREATE_CHILD_SA carry.
type exchangePayloads struct {
	sa       *SA
	ke       *KE
	nonce    *Nonce
	tsi, tsr *TS
}

func collectExchange(ps []Payload) exchangePayloads {
	var x exchangePayloads
	for _, p := range ps {
		switch p := p.(type) {
		case *SA:
			x.sa = p
		case *KE:
			x.ke = p
		case *Nonce:
			x.nonce = p
		case *TS:
			if p.Responder {
				x.tsr = p
			} else {
				x.tsi = p
			}
		}
	}
	return x
}

// authPayloads are IKE_AUTH's payloads: its own and the CHILD SA's.
type authPayloads struct {
	exchangePayloads // sa, tsi, tsr of the CHILD SA
	id               *ID
	auth             *Auth
	certs            [][]byte
	rawKey           []byte // CERT(15): DER SubjectPublicKeyInfo (RFC 7670)
	cp               *CP
	idr              *ID
	certRq           bool
}

func collectAuth(ps []Payload, forInitiator bool) authPayloads {
	a := authPayloads{exchangePayloads: collectExchange(ps)}
	for _, p := range ps {
		switch p := p.(type) {
		case *ID:
			if p.Responder == !forInitiator {
				a.id = p
			} else {
				a.idr = p
			}
		case *Auth:
			a.auth = p
		case *Cert:
			if p.Encoding == CertX509Signature && len(a.certs) < maxCertPayloads {
				a.certs = append(a.certs, p.Data)
			}
			if p.Encoding == CertRawPublicKey && a.rawKey == nil {
				a.rawKey = p.Data
			}
		case *CertReq:
			a.certRq = true
		case *CP:
			a.cp = p
		}
	}
	return a
}

// verifyPeer checks the peer's AUTH payload over its signed octets.
func (sa *IKESA) verifyPeer(now time.Time, e *Engine, a authPayloads, octets []byte, psk []byte, verifier *sig.Verifier) error {
	if a.auth == nil {
		return errorf(AUTHENTICATION_FAILED, "no AUTH payload (EAP is not enabled)")
	}
	if a.auth.Method == sig.MethodPSK {
		if psk == nil {
			return errorf(AUTHENTICATION_FAILED, "no pre-shared key for %v", sa.PeerID)
		}
		if subtle.ConstantTimeCompare(sa.pskAuth(psk, octets), a.auth.Data) != 1 {
			return errorf(AUTHENTICATION_FAILED, "pre-shared key AUTH of %v does not verify", sa.PeerID)
		}
		return nil
	}
	if handled, err := sa.verifyRawKey(e, a, octets); handled {
		return err
	}
	if verifier == nil {
		return errorf(AUTHENTICATION_FAILED, "certificate authentication is not configured")
	}
	if len(a.certs) == 0 {
		return errorf(AUTHENTICATION_FAILED, "%v sent no certificate", sa.PeerID)
	}
	// Path, identity and the AUTH signature first, revocation last: a
	// replayed public device certificate without its key costs us no CRL
	// work.
	path, err := verifier.VerifyPath(a.certs, e.wall(now)) // validity and CRL freshness: wall dates
	if err != nil {
		return &Error{Notify: AUTHENTICATION_FAILED, Reason: "certificate of " + sa.PeerID.String(), Err: err}
	}
	if err := sig.MatchIdentity(path.Leaf, sa.PeerID.Type, sa.PeerID.Data); err != nil {
		return &Error{Notify: AUTHENTICATION_FAILED, Reason: "identity", Err: err}
	}
	if err := sig.Verify(path.Leaf.PublicKey, a.auth.Method, a.auth.Data, octets, e.cfg.AllowSHA1Sigs); err != nil {
		return &Error{Notify: AUTHENTICATION_FAILED, Reason: "signature of " + sa.PeerID.String(), Err: err}
	}
	if err := path.CheckRevocation(); err != nil {
		return &Error{Notify: AUTHENTICATION_FAILED, Reason: "certificate of " + sa.PeerID.String(), Err: err}
	}
	// Verified: what policies may match.
	sa.peerCert = CertAttrsOf(path.Leaf)
	return nil
}

// ourAuth builds our AUTH (and CERT) payloads. usePSK selects PSK
// authentication with psk; otherwise we sign with our key.
func (sa *IKESA) ourAuth(e *Engine, creds *Credentials, octets []byte, usePSK bool, psk []byte, sendCerts bool) ([]Payload, error) {
	if usePSK {
		if psk == nil {
			return nil, errorf(AUTHENTICATION_FAILED, "no pre-shared key to authenticate to %v", sa.PeerID)
		}
		return []Payload{&Auth{Method: sig.MethodPSK, Data: sa.pskAuth(psk, octets)}}, nil
	}
	if creds.Signer == nil {
		return nil, errorf(AUTHENTICATION_FAILED, "no private key configured")
	}
	method, data, err := sig.Sign(creds.Signer, octets, sa.hs.peerHashes, e.cfg.Rand)
	if err != nil {
		return nil, &Error{Notify: AUTHENTICATION_FAILED, Reason: "signing", Err: err}
	}
	var ps []Payload
	if c, err := sa.rawKeyCert(creds); err != nil {
		return nil, err
	} else if c != nil {
		ps = append(ps, c)
	}
	if sendCerts {
		for _, c := range creds.Chain {
			ps = append(ps, &Cert{Encoding: CertX509Signature, Data: c})
		}
	}
	return append(ps, &Auth{Method: method, Data: data}), nil
}

func parseHashes(n *Notify) []uint16 {
	if n == nil {
		return nil
	}
	var hs []uint16
	for i := 0; i+1 < len(n.Data); i += 2 {
		hs = append(hs, binary.BigEndian.Uint16(n.Data[i:]))
	}
	return hs
}

func hashesNotify() *Notify {
	var d []byte
	for _, h := range sig.SupportedHashes() {
		d = binary.BigEndian.AppendUint16(d, h)
	}
	return &Notify{NotifyType: SIGNATURE_HASH_ALGORITHMS, Data: d}
}

func isFirstFragment(b []byte) bool {
	// SKF body starts after the 28-byte header and 4-byte generic header.
	return len(b) >= headerLen+genericHeaderLen+2 && binary.BigEndian.Uint16(b[headerLen+genericHeaderLen:]) == 1
}
