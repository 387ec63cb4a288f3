package ike

import (
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"slices"
	"time"
)

// Engine is one shard of the IKE engine: a table of IKE SAs driven by
// Handle (a packet) and Tick (time passing). It does no I/O, starts no
// goroutines and reads no clock; it is not safe for concurrent use.
type Engine struct {
	cfg       Config
	sas       map[uint64]*IKESA  // by our IKE SPI
	initIndex map[initKey]*IKESA // responder half-open SAs by (SPIi, peer)
	// recentInits: the (SPIi, peer) of responder SAs established within
	// the last HalfOpenTimeout, and until when, in that order; a copy of
	// their IKE_SA_INIT still on its way (a retransmission, a cookie
	// retry) must not start another half-open SA.
	recentInits map[initKey]time.Time
	recentQ     expiryQueue[initKey]
	inSPIs      map[uint32]*IKESA     // inbound ESP SPIs in use
	props       map[propKey]*Selected // the IKE SAs' proposals, one per suite (sharedProp)
	// Reserved SPIs handed out (Config.IKESPIs, ESPSPIs) that the state
	// store is not known to hold; true while a Persist naming one awaits
	// its answer. One that goes out of use while no Persist names it (none
	// made, or the store refused it without writing: PersistRefused) is
	// handed back (Config.ReturnIKESPI, ReturnESPSPI): its reservation is
	// still the node's. Without this every half-open SA that never
	// authenticated, every failed IKE_AUTH and every rekey the peer never
	// answered kept its reservation in the state store for the rest of the
	// node's registration.
	unstoredIKE map[uint64]bool
	unstoredESP map[uint32]bool
	// elsewhere bounds the cached answers sent to another address than
	// their SA's (retransmissions after a NAT rebinding): a copy of a
	// genuine request replayed from forged addresses by an on-path
	// observer gets at most elsewhereRate answers a second out of the
	// shard, with a burst of as many.
	elsewhere struct {
		tokens float64
		at     time.Time
	}
	timers   *timerWheel
	halfOpen int
	// half-open accounting (admission.go)
	halfOpenBytes int64
	perPrefix     map[netip.Prefix]prefixLoad
	credit        map[netip.Prefix]int32    // authenticated SAs of refused prefixes, within CreditWindow
	creditQ       expiryQueue[netip.Prefix] // their expiries, in order
	cookies       *Cookies                  // current and previous secrets, shared with the socket reader
	stats         Stats
	step          uint64         // counts entry points: one Ready batch each
	now           time.Time      // the latest time an entry point was given
	natFake       netip.AddrPort // ForceEncap: the address our NAT_DETECTION_SOURCE_IP claims
	defaultPolicy PeerPolicy     // RemoteTS and Pool, without Policies
}

type initKey struct {
	spi  uint64
	peer netip.AddrPort
}

// noteEstablishedInit remembers k (its SA left the half-open index when it
// was established) for HalfOpenTimeout.
func (e *Engine) noteEstablishedInit(now time.Time, k initKey) {
	e.pruneRecentInits(now)
	until := now.Add(e.cfg.HalfOpenTimeout)
	e.recentInits[k] = until
	e.recentQ.push(k, until)
}

// recentlyEstablished: an SA with this (SPIi, peer) was established
// within HalfOpenTimeout.
func (e *Engine) recentlyEstablished(now time.Time, k initKey) bool {
	e.pruneRecentInits(now)
	until, ok := e.recentInits[k]
	return ok && now.Before(until)
}

func (e *Engine) pruneRecentInits(now time.Time) {
	e.recentQ.prune(now, func(k initKey, until time.Time) {
		if e.recentInits[k] == until {
			delete(e.recentInits, k)
		}
	})
}

