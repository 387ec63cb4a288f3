package ike

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// Initiation describes an IKE SA for us to initiate.
type Initiation struct {
	Local, Remote netip.AddrPort // IKE addresses (port 500 on both sides, normally)
	Creds         Credentials    // our identity; Signer nil means PSK
	RemoteID      Identity       // expected responder identity; sent as IDr when set
	PSK           []byte
	Verifier      *sig.Verifier // validates the responder's certificate
	IKEProposals  []ProposalSpec
	ESPProposals  []ProposalSpec
	TSi, TSr      []TrafficSelector
	RequestVIP    bool   // ask for a virtual IP with CP(CFG_REQUEST)
	RequestVIP6   bool   // ask for a virtual IPv6 address too (or only)
	RemoteNATT    uint16 // the responder's NAT-T port; 0 = 4500

	// PeerKey is the responder's raw public key (RFC 7670); nil: looked up
	// in Config.PublicKeys by the responder's identity, if any.
	PeerKey crypto.PublicKey
	// RawKey: we authenticate with Creds.Signer as a raw public key and
	// send it in CERT(15) (Creds.Chain must be empty).
	RawKey bool

	// RequestTicket asks the responder for a session resumption ticket
	// (RFC 5723; IKESA.Ticket once established).
	RequestTicket bool
	// Resume resumes the IKE SA the ticket stands for with
	// IKE_SESSION_RESUME instead of IKE_SA_INIT (no new authentication).
	Resume *Ticket
	// EAP: we authenticate with this EAP method instead of AUTH (RFC 7296
	// §2.16); the responder authenticates with its certificate or PSK.
	EAP EAPClient
	// NoInitialContact leaves INITIAL_CONTACT out of IKE_AUTH (a gateway
	// that keeps other IKE SAs with the responder).
	NoInitialContact bool
}

const maxKERetries = 2

// Initiate starts an IKE SA as initiator and returns our SPI.
func (e *Engine) Initiate(now time.Time, ini Initiation, rd *Ready) (uint64, error) {
	e.begin(now)
	if len(ini.ESPProposals) == 0 || len(ini.TSi) == 0 || len(ini.TSr) == 0 {
		return 0, errors.New("ike: initiation needs ESP proposals and traffic selectors")
	}
	if ini.Resume != nil {
		return e.startResume(now, ini, rd)
	}
	if len(ini.IKEProposals) == 0 || len(ini.IKEProposals[0].Groups) == 0 {
		return 0, errors.New("ike: initiation needs an IKE proposal with a group")
	}
	if ini.Creds.Signer == nil && ini.PSK == nil && ini.EAP == nil {
		return 0, errors.New("ike: initiation needs a private key, a PSK or an EAP method")
	}
	sa := &IKESA{
		eng: e, initiator: true, outbound: true, state: stateInitSent, SPIi: e.newSPI(), Local: ini.Local, Remote: ini.Remote,
		created: stampOf(now), ini: &ini, hs: &handshake{ni: e.randBytes(32)},
	}
	kx, err := suite.GenerateKeyExchange(ini.IKEProposals[0].Groups[0], e.cfg.Rand)
	if err != nil {
		return 0, err
	}
	sa.hs.kx = kx
	e.sas[sa.SPIi] = sa
	sa.sendInit(now, e, rd)
	return sa.SPIi, nil
}

func (sa *IKESA) sendInit(now time.Time, e *Engine, rd *Ready) {
	m := sa.header(IKE_SA_INIT, 0, false)
	if sa.hs.cookie != nil {
		m.Payloads = append(m.Payloads, &Notify{NotifyType: COOKIE, Data: sa.hs.cookie})
	}
	m.Payloads = append(m.Payloads,
		&SA{Proposals: Proposals(sa.ini.IKEProposals, ProtoIKE, nil, true)},
		&KE{Group: sa.hs.kx.Group(), Data: sa.hs.kx.Public()},
		&Nonce{Data: sa.hs.ni},
	)
	m.Payloads = append(m.Payloads, natNotifies(e, sa.SPIi, 0, sa.Local, sa.Remote, e.cfg.ForceEncap)...)
	m.Payloads = append(m.Payloads, &Notify{NotifyType: IKEV2_FRAGMENTATION_SUPPORTED}, hashesNotify())
	if offersIntermediate(sa.ini.IKEProposals) {
		m.Payloads = append(m.Payloads, &Notify{NotifyType: INTERMEDIATE_EXCHANGE_SUPPORTED})
	}
	sa.hs.initReq = m.Encode()
	sa.req = &pendingRequest{msgID: 0, exchange: IKE_SA_INIT, packets: [][]byte{sa.hs.initReq}, retransmitAt: now.Add(e.cfg.RetransmitTimeout)}
	sa.nextOut = 1
	sa.reschedule(e)
	sa.send(sa.req.packets, rd)
}

