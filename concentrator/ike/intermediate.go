package ike

import (
	"encoding/binary"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// IKE_INTERMEDIATE (RFC 9242) carrying additional key exchanges (RFC 9370).
//
// Both sides announce INTERMEDIATE_EXCHANGE_SUPPORTED in IKE_SA_INIT. When
// the chosen proposal has additional key exchanges (ADDKE1..7), the
// initiator runs one IKE_INTERMEDIATE exchange per exchange, in transform
// type order, each carrying one KE payload each way. Each exchange is
// protected with the keys in effect before it; once both sides have its
// shared secret SK(n), the IKE SA's keys are replaced:
//
//	SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
//	{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}(n) = prf+(SKEYSEED(n), Ni | Nr | SPIi | SPIr)
//
// The IKE_INTERMEDIATE messages are authenticated in IKE_AUTH: each side's
// AUTH covers IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID, where
// IntAuth_xn = prf(SK_px(n-1), IntAuth_x(n-1) | A | P) chains the messages
// of side x, A being the IKE header and the Encrypted payload's header with
// their lengths counted without IV, padding and ICV, and P the plaintext
// inner payloads (as if the message had not been fragmented).
//
// Nothing of a half-open SA is persisted: a half-open SA in the middle of
// its IKE_INTERMEDIATE exchanges lives only on the node that answered its
// IKE_SA_INIT, and its messages reach that node the way IKE_AUTH does
// (forwarded by SPI slot). The established SA's snapshot carries the final
// keys and the negotiated transforms (Selected.AddKE).

// maxIntermediate bounds IKE_INTERMEDIATE exchanges per IKE SA (additional
// key exchanges and, beyond them, empty ones a peer might send).
const maxIntermediate = 2 * NumAddKE

// intermediate is the IKE_INTERMEDIATE state of a half-open IKE SA.
type intermediate struct {
	pending      []uint16 // additional key exchanges still to run, in order
	authI, authR []byte   // IntAuth_i and IntAuth_r so far
	count        int      // IKE_INTERMEDIATE exchanges completed
	kx           suite.KeyExchange
	respCost     int64 // bytes of the cached response counted as half-open memory
}

// intAuthData is A | P of an IKE_INTERMEDIATE message (RFC 9242 §3.3.2):
// the IKE header and an Encrypted payload header as if the message were
// one unfragmented SK payload with no IV, padding or ICV, then the
// plaintext inner payload chain.
func intAuthData(spii, spir uint64, ex ExchangeType, flags uint8, msgID uint32, first PayloadType, inner []byte) []byte {
	b := make([]byte, 0, headerLen+genericHeaderLen+len(inner))
	b = binary.BigEndian.AppendUint64(b, spii)
	b = binary.BigEndian.AppendUint64(b, spir)
	b = append(b, uint8(PayloadSK), Version, uint8(ex), flags)
	b = binary.BigEndian.AppendUint32(b, msgID)
	b = binary.BigEndian.AppendUint32(b, uint32(headerLen+genericHeaderLen+len(inner)))
	b = append(b, uint8(first), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(genericHeaderLen+len(inner)))
	return append(b, inner...)
}

// intAuthOfMessage is intAuthData of a message we build.
func intAuthOfMessage(m *Message) []byte {
	return intAuthData(m.SPIi, m.SPIr, m.Exchange, m.Flags, m.MessageID, firstType(m.Payloads), appendChain(nil, m.Payloads))
}

// intAuthOfReceived is intAuthData of a decrypted (reassembled) message.
func intAuthOfReceived(m *Message) []byte {
	return intAuthData(m.SPIi, m.SPIr, m.Exchange, m.Flags, m.MessageID, m.innerFirst, m.inner)
}

// intAuth returns what AUTH covers beyond RFC 7296's signed octets: the
// IntAuth chunk when IKE_INTERMEDIATE exchanges took place, else nothing.
func (sa *IKESA) intAuth() []byte {
	im := sa.inter
	if im == nil || im.count == 0 {
		return nil
	}
	out := make([]byte, 0, len(im.authI)+len(im.authR)+4)
	out = append(append(out, im.authI...), im.authR...)
	// IKE_AUTH's message ID: IKE_SA_INIT was 0, the exchanges 1..count.
	return binary.BigEndian.AppendUint32(out, uint32(im.count+1))
}

// addKeyExchange replaces the IKE SA's keys once an additional key
// exchange produced its shared secret (RFC 9370 §2.2.2).
func (sa *IKESA) addKeyExchange(secret []byte) {
	skeyseed := suite.RekeySKEYSEED(sa.prf, sa.skd(), secret, sa.hs.ni, sa.hs.nr)
	k := suite.DeriveIKEKeys(sa.prf, skeyseed, sa.hs.ni, sa.hs.nr, sa.SPIi, sa.SPIr, sa.cipher)
	sa.km, sa.hs.skpi, sa.hs.skpr = k.Kept, k.SKpi, k.SKpr
	clear(skeyseed)
}

// offersIntermediate reports whether an initiation needs IKE_INTERMEDIATE.
func offersIntermediate(specs []ProposalSpec) bool {
	for i := range specs {
		if specs[i].HasAddKE() {
			return true
		}
	}
	return false
}

// ---- responder ----

// acceptIntermediate decides, while answering IKE_SA_INIT, whether the SA
// uses IKE_INTERMEDIATE: the initiator announced it (then so do we), and
// it must have if the chosen proposal has additional key exchanges.
func (sa *IKESA) acceptIntermediate(m *Message) (announce bool, err error) {
	peer := findNotify(m.Payloads, INTERMEDIATE_EXCHANGE_SUPPORTED) != nil
	pending := sa.prop.AddKEs()
	if len(pending) > 0 && !peer {
		return false, errorf(NO_PROPOSAL_CHOSEN, "additional key exchanges chosen but the initiator does not support IKE_INTERMEDIATE")
	}
	if peer {
		sa.inter = &intermediate{pending: pending}
	}
	return peer, nil
}

// handleIntermediateRequest answers one IKE_INTERMEDIATE exchange of a
// half-open SA: the next additional key exchange, if any is left.
func (sa *IKESA) handleIntermediateRequest(now time.Time, e *Engine, m *Message, rd *Ready) {
	im := sa.inter
	fail := func(err *Error) {
		sa.respond(e, IKE_INTERMEDIATE, m.MessageID, []Payload{&Notify{NotifyType: err.Notify, Data: err.Data}}, rd)
		ev := sa.event(EventIKEFailed)
		ev.Notify, ev.Reason = err.Notify, err.Error()
		e.stats.Failed[err.Notify]++
		e.remove(sa)
		rd.event(ev)
	}
	if im.count >= maxIntermediate {
		fail(errorf(INVALID_SYNTAX, "more than %d IKE_INTERMEDIATE exchanges", maxIntermediate))
		return
	}
	// The request is authenticated with the keys it came under.
	im.authI = sa.prf.Sum(sa.hs.skpi, im.authI, intAuthOfReceived(m))
	ke := collectExchange(m.Payloads).ke
	var payloads []Payload
	var secret []byte
	switch {
	case len(im.pending) > 0:
		want := im.pending[0]
		if ke == nil || ke.Group != want {
			err := errorf(INVALID_KE_PAYLOAD, "IKE_INTERMEDIATE without a KE payload of %s", suite.GroupName(want))
			err.Data = binary.BigEndian.AppendUint16(nil, want)
			fail(err)
			return
		}
		kx, s, err := suite.Respond(want, ke.Data, e.cfg.Rand)
		if err != nil {
			fail(&Error{Notify: INVALID_SYNTAX, Reason: "peer's additional KE", Err: err})
			return
		}
		payloads, secret = []Payload{&KE{Group: want, Data: kx.Public()}}, s
		im.pending = im.pending[1:]
	case ke != nil:
		fail(errorf(INVALID_SYNTAX, "KE payload in IKE_INTERMEDIATE with no additional key exchange left"))
		return
	}
	resp := sa.header(IKE_INTERMEDIATE, m.MessageID, true)
	resp.Payloads = payloads
	im.authR = sa.prf.Sum(sa.hs.skpr, im.authR, intAuthOfMessage(&resp))
	sa.respond(e, IKE_INTERMEDIATE, m.MessageID, payloads, rd)
	im.count++
	if secret != nil {
		sa.addKeyExchange(secret)
		clear(secret)
	}
	// The cached response (an ML-KEM ciphertext) counts as half-open memory.
	if sa.halfOpen {
		var n int64
		for _, p := range sa.lastResp {
			n += int64(len(p))
		}
		e.halfOpenGrow(sa, n-im.respCost)
		im.respCost = n
	}
}

// ---- initiator ----

// startIntermediate begins the IKE_INTERMEDIATE exchanges after our
// IKE_SA_INIT completed, if the chosen proposal has additional key
// exchanges; it reports whether it did (or failed the SA).
func (sa *IKESA) startIntermediate(now time.Time, e *Engine, m *Message, rd *Ready) bool {
	pending := sa.prop.AddKEs()
	if len(pending) == 0 {
		return false
	}
	if findNotify(m.Payloads, INTERMEDIATE_EXCHANGE_SUPPORTED) == nil {
		sa.failInit(e, NO_PROPOSAL_CHOSEN, "responder chose additional key exchanges without IKE_INTERMEDIATE", rd)
		return true
	}
	sa.inter = &intermediate{pending: pending}
	sa.sendIntermediate(now, e, rd)
	return true
}

func (sa *IKESA) sendIntermediate(now time.Time, e *Engine, rd *Ready) {
	im := sa.inter
	kx, err := suite.GenerateKeyExchange(im.pending[0], e.cfg.Rand)
	if err != nil {
		sa.failInit(e, NO_PROPOSAL_CHOSEN, err.Error(), rd)
		return
	}
	im.kx = kx
	payloads := []Payload{&KE{Group: kx.Group(), Data: kx.Public()}}
	req := sa.header(IKE_INTERMEDIATE, sa.nextOut, false)
	req.Payloads = payloads
	im.authI = sa.prf.Sum(sa.hs.skpi, im.authI, intAuthOfMessage(&req))
	sa.state = stateIntSent
	sa.request(now, e, IKE_INTERMEDIATE, payloads, rd)
}

func (sa *IKESA) handleIntermediateResponse(now time.Time, e *Engine, m *Message, rd *Ready) {
	im := sa.inter
	if n := firstError(m.Payloads); n != nil {
		sa.failInit(e, n.NotifyType, "responder answered IKE_INTERMEDIATE with "+n.NotifyType.String(), rd)
		return
	}
	ke := collectExchange(m.Payloads).ke
	if ke == nil || im.kx == nil || ke.Group != im.kx.Group() {
		sa.failInit(e, INVALID_SYNTAX, "IKE_INTERMEDIATE response without the KE payload of "+suite.GroupName(im.pending[0]), rd)
		return
	}
	secret, err := im.kx.SharedSecret(ke.Data)
	if err != nil {
		sa.failInit(e, INVALID_SYNTAX, err.Error(), rd)
		return
	}
	im.authR = sa.prf.Sum(sa.hs.skpr, im.authR, intAuthOfReceived(m))
	im.kx = nil
	im.pending = im.pending[1:]
	im.count++
	sa.addKeyExchange(secret)
	clear(secret)
	if len(im.pending) > 0 {
		sa.sendIntermediate(now, e, rd)
		return
	}
	sa.sendAuth(now, e, rd)
}