// Stats counts what the engine did; the caller exports them as metrics.
type Stats struct {
	HalfOpen           int
	Established        uint64
	Failed             map[NotifyType]uint64
	EAPRounds          uint64 // EAP messages handed to the backend
	CookiesSent        uint64
	Dropped            uint64
	Retransmits        uint64 // requests we retransmitted
	DuplicateRequests  uint64 // retransmitted requests we answered from the cache
	DPDSent            uint64 // liveness checks sent
	DPDTraffic         uint64 // liveness checks not sent: the peer's ESP came meanwhile (Engine.Traffic)
	DPDDead            uint64 // peers declared dead
	ChildRekeys        uint64 // CHILD SAs rekeyed (either side started)
	IKERekeys          uint64 // IKE SAs rekeyed
	RekeyCollisions    uint64 // simultaneous rekeys resolved (RFC 7296 §2.8.1)
	UnreservedSPIs     uint64 // SPIs allocated without a cluster-wide reservation (pool empty)
	ReturnedSPIs       uint64 // reserved SPIs handed back unused (their SA or exchange failed before it was persisted)
	PersistFailures    uint64 // state writes the caller reported failed
	HeldRetransmits    uint64 // retransmitted requests not answered: their answer was not yet committed
	RevocationParked   uint64 // IKE_AUTH requests left unanswered while a certificate's revocation status was fetched
	MsgIDReservations  uint64 // request message ID reservations persisted
	MsgIDProbes        uint64 // restored SAs that probed for the peer's expected message ID
	MsgIDSyncs         uint64 // RFC 6311 synchronisations we started after a restore
	MsgIDSyncsAnswered uint64 // RFC 6311 synchronisations a peer asked of us
	SeqReservations    uint64 // ESP sequence number reservations renewed (SeqProgress)
	TicketsIssued      uint64 // session resumption tickets issued (RFC 5723)
	Resumed            uint64 // IKE SAs resumed from a ticket
	ResumesRefused     uint64 // tickets refused (invalid, expired, unknown key, used before)

	// Admission (admission.go).
	HalfOpenBytes   int64  // bytes kept by half-open SAs (messages plus an estimated overhead)
	Oversized       uint64 // datagrams over max_message_size, or IKE_SA_INIT over max_init_message_size
	RefusedHalfOpen uint64 // IKE_SA_INIT refused: max_half_open reached
	RefusedPrefix   uint64 // IKE_SA_INIT refused: the source prefix's cookie-proven quota reached
	RefusedMemory   uint64 // IKE_SA_INIT refused: max_half_open_bytes reached
	RefusedSAs      uint64 // IKE_SA_INIT refused: max_sas reached
	PrefixCredits   uint64 // SAs that authenticated after their prefix was refused: each raised its quota for CreditWindow

	// Policy (policy.go, mobike.go, natmap.go).
	MovesRefused     uint64 // authenticated messages from new addresses that did not move their SA (no NAT, no MOBIKE update)
	SelectorsRefused uint64 // CHILD SAs refused: selectors another identity holds
	MappingChecks    uint64 // liveness checks sent to a NAT mapping the data plane reported (PeerMoved)
}

const cookieLifetime = 5 * time.Minute

// NewEngine returns an engine for cfg. cfg.Rand is required.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.Rand == nil {
		return nil, errors.New("ike: Config.Rand is required")
	}
	if len(cfg.IKEProposals) == 0 {
		return nil, errors.New("ike: no IKE proposals configured")
	}
	cfg.setDefaults()
	cfg.LocalTS = slices.Clip(slices.Clone(cfg.LocalTS)) // the engine's own: CHILD SAs share it (sharedTS)
	e := &Engine{
		cfg:       cfg,
		sas:       make(map[uint64]*IKESA),
		initIndex: make(map[initKey]*IKESA), recentInits: make(map[initKey]time.Time),
		inSPIs: make(map[uint32]*IKESA), props: make(map[propKey]*Selected),
		unstoredIKE: make(map[uint64]bool), unstoredESP: make(map[uint32]bool),
		timers:    newTimerWheel(),
		perPrefix: make(map[netip.Prefix]prefixLoad),
		credit:    make(map[netip.Prefix]int32),
		cookies:   &Cookies{hold: cfg.HalfOpenTimeout},
	}
	e.publishPressure()
	e.stats.Failed = make(map[NotifyType]uint64)
	e.defaultPolicy.Name = "default"
	if len(e.cfg.Policies) > 0 && e.cfg.Selectors == nil {
		e.cfg.Selectors = NewSelectorRegistry()
	}
	return e, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() *Config { return &e.cfg }