func (sa *IKESA) failInit(e *Engine, n NotifyType, reason string, rd *Ready) {
	ev := sa.event(EventIKEFailed)
	ev.Notify, ev.Reason = n, reason
	e.stats.Failed[n]++
	e.remove(sa)
	rd.event(ev)
}

func (sa *IKESA) handleInitResponse(now time.Time, e *Engine, pkt Packet, rd *Ready) {
	m, err := Decode(pkt.Data)
	if err != nil {
		e.drop(rd, pkt, sa.SPIi, 0, err)
		return
	}
	if c := findNotify(m.Payloads, COOKIE); c != nil {
		if bytes.Equal(c.Data, sa.hs.cookie) {
			// The answer to a retransmission of our cookieless request:
			// the retry with this cookie is out already.
			e.drop(rd, pkt, sa.SPIi, 0, ErrStaleMessage)
			return
		}
		sa.hs.cookie = bytes.Clone(c.Data)
		sa.req = nil
		sa.sendInit(now, e, rd)
		return
	}
	if n := findNotify(m.Payloads, INVALID_KE_PAYLOAD); n != nil {
		if len(n.Data) != 2 || sa.hs.keRetries >= maxKERetries {
			sa.failInit(e, INVALID_KE_PAYLOAD, "responder refused our key exchange", rd)
			return
		}
		g := binary.BigEndian.Uint16(n.Data)
		if !offersGroup(sa.ini.IKEProposals, g) {
			sa.failInit(e, INVALID_KE_PAYLOAD, "responder wants group "+suite.GroupName(g)+" which we did not offer", rd)
			return
		}
		kx, err := suite.GenerateKeyExchange(g, e.cfg.Rand)
		if err != nil {
			sa.failInit(e, INVALID_KE_PAYLOAD, err.Error(), rd)
			return
		}
		sa.hs.kx, sa.hs.keRetries, sa.req = kx, sa.hs.keRetries+1, nil
		sa.sendInit(now, e, rd)
		return
	}
	if n := firstError(m.Payloads); n != nil {
		sa.failInit(e, n.NotifyType, "responder answered "+n.NotifyType.String(), rd)
		return
	}
	x := collectExchange(m.Payloads)
	saP, ke, nonce := x.sa, x.ke, x.nonce
	if saP == nil || ke == nil || nonce == nil || m.SPIr == 0 {
		sa.failInit(e, INVALID_SYNTAX, "IKE_SA_INIT response needs SA, KE and Nonce", rd)
		return
	}
	sel, err := AcceptSelected(sa.ini.IKEProposals, saP, ProtoIKE, true)
	if err != nil {
		sa.failInit(e, NO_PROPOSAL_CHOSEN, err.Error(), rd)
		return
	}
	if sel.Group != sa.hs.kx.Group() || ke.Group != sel.Group {
		sa.failInit(e, INVALID_KE_PAYLOAD, "responder's KE does not match the chosen group", rd)
		return
	}
	shared, err := sa.hs.kx.SharedSecret(ke.Data)
	if err != nil {
		sa.failInit(e, INVALID_SYNTAX, err.Error(), rd)
		return
	}
	sa.hs.kx = nil
	sa.req = nil
	sa.SPIr = m.SPIr
	sa.prop = e.sharedProp(sel)
	sa.hs.nr = bytes.Clone(nonce.Data)
	sa.hs.initResp = bytes.Clone(pkt.Data)
	if err := sa.deriveKeys(e, shared); err != nil {
		sa.failInit(e, NotifyFor(err), err.Error(), rd)
		return
	}
	sa.afterInitResponse(e, m)
	if sa.startIntermediate(now, e, m, rd) {
		return
	}
	sa.sendAuth(now, e, rd)
}

