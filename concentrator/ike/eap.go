package ike

// EAP in IKE_AUTH (RFC 7296 §2.16).
//
// As responder the engine is a pass-through, as strongSwan's eap-radius
// is: it relays EAP messages between the peer and a backend (the node's
// RADIUS client) and never runs an EAP method itself. The backend is
// asynchronous and the engine does no I/O: a step appends an EAPRequest to
// its Ready batch, and the node hands the backend's answer back with
// Engine.EAPAnswer. While a request is with the backend, retransmissions
// of the IKE_AUTH it came in are dropped (the answer goes out once).
//
// The exchange, responder side:
//
//	IKE_AUTH 1: IDi, [no AUTH], SA, TSi, TSr, [CP]  → backend(start)
//	         ←  IDr, [CERT], AUTH, EAP(request)
//	IKE_AUTH k: EAP(response)                      → backend
//	         ←  EAP(request) … or EAP(success)
//	IKE_AUTH n: AUTH(MSK)                          ← AUTH(MSK), SA, TSi, TSr, [CP]
//
// AUTH in the last exchange is a shared-key MIC keyed by the MSK, or by
// SK_pi / SK_pr when the method generates no key.

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// EAP codes (RFC 3748 §4).
const (
	EAPCodeRequest  = 1
	EAPCodeResponse = 2
	EAPCodeSuccess  = 3
	EAPCodeFailure  = 4
)

// DefaultEAPMaxRounds bounds the IKE_AUTH exchanges of one EAP
// conversation (EAP-TLS with a long chain needs a few dozen).
const DefaultEAPMaxRounds = 50

// EAPConfig lets initiators that omit AUTH in IKE_AUTH authenticate with
// EAP through the node's backend.
type EAPConfig struct {
	// Allowed reports whether identity id may authenticate with EAP;
	// nil allows every identity.
	Allowed func(id Identity) bool
	// MaxRounds bounds the IKE_AUTH exchanges; 0 = DefaultEAPMaxRounds.
	MaxRounds int
}

// EAPRequest asks the backend to process one EAP message from the peer of
// the IKE SA whose SPI (ours, as responder) is SPI. The backend answers
// with Engine.EAPAnswer(SPI, Round, …).
type EAPRequest struct {
	SPI    uint64
	Round  uint32 // message ID of the IKE_AUTH request
	Peer   Identity
	Remote netip.AddrPort
	// Message is the peer's EAP response; nil at the start of the
	// conversation, when the backend answers for the peer's identity
	// (RADIUS: an EAP-Response/Identity with Peer's data).
	Message []byte
}

// EAPOutcome is what the backend made of an EAPRequest.
type EAPOutcome uint8

const (
	EAPContinue    EAPOutcome = iota + 1 // Message is the next EAP request for the peer
	EAPAccept                            // authenticated; MSK is the method's key, if it made one
	EAPReject                            // refused; Message is the EAP-Failure, if any
	EAPUnavailable                       // the backend did not answer
)