// Stats returns a snapshot of the counters.
func (e *Engine) Stats() Stats {
	s := e.stats
	s.HalfOpen = e.halfOpen
	s.CookiesSent += e.cookies.sent.Load()
	s.HalfOpenBytes = e.halfOpenBytes
	s.Failed = make(map[NotifyType]uint64, len(e.stats.Failed))
	for k, v := range e.stats.Failed {
		s.Failed[k] = v
	}
	return s
}

// Len returns the number of IKE SAs in the table (any state).
func (e *Engine) Len() int { return len(e.sas) }

// SA returns the IKE SA with our SPI spi, or nil.
func (e *Engine) SA(spi uint64) *IKESA { return e.sas[spi] }

// Each calls f for every IKE SA until f returns false.
func (e *Engine) Each(f func(*IKESA) bool) {
	for _, sa := range e.sas {
		if !f(sa) {
			return
		}
	}
}

// Handle processes one received IKE message and appends what it causes
// to rd.
func (e *Engine) Handle(now time.Time, pkt Packet, rd *Ready) {
	e.begin(now)
	if len(pkt.Data) > e.cfg.MaxMessageSize {
		e.stats.Oversized++
		e.drop(rd, pkt, 0, 0, ErrTooLarge)
		return
	}
	h, err := DecodeHeader(pkt.Data)
	if err != nil {
		if NotifyFor(err) == INVALID_MAJOR_VERSION {
			e.invalidMajorVersion(pkt, h, rd)
		}
		e.drop(rd, pkt, h.SPIi, h.SPIr, err)
		return
	}
	if h.Flags&FlagInitiator != 0 {
		// From the original initiator: we are the responder.
		if h.SPIr == 0 {
			if h.Exchange == IKE_SESSION_RESUME && h.Flags&FlagResponse == 0 {
				e.handleResumeRequest(now, pkt, h, rd)
				return
			}
			if h.Exchange != IKE_SA_INIT || h.Flags&FlagResponse != 0 {
				e.drop(rd, pkt, h.SPIi, 0, ErrUnknownSA)
				return
			}
			e.handleInitRequest(now, pkt, h, rd)
			return
		}
		sa := e.sas[h.SPIr]
		if sa == nil || sa.initiator || sa.SPIi != h.SPIi {
			e.drop(rd, pkt, h.SPIi, h.SPIr, ErrUnknownSA)
			return
		}
		sa.handle(now, e, pkt, h, rd)
		return
	}
	sa := e.sas[h.SPIi]
	if sa == nil || !sa.initiator || (sa.SPIr != 0 && sa.SPIr != h.SPIr) {
		e.drop(rd, pkt, h.SPIi, h.SPIr, ErrUnknownSA)
		return
	}
	sa.handle(now, e, pkt, h, rd)
}

// invalidMajorVersion answers a request of a later major version with an
// unauthenticated INVALID_MAJOR_VERSION notify; our header carries the
// version we speak (RFC 7296 §2.5). Responses are never answered, and the
// answer is no larger than the request, so it cannot amplify a flood.
func (e *Engine) invalidMajorVersion(pkt Packet, h Header, rd *Ready) {
	if h.Flags&FlagResponse != 0 || h.SPIi == 0 {
		return
	}
	resp := Message{SPIi: h.SPIi, SPIr: h.SPIr, Exchange: h.Exchange, MessageID: h.MessageID,
		Flags:    FlagResponse,
		Payloads: []Payload{&Notify{NotifyType: INVALID_MAJOR_VERSION}}}
	if h.Flags&FlagInitiator == 0 {
		resp.Flags |= FlagInitiator // we are the original initiator of that SA
	}
	b := resp.Encode()
	if len(b) > len(pkt.Data) {
		return
	}
	e.stats.Failed[INVALID_MAJOR_VERSION]++
	rd.send(Send{Local: pkt.Local, Remote: pkt.Remote, Messages: [][]byte{b}})
}

// begin starts an engine step: one batch of work.
func (e *Engine) begin(now time.Time) {
	e.step++
	if now.After(e.now) {
		e.now = now
	}
}

func (e *Engine) drop(rd *Ready, pkt Packet, spii, spir uint64, err error) {
	e.stats.Dropped++
	rd.event(Event{Kind: EventDropped, SPIi: spii, SPIr: spir, Local: pkt.Local, Remote: pkt.Remote, Err: err})
}