// afterInitResponse takes what the responder's IKE_SA_INIT (or
// IKE_SESSION_RESUME) response says about NAT and its capabilities.
func (sa *IKESA) afterInitResponse(e *Engine, m *Message) {
	natL, natR, natT := detectNAT(m, sa.SPIi, sa.SPIr, sa.Local, sa.Remote)
	sa.natLocal, sa.natRemote = natL || (natT && e.cfg.ForceEncap), natR
	// Bound to a wildcard address we cannot tell: no keepalives then.
	sa.behindNAT = natL && !sa.Local.Addr().IsUnspecified()
	if natT && (sa.natLocal || sa.natRemote) {
		sa.Local = netip.AddrPortFrom(sa.Local.Addr(), e.cfg.NATTPort)
		port := sa.ini.RemoteNATT
		if port == 0 {
			port = DefaultNATTPort
		}
		sa.Remote = netip.AddrPortFrom(sa.Remote.Addr(), port)
	}
	sa.peerFrag = findNotify(m.Payloads, IKEV2_FRAGMENTATION_SUPPORTED) != nil
	sa.hs.peerHashes = parseHashes(findNotify(m.Payloads, SIGNATURE_HASH_ALGORITHMS))
	for _, p := range m.Payloads {
		if _, ok := p.(*CertReq); ok {
			sa.peerCertReq = true
		}
	}
}

func offersGroup(specs []ProposalSpec, g uint16) bool {
	for _, s := range specs {
		for _, x := range s.Groups {
			if x == g {
				return true
			}
		}
	}
	return false
}

func (sa *IKESA) sendAuth(now time.Time, e *Engine, rd *Ready) {
	ini := sa.ini
	idi := &ID{IDType: ini.Creds.ID.Type, Data: ini.Creds.ID.Data}
	payloads := []Payload{idi}
	if ini.Verifier != nil {
		payloads = append(payloads, &CertReq{Encoding: CertX509Signature})
	}
	if !ini.NoInitialContact {
		payloads = append(payloads, &Notify{NotifyType: INITIAL_CONTACT})
	}
	if e.cfg.MOBIKE {
		payloads = append(payloads, &Notify{NotifyType: MOBIKE_SUPPORTED})
	}
	payloads = append(payloads, &Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC_SUPPORTED})
	if !ini.RemoteID.IsZero() {
		payloads = append(payloads, &ID{Responder: true, IDType: ini.RemoteID.Type, Data: ini.RemoteID.Data})
	}
	if ini.RequestTicket {
		payloads = append(payloads, &Notify{NotifyType: TICKET_REQUEST})
	}
	switch {
	case sa.resume != nil:
		payloads = append(payloads, sa.resumedAuth(sa.authOctets(true, idi))...)
	case ini.EAP != nil:
		sa.hs.eapc = &eapClientState{client: ini.EAP, idi: idi}
	default:
		sendCerts := ini.Creds.SendCert == SendCertAlways || sa.peerCertReq
		auth, err := sa.ourAuth(e, &ini.Creds, sa.authOctets(true, idi), ini.Creds.Signer == nil, ini.PSK, sendCerts)
		if err != nil {
			sa.failInit(e, NotifyFor(err), err.Error(), rd)
			return
		}
		payloads = append(payloads, auth...)
	}
	if ini.RequestVIP || ini.RequestVIP6 {
		cp := &CP{CfgType: CFG_REQUEST}
		if ini.RequestVIP {
			cp.Attrs = append(cp.Attrs, CPAttr{Type: INTERNAL_IP4_ADDRESS}, CPAttr{Type: INTERNAL_IP4_DNS})
		}
		if ini.RequestVIP6 {
			cp.Attrs = append(cp.Attrs, CPAttr{Type: INTERNAL_IP6_ADDRESS}, CPAttr{Type: INTERNAL_IP6_DNS})
		}
		payloads = append(payloads, cp)
	}
	sa.hs.pendingInSPI = e.newESPSPI(sa)
	spi := binary.BigEndian.AppendUint32(nil, sa.hs.pendingInSPI)
	payloads = append(payloads,
		&SA{Proposals: Proposals(ini.ESPProposals, ProtoESP, spi, false)},
		&TS{Selectors: ini.TSi},
		&TS{Responder: true, Selectors: ini.TSr},
	)
	sa.state = stateAuthSent
	sa.request(now, e, IKE_AUTH, payloads, rd)
}

func (sa *IKESA) handleAuthResponse(now time.Time, e *Engine, m *Message, rd *Ready) {
	if sa.hs.eapc != nil {
		sa.eapClientResponse(now, e, m, rd)
		return
	}
	ini := sa.ini
	if n := findNotify(m.Payloads, AUTHENTICATION_FAILED); n != nil {
		sa.failInit(e, AUTHENTICATION_FAILED, "responder refused our authentication", rd)
		return
	}
	a := collectAuth(m.Payloads, false)
	if a.id == nil {
		sa.failInit(e, INVALID_SYNTAX, "IKE_AUTH response without IDr", rd)
		return
	}
	sa.PeerID = Identity{Type: a.id.IDType, Data: bytes.Clone(a.id.Data)}
	if !ini.RemoteID.IsZero() && !ini.RemoteID.Equal(sa.PeerID) {
		sa.failInit(e, AUTHENTICATION_FAILED, "responder identity "+sa.PeerID.String()+" is not "+ini.RemoteID.String(), rd)
		return
	}
	if sa.resume != nil {
		if err := sa.verifyResumed(a, sa.authOctets(false, a.id)); err != nil {
			sa.failInit(e, AUTHENTICATION_FAILED, err.Error(), rd)
			return
		}
	} else if err := sa.verifyPeer(now, e, a, sa.authOctets(false, a.id), ini.PSK, ini.Verifier); err != nil {
		sa.failInit(e, AUTHENTICATION_FAILED, err.Error(), rd)
		return
	}
	sa.establishInitiator(now, e, m, a, rd)
}