func (o EAPOutcome) String() string {
	switch o {
	case EAPContinue:
		return "continue"
	case EAPAccept:
		return "accept"
	case EAPReject:
		return "reject"
	case EAPUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("EAPOutcome(%d)", o)
}

// EAPAnswer is the backend's answer to one EAPRequest.
type EAPAnswer struct {
	Outcome EAPOutcome
	Message []byte // EAP packet for the peer (request, success or failure)
	MSK     []byte // EAPAccept: the Master Session Key (64 bytes), or nil
	Reason  string // why, for a rejection or an unavailable backend
}

// eapState is a responder's EAP conversation, from the first IKE_AUTH
// without AUTH until the IKE SA is established.
type eapState struct {
	first     authPayloads // the first IKE_AUTH: IDi and the CHILD SA it asks for
	notifies  []Payload    // MOBIKE_SUPPORTED and the like from the first IKE_AUTH
	ours      []Payload    // IDr, CERT, AUTH: sent with the first EAP request
	pending   bool         // a request is with the backend
	round     uint32       // its IKE_AUTH message ID
	rounds    int
	lastID    byte // identifier of the last EAP request relayed to the peer
	succeeded bool // EAP-Success sent; the AUTH exchange follows
	msk       []byte
}

// startEAP begins EAP for an initiator whose first IKE_AUTH carries no
// AUTH: we authenticate ourselves and ask the backend to start.
func (sa *IKESA) startEAP(now time.Time, e *Engine, m *Message, a authPayloads, psk []byte, fail func(error), rd *Ready) {
	if e.cfg.EAP.Allowed != nil && !e.cfg.EAP.Allowed(sa.PeerID) {
		fail(errorf(AUTHENTICATION_FAILED, "%v may not authenticate with EAP", sa.PeerID))
		return
	}
	// A peer using EAP authenticates us by certificate (or, if that is
	// all we have, by the PSK configured for its identity).
	idr := &ID{Responder: true, IDType: e.cfg.Local.ID.Type, Data: e.cfg.Local.ID.Data}
	sendCerts := e.cfg.Local.SendCert == SendCertAlways || sa.peerCertReq
	ours, err := sa.ourAuth(e, &e.cfg.Local, sa.authOctets(false, idr), e.cfg.Local.Signer == nil, psk, sendCerts)
	if err != nil {
		fail(err)
		return
	}
	st := &eapState{first: a, ours: append([]Payload{idr}, ours...)}
	for _, n := range []NotifyType{MOBIKE_SUPPORTED, IKEV2_MESSAGE_ID_SYNC_SUPPORTED} {
		if findNotify(m.Payloads, n) != nil {
			st.notifies = append(st.notifies, &Notify{NotifyType: n})
		}
	}
	sa.hs.eap = st
	sa.toBackend(e, m.MessageID, nil, rd)
}

// toBackend hands one EAP message (nil: start) of IKE_AUTH msgID to the
// backend.
func (sa *IKESA) toBackend(e *Engine, msgID uint32, msg []byte, rd *Ready) {
	sa.hs.eap.pending, sa.hs.eap.round = true, msgID
	sa.hs.eap.rounds++
	e.stats.EAPRounds++
	rd.EAP = append(rd.EAP, EAPRequest{SPI: sa.SPIr, Round: msgID, Peer: sa.PeerID, Remote: sa.Remote, Message: msg})
}

// eapRequest handles an IKE_AUTH request during an EAP conversation.
func (sa *IKESA) eapRequest(now time.Time, e *Engine, m *Message, a authPayloads, fail func(error), rd *Ready) {
	st := sa.hs.eap
	if st.pending {
		// The request with the backend, retransmitted: answered once the
		// backend answers.
		e.stats.DuplicateRequests++
		return
	}
	if st.succeeded {
		sa.finishEAP(now, e, m, a, fail, rd)
		return
	}
	max := e.cfg.EAP.MaxRounds
	if max == 0 {
		max = DefaultEAPMaxRounds
	}
	if st.rounds >= max {
		fail(errorf(AUTHENTICATION_FAILED, "EAP did not finish in %d exchanges", max))
		return
	}
	var msg []byte
	for _, p := range m.Payloads {
		if p, ok := p.(*EAP); ok {
			msg = p.Message
		}
	}
	if len(msg) < 4 || msg[0] != EAPCodeResponse {
		fail(errorf(AUTHENTICATION_FAILED, "IKE_AUTH during EAP without an EAP response"))
		return
	}
	sa.toBackend(e, m.MessageID, bytes.Clone(msg), rd)
}

// finishEAP checks the initiator's AUTH after EAP-Success and
// establishes the IKE SA with the CHILD SA of the first IKE_AUTH.
func (sa *IKESA) finishEAP(now time.Time, e *Engine, m *Message, a authPayloads, fail func(error), rd *Ready) {
	st := sa.hs.eap
	if a.auth == nil || a.auth.Method != sig.MethodPSK {
		fail(errorf(AUTHENTICATION_FAILED, "no shared-key AUTH after EAP"))
		return
	}
	keyI, keyR := st.msk, st.msk
	if keyI == nil {
		keyI, keyR = sa.hs.skpi, sa.hs.skpr
	}
	fa := st.first
	fa.auth = a.auth
	if err := sa.verifyInitiator(now, e, fa, fa.id, keyI); err != nil {
		fail(err)
		return
	}
	idr := &ID{Responder: true, IDType: e.cfg.Local.ID.Type, Data: e.cfg.Local.ID.Data}
	auth := &Auth{Method: sig.MethodPSK, Data: sa.pskAuth(keyR, sa.authOctets(false, idr))}
	sa.establishResponder(now, e, m.MessageID, st.notifies, st.first, []Payload{auth}, rd)
}

// EAPAnswer delivers the backend's answer to the EAPRequest (spi, round).
// It reports false when that request is no longer awaited (the SA timed
// out or is gone): the answer is then dropped.
func (e *Engine) EAPAnswer(now time.Time, spi uint64, round uint32, ans EAPAnswer, rd *Ready) bool {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.state != stateInitDone || sa.hs.eap == nil || !sa.hs.eap.pending || sa.hs.eap.round != round {
		return false
	}
	st := sa.hs.eap
	st.pending = false
	defer sa.reschedule(e)
	var payloads []Payload
	if st.ours != nil {
		payloads, st.ours = st.ours, nil // IDr and AUTH go with the first EAP message
	}
	switch ans.Outcome {
	case EAPContinue:
		if err := checkEAP(ans.Message, EAPCodeRequest); err != nil {
			sa.failAuth(e, round, errorf(AUTHENTICATION_FAILED, "EAP backend: %v", err), nil, rd)
			return true
		}
		st.lastID = ans.Message[1]
		sa.respond(e, IKE_AUTH, round, append(payloads, &EAP{Message: bytes.Clone(ans.Message)}), rd)
	case EAPAccept:
		msg := ans.Message
		if checkEAP(msg, EAPCodeSuccess) != nil {
			msg = []byte{EAPCodeSuccess, st.lastID, 0, 4}
		}
		if len(ans.MSK) > 0 {
			st.msk = bytes.Clone(ans.MSK)
		}
		st.succeeded = true
		sa.respond(e, IKE_AUTH, round, append(payloads, &EAP{Message: bytes.Clone(msg)}), rd)
	default:
		msg := ans.Message
		if checkEAP(msg, EAPCodeFailure) != nil {
			msg = []byte{EAPCodeFailure, st.lastID, 0, 4}
		}
		reason := cmp.Or(ans.Reason, "EAP "+ans.Outcome.String())
		sa.failAuth(e, round, errorf(AUTHENTICATION_FAILED, "%s", reason), []Payload{&EAP{Message: bytes.Clone(msg)}}, rd)
	}
	return true
}

// failAuth answers IKE_AUTH msgID with err's notify (after extra) and
// forgets the half-open SA.
func (sa *IKESA) failAuth(e *Engine, msgID uint32, err error, extra []Payload, rd *Ready) {
	n := NotifyFor(err)
	if n == 0 {
		n = AUTHENTICATION_FAILED
	}
	sa.respond(e, IKE_AUTH, msgID, append(extra, &Notify{NotifyType: n}), rd)
	ev := sa.event(EventIKEFailed)
	ev.Notify, ev.Reason = n, err.Error()
	e.stats.Failed[n]++
	e.remove(sa)
	rd.event(ev)
}

// checkEAP checks that msg is one EAP packet of the given code.
func checkEAP(msg []byte, code byte) error {
	if len(msg) < 4 {
		return fmt.Errorf("EAP message of %d bytes", len(msg))
	}
	if msg[0] != code {
		return fmt.Errorf("EAP code %d, want %d", msg[0], code)
	}
	if l := int(msg[2])<<8 | int(msg[3]); l != len(msg) {
		return fmt.Errorf("EAP length field %d for %d bytes", l, len(msg))
	}
	return nil
}

// ---- initiator ----

// EAPClient runs an EAP method for our initiator (tests and the load
// harness): it answers each EAP request of the responder.
type EAPClient interface {
	// Respond answers one EAP request (an RFC 3748 packet).
	Respond(request []byte) ([]byte, error)
	// MSK is the method's Master Session Key once it succeeded; nil if it
	// generates none.
	MSK() []byte
}

type eapClientState struct {
	client    EAPClient
	idi       *ID
	idr       *ID  // the responder's identity, from its first answer
	verified  bool // the responder's own AUTH checked
	succeeded bool // EAP-Success received; our AUTH(MSK) sent
}

// eapClientResponse handles an IKE_AUTH response while our EAP runs.
func (sa *IKESA) eapClientResponse(now time.Time, e *Engine, m *Message, rd *Ready) {
	ini, st := sa.ini, sa.hs.eapc
	if n := findNotify(m.Payloads, AUTHENTICATION_FAILED); n != nil {
		sa.failInit(e, AUTHENTICATION_FAILED, "responder refused our EAP authentication", rd)
		return
	}
	a := collectAuth(m.Payloads, false)
	if !st.verified {
		if a.id == nil {
			sa.failInit(e, INVALID_SYNTAX, "IKE_AUTH response without IDr", rd)
			return
		}
		sa.PeerID = Identity{Type: a.id.IDType, Data: bytes.Clone(a.id.Data)}
		if !ini.RemoteID.IsZero() && !ini.RemoteID.Equal(sa.PeerID) {
			sa.failInit(e, AUTHENTICATION_FAILED, "responder identity "+sa.PeerID.String()+" is not "+ini.RemoteID.String(), rd)
			return
		}
		if err := sa.verifyPeer(now, e, a, sa.authOctets(false, a.id), ini.PSK, ini.Verifier); err != nil {
			sa.failInit(e, AUTHENTICATION_FAILED, err.Error(), rd)
			return
		}
		st.idr, st.verified = &ID{Responder: true, IDType: a.id.IDType, Data: bytes.Clone(a.id.Data)}, true
	} else if st.succeeded {
		key := st.client.MSK()
		if key == nil {
			key = sa.hs.skpr
		}
		if a.auth == nil || a.auth.Method != sig.MethodPSK || !bytes.Equal(a.auth.Data, sa.pskAuth(key, sa.authOctets(false, st.idr))) {
			sa.failInit(e, AUTHENTICATION_FAILED, "responder's AUTH after EAP does not verify", rd)
			return
		}
		sa.hs.eapc = nil
		sa.establishInitiator(now, e, m, a, rd)
		return
	}
	var msg []byte
	for _, p := range m.Payloads {
		if p, ok := p.(*EAP); ok {
			msg = p.Message
		}
	}
	if len(msg) < 4 {
		sa.failInit(e, AUTHENTICATION_FAILED, "IKE_AUTH response without EAP", rd)
		return
	}
	switch msg[0] {
	case EAPCodeRequest:
		resp, err := st.client.Respond(msg)
		if err != nil {
			sa.failInit(e, AUTHENTICATION_FAILED, "EAP: "+err.Error(), rd)
			return
		}
		sa.request(now, e, IKE_AUTH, []Payload{&EAP{Message: resp}}, rd)
	case EAPCodeSuccess:
		st.succeeded = true
		key := st.client.MSK()
		if key == nil {
			key = sa.hs.skpi
		}
		sa.request(now, e, IKE_AUTH, []Payload{&Auth{Method: sig.MethodPSK, Data: sa.pskAuth(key, sa.authOctets(true, st.idi))}}, rd)
	default:
		sa.failInit(e, AUTHENTICATION_FAILED, "EAP failed", rd)
	}
}