// wall returns the wall date at the engine time now (Config.Wall).
func (e *Engine) wall(now time.Time) time.Time {
	if e.cfg.Wall == nil {
		return now
	}
	return e.cfg.Wall(now)
}

// wallOffset is the wall date minus the engine's (monotonic-derived) time,
// as it is now: it changes only when the system clock is stepped.
func (e *Engine) wallOffset() time.Duration {
	if e.cfg.Wall == nil || e.now.IsZero() {
		return 0
	}
	return e.cfg.Wall(e.now).Sub(e.now)
}

// WallTime converts t, an engine time (the now the engine is given), to
// the wall date, for display and for anything written outside the
// process. The zero time stays zero.
func (e *Engine) WallTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(e.wallOffset())
}

// engineTime converts a wall date of persisted state to engine time, at
// the offset of the step under way. The zero time stays zero.
func (e *Engine) engineTime(t time.Time, off time.Duration) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(-off)
}

// Tick runs the timers that are due and appends their work to rd.
func (e *Engine) Tick(now time.Time, rd *Ready) {
	e.begin(now)
	e.timers.advance(now, func(spi uint64, at time.Time) {
		sa := e.sas[spi]
		if sa == nil || sa.deadline != at.UnixNano() {
			return // stale entry
		}
		sa.deadline = 0
		sa.onTimer(now, e, rd)
	})
}

// NextDeadline returns when Tick next has work, or the zero time. It is
// the timer wheel's next tick while any timer is pending.
func (e *Engine) NextDeadline(now time.Time) time.Time {
	t, _ := e.timers.nextTick(now)
	return t
}

// schedule sets the SA's single timer to at (zero: none).
func (e *Engine) schedule(sa *IKESA, at time.Time) {
	if at.IsZero() {
		sa.deadline = 0
		return
	}
	n := at.UnixNano()
	if sa.deadline == n {
		return
	}
	sa.deadline = n
	e.timers.add(at, sa.localSPI())
}

func (e *Engine) read(b []byte) {
	if _, err := io.ReadFull(e.cfg.Rand, b); err != nil {
		panic("ike: randomness source failed: " + err.Error())
	}
}

func (e *Engine) randBytes(n int) []byte {
	b := make([]byte, n)
	e.read(b)
	return b
}

// newSPI returns an unused IKE SPI carrying the configured tag bits.
func (e *Engine) newSPI() uint64 {
	if e.cfg.IKESPIs != nil {
		for {
			spi, ok := e.cfg.IKESPIs()
			if !ok {
				e.stats.UnreservedSPIs++
				break
			}
			if spi != 0 && e.sas[spi] == nil {
				if e.cfg.ReturnIKESPI != nil {
					e.unstoredIKE[spi] = false
				}
				return spi
			}
		}
	}
	var b [8]byte
	for {
		e.read(b[:])
		spi := binary.BigEndian.Uint64(b[:])&^e.cfg.SPITagMask | e.cfg.SPITag&e.cfg.SPITagMask
		if spi != 0 && e.sas[spi] == nil {
			return spi
		}
	}
}

// newESPSPI returns an unused inbound ESP SPI (never below 256, RFC 4303).
func (e *Engine) newESPSPI(sa *IKESA) uint32 {
	if e.cfg.ESPSPIs != nil {
		for {
			spi, ok := e.cfg.ESPSPIs()
			if !ok {
				e.stats.UnreservedSPIs++
				break
			}
			if spi >= 256 && e.inSPIs[spi] == nil {
				e.inSPIs[spi] = sa
				if e.cfg.ReturnESPSPI != nil {
					e.unstoredESP[spi] = false
				}
				return spi
			}
		}
	}
	var b [4]byte
	for {
		e.read(b[:])
		spi := binary.BigEndian.Uint32(b[:])&^e.cfg.ESPSPITagMask | e.cfg.ESPSPITag&e.cfg.ESPSPITagMask
		if spi >= 256 && e.inSPIs[spi] == nil {
			e.inSPIs[spi] = sa
			return spi
		}
	}
}

// elsewhereRate: cached answers a second an engine sends to addresses
// other than their SAs' (and its burst). A gateway needs one for a NAT
// rebinding that fell between its request and our answer.
const elsewhereRate = 100