// establishInitiator completes our IKE_AUTH with the responder's last
// answer m (payloads a): the IKE SA is up, the CHILD SA is set up.
func (sa *IKESA) establishInitiator(now time.Time, e *Engine, m *Message, a authPayloads, rd *Ready) {
	ini := sa.ini
	sa.takeTicket(now, m)
	sa.state = stateEstablished
	sa.estab = stampOf(now)
	sa.lastRecv = stampOf(now)
	sa.mobike = e.cfg.MOBIKE && findNotify(m.Payloads, MOBIKE_SUPPORTED) != nil
	sa.msgIDSync = findNotify(m.Payloads, IKEV2_MESSAGE_ID_SYNC_SUPPORTED) != nil
	if e.cfg.IKERekeyAfter > 0 {
		sa.rekeyIKE = stampOf(now.Add(e.cfg.IKERekeyAfter))
	}
	inSPI, ni, nr := sa.hs.pendingInSPI, sa.hs.ni, sa.hs.nr // the first CHILD SA's
	sa.hs = nil                                             // AUTH is done; free what only it needed
	e.stats.Established++
	rd.event(sa.event(EventIKEEstablished))
	// Persisted once the CHILD SA's outcome is known, on every path below.
	defer sa.persist(e, PersistEstablished, rd)

	childErr := func(n NotifyType, reason string) {
		e.dropInSPI(inSPI)
		ev := sa.event(EventChildFailed)
		ev.Notify, ev.Reason = n, reason
		rd.event(ev)
	}
	if n := firstError(m.Payloads); n != nil {
		childErr(n.NotifyType, "responder refused the CHILD SA")
		return
	}
	if a.sa == nil || a.tsi == nil || a.tsr == nil {
		childErr(INVALID_SYNTAX, "IKE_AUTH response without a CHILD SA")
		return
	}
	sel, err := AcceptSelected(ini.ESPProposals, a.sa, ProtoESP, false)
	if err != nil || len(sel.SPI) != 4 {
		childErr(NO_PROPOSAL_CHOSEN, "responder chose an ESP proposal we did not offer")
		return
	}
	if a.cp != nil && a.cp.CfgType == CFG_REPLY {
		for _, at := range a.cp.Attrs {
			if at.Type == INTERNAL_IP4_ADDRESS && len(at.Value) >= 4 {
				sa.vip = netip.AddrFrom4([4]byte(at.Value[:4]))
			}
			if at.Type == INTERNAL_IP6_ADDRESS && len(at.Value) >= 16 {
				sa.vip6 = netip.AddrFrom16([16]byte(at.Value[:16]))
			}
		}
	}
	tsi := ini.TSi
	vips := sa.vipSelectors()
	if vips != nil {
		tsi = vips
	}
	if !Within(a.tsi.Selectors, tsi) && vips == nil || !Within(a.tsr.Selectors, ini.TSr) {
		childErr(TS_UNACCEPTABLE, "responder widened the traffic selectors")
		return
	}
	c := &ChildSA{
		InSPI: inSPI, OutSPI: binary.BigEndian.Uint32(sel.SPI), Proposal: sel.kept(),
		LocalTS: a.tsi.Selectors, RemoteTS: a.tsr.Selectors, Local: sa.Local, Remote: sa.Remote,
		Encap: sa.natLocal || sa.natRemote, VirtualIP: sa.firstVIP(), Created: now,
	}
	if err := sa.childKeys(c, nil, ni, nr, sa.initiator); err != nil {
		childErr(NO_PROPOSAL_CHOSEN, err.Error())
		return
	}
	c.initSeq(nil)
	sa.addChild(c)
	sa.scheduleChildRekey(e, c, false)
	sa.dataPlane(e, rd, sa.install(c, 0))
	ev := sa.event(EventChildInstalled)
	ev.Child = c
	rd.event(ev)
}