// answerElsewhere takes a token for a cached answer to another address
// than its SA's.
func (e *Engine) answerElsewhere(now time.Time) bool {
	b := &e.elsewhere
	if b.at.IsZero() {
		b.tokens = elsewhereRate
	} else if d := now.Sub(b.at); d > 0 {
		b.tokens = min(elsewhereRate, b.tokens+d.Seconds()*elsewhereRate)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// markSPIs sets the SA's SPIs still tracked as unstored to inFlight (a
// Persist naming them awaits its answer) or forgets them (settled: the
// store holds them, or may).
func (e *Engine) markSPIs(sa *IKESA, inFlight, settled bool) {
	if len(e.unstoredIKE) > 0 {
		mark(e.unstoredIKE, sa.localSPI(), inFlight, settled)
	}
	if len(e.unstoredESP) > 0 {
		for _, c := range sa.children {
			mark(e.unstoredESP, c.InSPI, inFlight, settled)
		}
	}
}

func mark[K comparable](m map[K]bool, k K, inFlight, settled bool) {
	if _, ok := m[k]; !ok {
		return
	}
	if settled {
		delete(m, k)
	} else {
		m[k] = inFlight
	}
}

// gone forgets k, tracked in m, and reports whether it is to be handed
// back: tracked and named by no Persist.
func gone[K comparable](m map[K]bool, k K) bool {
	inFlight, ok := m[k]
	delete(m, k)
	return ok && !inFlight
}

// ForgetReservations stops handing back the SPIs handed out so far: their
// reservations ended with the node's registration.
func (e *Engine) ForgetReservations() {
	clear(e.unstoredIKE)
	clear(e.unstoredESP)
}

// dropSPI forgets our IKE SPI spi, handing it back if reserved and named
// by no Persist.
func (e *Engine) dropSPI(spi uint64) {
	delete(e.sas, spi)
	if gone(e.unstoredIKE, spi) {
		e.stats.ReturnedSPIs++
		e.cfg.ReturnIKESPI(spi)
	}
}

// dropInSPI frees inbound ESP SPI spi, handing it back if reserved and
// named by no Persist.
func (e *Engine) dropInSPI(spi uint32) {
	delete(e.inSPIs, spi)
	if gone(e.unstoredESP, spi) {
		e.stats.ReturnedSPIs++
		e.cfg.ReturnESPSPI(spi)
	}
}

func (e *Engine) remove(sa *IKESA) {
	e.halfOpenDone(e.now, sa, false)
	e.dropSPI(sa.localSPI())
	if hs := sa.hs; hs != nil { // not yet established
		delete(e.initIndex, initKey{sa.SPIi, hs.initRemote})
		if hs.pendingInSPI != 0 {
			e.dropInSPI(hs.pendingInSPI)
		}
	}
	for _, c := range sa.children {
		e.dropInSPI(c.InSPI)
	}
	if sa.req != nil && sa.req.rekey != nil {
		if rk := sa.req.rekey; rk.inSPI != 0 && e.inSPIs[rk.inSPI] == sa {
			e.dropInSPI(rk.inSPI)
		}
		if rk := sa.req.rekey; rk.ike && e.sas[rk.newSPI] == sa {
			e.dropSPI(rk.newSPI)
		}
		sa.req.rekey.clear()
	}
	sa.dropFollowups(e, false)
	if pool := sa.pool(e); sa.vip.IsValid() && pool != nil && !sa.vipForeign {
		pool.Release(sa.vip)
	}
	if sa.selectorsHeld {
		e.cfg.Selectors.Release(sa.localSPI())
		sa.selectorsHeld = false
	}
	if sa.vip6.IsValid() && e.cfg.Pool6 != nil && !sa.vip6Foreign {
		e.cfg.Pool6.Release(sa.vip6)
	}
	sa.state = stateDead
}

// ---- cookies (RFC 7296 §2.6) ----

// forcedNATAddr is a random address, chosen once, whose hash stands in
// for ours in NAT_DETECTION_SOURCE_IP when ForceEncap claims a NAT.
func (e *Engine) forcedNATAddr() netip.AddrPort {
	if !e.natFake.IsValid() {
		var b [18]byte
		e.read(b[:])
		e.natFake = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[:16])), binary.BigEndian.Uint16(b[16:]))
	}
	return e.natFake
}
