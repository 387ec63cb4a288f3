package loadtest

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

type phase int32

const (
	phaseEstablish phase = iota
	phaseHold
	phaseRekey
	phaseDrain
	phaseTeardown
	phaseDone
)

func (p phase) String() string {
	return [...]string{"establish", "hold", "rekey", "drain", "teardown", "done"}[p]
}

// How long the deletes at the end may take without progress: normally, and
// when the caller cancelled the run.
const (
	teardownWaitNormal    = 5 * time.Second
	teardownWaitCancelled = time.Second
)

func (s *shard) teardownWait() time.Duration {
	if s.r.hurry.Load() {
		return teardownWaitCancelled
	}
	return teardownWaitNormal
}

// shard owns an engine and a subset of the gateways; one goroutine runs it.
type shard struct {
	r     *runner
	o     *Options
	id    int
	in    *initiator
	gws   []*gateway
	bySPI map[uint64]*saRec
	socks map[netip.AddrPort]*gsock // by inside address
	inbox chan inbound
	rng   *rand.Rand

	phase    phase
	phaseNow atomic.Int32
	phaseEnd time.Time

	next     int       // next gateway to start
	nextAt   time.Time // when (rated start)
	interval time.Duration
	window   int
	inFlight int
	pending  []timeoutEntry // setup attempts in start order
	rekeys   []timeoutEntry // our rekeys in start order
	rekeyOut int            // rekeys outstanding
	up       []*gateway

	churnEvery, rebindEvery, mobikeEvery, espEvery time.Duration
	churnAt, rebindAt, mobikeAt, espAt             time.Time
	rekeyQueue                                     []*gateway
	closeQueue                                     []*gateway
	rekeyEvery                                     time.Duration
	rekeyNext                                      time.Time
	espNext                                        int

	route     *routeSet  // the route last seen (Targets)
	reconnect []*gateway // lost SAs to set up again (Reconnect)
	retry     []retryEntry
	probes    []*gateway // liveness checks to send (route changes)
	probeNext time.Time

	scratch    []byte
	stop       chan struct{}
	initiating *saRec // the attempt inside initiate
}

type timeoutEntry struct {
	rec *saRec
	at  time.Time // deadline
	key time.Time // the attempt's (or rekey's) start, to tell a later one apart
}

func newShard(r *runner, id int) (*shard, error) {
	s := &shard{r: r, o: &r.o, id: id, bySPI: map[uint64]*saRec{}, socks: map[netip.AddrPort]*gsock{},
		inbox: make(chan inbound, 4096), rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id))),
		scratch: make([]byte, 0, 2048), stop: make(chan struct{})}
	in, err := newShardEngine(&r.o, s)
	if err != nil {
		return nil, err
	}
	s.in = in
	if r.router != nil {
		s.route = r.router.set.Load()
	}
	return s, nil
}

// openSockets binds gateway gw's sockets on its primary (or alternate)
// address and starts their readers.
func (s *shard) openSockets(gw *gateway, alt bool) error {
	ai := 0
	if alt {
		ai = 1
	}
	ports := s.o.PortsPerGateway
	for k := range ports {
		var port uint16
		if s.o.SourcePort != 0 && !alt {
			port = s.o.SourcePort + uint16(ports*(gw.n-1)+k)
		}
		c, err := openSocket(netip.AddrPortFrom(gw.real[ai], port))
		if err != nil {
			return err
		}
		la := c.LocalAddr().(*net.UDPAddr).AddrPort()
		sk := &gsock{conn: c, gw: gw, real: netip.AddrPortFrom(gw.real[ai], la.Port())}
		if ports == 1 {
			gw.socks[ai][0], gw.socks[ai][1] = sk, sk
			s.socks[netip.AddrPortFrom(gw.virt[ai], virtIKEPort)] = sk
			s.socks[netip.AddrPortFrom(gw.virt[ai], virtNATTPort)] = sk
		} else {
			sk.natt = k == 1
			vport := uint16(virtIKEPort)
			if sk.natt {
				vport = virtNATTPort
			}
			sk.virt = netip.AddrPortFrom(gw.virt[ai], vport)
			gw.socks[ai][k] = sk
			s.socks[sk.virt] = sk
		}
		go s.read(sk)
	}
	return nil
}

// read delivers one socket's datagrams to the shard until it is closed.
func (s *shard) read(sk *gsock) {
	buf := make([]byte, readBufSize)
	for {
		n, from, err := sk.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		in := inbound{s: sk, from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), data: append([]byte(nil), buf[:n]...)}
		select {
		case s.inbox <- in:
		case <-s.stop:
			return
		}
	}
}

func (s *shard) closeSockets() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	for _, gw := range s.gws {
		for _, pair := range gw.socks {
			for _, sk := range pair {
				if sk != nil {
					sk.conn.Close()
				}
			}
		}
	}
}

func (s *shard) setPhase(p phase, now time.Time) {
	s.phase = p
	s.phaseNow.Store(int32(p))
	o := s.o
	switch p {
	case phaseHold:
		if int(s.r.setupDone.Add(1)) == len(s.r.shards) {
			s.r.col.endSetup(now)
			close(s.r.setupEnded)
		}
		s.phaseEnd = now.Add(o.Hold)
		n := float64(len(s.gws))
		every := func(pct float64) time.Duration {
			if pct <= 0 || n == 0 {
				return 0
			}
			return time.Duration(float64(time.Minute) / (pct / 100 * n))
		}
		s.churnEvery, s.rebindEvery, s.mobikeEvery = every(o.ChurnPerMin), every(o.RebindPerMin), every(o.MOBIKEPerMin)
		s.churnAt, s.rebindAt, s.mobikeAt = now.Add(s.churnEvery), now.Add(s.rebindEvery), now.Add(s.mobikeEvery)
		if o.ESPRate > 0 && n > 0 {
			s.espEvery = time.Duration(float64(time.Second) / (o.ESPRate * n))
			s.espAt = now
		}
	case phaseRekey:
		s.rekeyQueue = append([]*gateway(nil), s.up...)
		s.rng.Shuffle(len(s.rekeyQueue), func(i, j int) { s.rekeyQueue[i], s.rekeyQueue[j] = s.rekeyQueue[j], s.rekeyQueue[i] })
		if o.RekeyRate > 0 {
			s.rekeyEvery = time.Duration(float64(time.Second) / (o.RekeyRate / float64(len(s.r.shards))))
		}
		s.rekeyNext = now
	case phaseDrain:
		s.phaseEnd = now.Add(o.Timeout)
	case phaseTeardown:
		s.phaseEnd = now.Add(s.teardownWait())
		s.closeQueue = s.closeQueue[:0]
		for _, gw := range s.gws {
			if o.NoDelete {
				break // the gateways vanish (power cut): the responder keeps their SAs
			}
			if rec := gw.cur; rec != nil && rec.state == saUp {
				s.closeQueue = append(s.closeQueue, gw)
			}
		}
	}
}

// run drives the shard through its phases until done.
func (s *shard) run(start time.Time) {
	o := s.o
	shards := len(s.r.shards)
	if o.Rate > 0 {
		s.interval = time.Duration(float64(time.Second) / (o.Rate / float64(shards)))
	}
	if o.Window > 0 {
		s.window = max(1, (o.Window+shards-1)/shards)
	}
	s.nextAt = start.Add(time.Duration(s.id) * s.interval / time.Duration(shards))
	s.setPhase(phaseEstablish, start)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	aborted := false
	for s.phase != phaseDone {
		now := time.Now()
		if !aborted {
			select {
			case <-s.r.done:
				aborted = true
				s.abort(now)
			default:
			}
		}
		s.step(now)
		if s.phase == phaseDone {
			break
		}
		wake := s.wake(now)
		d := max(0, time.Until(wake))
		timer.Reset(d)
		select {
		case in := <-s.inbox:
			s.receive(time.Now(), in)
			// Take what else is queued before looking at the clock again.
			for k := 0; k < 64; k++ {
				select {
				case in := <-s.inbox:
					s.receive(time.Now(), in)
					continue
				default:
				}
				break
			}
		case <-timer.C:
			s.in.tick(time.Now())
		case <-s.r.doneIfNotAborted(aborted):
		}
	}
	// Whatever is still open: left as it is (NoDelete), or no answer to
	// our delete in time.
	now := time.Now()
	for _, gw := range s.gws {
		if rec := gw.cur; rec != nil && (rec.state == saUp || rec.state == saClosing) {
			if rec.state == saUp && s.o.NoDelete {
				s.r.col.with(func(c *collector) { c.abandoned++ })
				continue
			}
			rec.state = saGone
			s.r.col.gone(now, true, "")
		}
		for _, pair := range gw.socks {
			for _, sk := range pair {
				if sk != nil && sk.confirm != moveNone {
					sk.confirm = moveNone
					s.r.col.with(func(c *collector) { c.moves.Unconfirmed++ })
				}
			}
		}
	}
}

// doneIfNotAborted is the run's end signal until the shard has seen it.
func (r *runner) doneIfNotAborted(aborted bool) <-chan struct{} {
	if aborted {
		return nil
	}
	return r.done
}

// abort ends the run now: attempts in flight time out, rekeys too, and the
// established SAs are deleted.
func (s *shard) abort(now time.Time) {
	for _, e := range s.pending {
		if e.rec.state == saConnecting && e.rec.started == e.key {
			s.timeoutAttempt(now, e.rec)
		}
	}
	s.pending = nil
	s.retries(now, true)
	s.next = len(s.gws)
	s.expireRekeys(now, true)
	if s.phase < phaseTeardown {
		s.setPhase(phaseTeardown, now)
	}
}

// step starts what is due and moves between phases.
func (s *shard) step(now time.Time) {
	o := s.o
	// Engine timers that are due, even while datagrams keep arriving.
	if d := s.in.nextDeadline(now); !d.IsZero() && !now.Before(d) {
		s.in.tick(now)
	}
	s.expireAttempts(now)
	s.expireRekeys(now, false)
	s.retries(now, false)
	if s.route != nil {
		if set := s.r.router.set.Load(); set != s.route {
			s.reroute(now, set)
		}
		s.probe(now)
	}
	for len(s.reconnect) > 0 {
		gw := s.reconnect[0]
		s.reconnect = s.reconnect[1:]
		if gw.cur != nil && gw.cur.state == saGone && s.phase <= phaseHold {
			s.r.col.with(func(c *collector) { c.reauth++ })
			s.start(now, gw)
		}
	}
	switch s.phase {
	case phaseEstablish:
		for s.next < len(s.gws) && (s.interval == 0 || !now.Before(s.nextAt)) && (s.window == 0 || s.inFlight < s.window) {
			s.start(now, s.gws[s.next])
			s.next++
			s.nextAt = s.nextAt.Add(s.interval)
		}
		if s.next == len(s.gws) && s.inFlight == 0 {
			s.setPhase(phaseHold, now)
		}
	case phaseHold:
		if !now.Before(s.phaseEnd) {
			if o.RekeyStorm {
				s.setPhase(phaseRekey, now)
			} else {
				s.setPhase(phaseDrain, now)
			}
			return
		}
		s.activities(now)
	case phaseRekey:
		for len(s.rekeyQueue) > 0 && !now.Before(s.rekeyNext) {
			gw := s.rekeyQueue[0]
			s.rekeyQueue = s.rekeyQueue[1:]
			s.startRekey(now, gw)
			s.rekeyNext = s.rekeyNext.Add(s.rekeyEvery)
		}
		if len(s.rekeyQueue) == 0 && s.rekeyOut == 0 {
			s.setPhase(phaseDrain, now)
		}
	case phaseDrain:
		if (s.inFlight == 0 && s.rekeyOut == 0) || !now.Before(s.phaseEnd) {
			s.setPhase(phaseTeardown, now)
		}
	case phaseTeardown:
		// Deletes go out paced like setups (a window of them in flight),
		// not as one burst that overflows the responder's socket buffer.
		closing := 0
		for _, gw := range s.gws {
			if gw.cur != nil && gw.cur.state == saClosing {
				closing++
			}
		}
		limit := max(s.window, 64)
		for len(s.closeQueue) > 0 && closing < limit {
			gw := s.closeQueue[0]
			s.closeQueue = s.closeQueue[1:]
			if rec := gw.cur; rec != nil && rec.state == saUp {
				rec.state = saClosing
				s.removeUp(gw)
				s.in.remove(now, rec.spi)
				closing++
				s.phaseEnd = now.Add(s.teardownWait()) // progress: wait on
			}
		}
		if (closing == 0 && len(s.closeQueue) == 0) || !now.Before(s.phaseEnd) {
			s.setPhase(phaseDone, now)
		}
	}
}

// wake is when step has something to do next.
func (s *shard) wake(now time.Time) time.Time {
	w := now.Add(100 * time.Millisecond)
	earlier := func(t time.Time) {
		if !t.IsZero() && t.Before(w) {
			w = t
		}
	}
	earlier(s.in.nextDeadline(now))
	if len(s.pending) > 0 {
		earlier(s.pending[0].at)
	}
	if len(s.rekeys) > 0 {
		earlier(s.rekeys[0].at)
	}
	if len(s.retry) > 0 {
		earlier(s.retry[0].at)
	}
	if len(s.probes) > 0 {
		earlier(s.probeNext)
	}
	switch s.phase {
	case phaseEstablish:
		if s.next < len(s.gws) && s.interval > 0 && (s.window == 0 || s.inFlight < s.window) {
			earlier(s.nextAt)
		}
	case phaseHold:
		earlier(s.phaseEnd)
		for _, t := range []struct {
			every time.Duration
			at    time.Time
		}{{s.churnEvery, s.churnAt}, {s.rebindEvery, s.rebindAt}, {s.mobikeEvery, s.mobikeAt}, {s.espEvery, s.espAt}} {
			if t.every > 0 {
				earlier(t.at)
			}
		}
	case phaseRekey:
		if len(s.rekeyQueue) > 0 {
			earlier(s.rekeyNext)
		}
	case phaseDrain, phaseTeardown:
		earlier(s.phaseEnd)
	}
	return w
}

// start begins a setup attempt of gw.
func (s *shard) start(now time.Time, gw *gateway) {
	ini := s.initiation(gw)
	s.r.col.attempt(now)
	s.inFlight++
	s.initiate(now, gw, ini, now, 0)
}

// initiation is what gateway gw proposes.
func (s *shard) initiation(gw *gateway) ike.Initiation {
	o := s.o
	ini := ike.Initiation{
		Local: netip.AddrPortFrom(gw.virt[gw.addr], virtIKEPort), Remote: o.Server,
		Creds:    ike.Credentials{ID: gw.id, Signer: gw.signer, Chain: gw.chain},
		RemoteID: s.r.remoteID, Verifier: o.Verifier, PSK: gw.psk,
		IKEProposals: o.IKEProposals, ESPProposals: o.ESPProposals,
		TSi: o.LocalTS, TSr: o.RemoteTS, RequestVIP: o.RequestVIP, RemoteNATT: o.ServerNATT,
	}
	if o.StartNATT {
		ini.Local = netip.AddrPortFrom(ini.Local.Addr(), virtNATTPort)
		ini.Remote = netip.AddrPortFrom(o.Server.Addr(), o.ServerNATT)
	}
	return ini
}

// initiate sends the IKE_SA_INIT of an attempt started at started (a
// retry keeps its attempt's start and deadline).
func (s *shard) initiate(now time.Time, gw *gateway, ini ike.Initiation, started time.Time, tries int) {
	o := s.o
	rec := &saRec{gw: gw, started: started, state: saConnecting, tries: tries}
	gw.cur = rec
	s.initiating = rec
	spi, err := s.in.initiate(now, ini)
	s.initiating = nil
	if err != nil {
		s.inFlight--
		rec.state = saGone
		s.r.col.failed(now, "initiate: "+err.Error())
		return
	}
	// The engine may have failed it already (synchronously): then the
	// failure came before we knew the SPI.
	if rec.state == saConnecting {
		rec.spi = spi
		s.bySPI[spi] = rec
		s.pending = append(s.pending, timeoutEntry{rec: rec, at: started.Add(o.Timeout), key: started})
	}
}

// Setups refused with TEMPORARY_FAILURE (a draining node) are tried again
// this much later, at most this often, within the attempt's timeout.
const (
	retryDelay = 500 * time.Millisecond
	maxRetries = 5
)

type retryEntry struct {
	gw      *gateway
	at      time.Time
	started time.Time
	tries   int
}

// retries starts the attempts due again, or ends them when the run is
// past its establish and hold phases.
func (s *shard) retries(now time.Time, all bool) {
	for len(s.retry) > 0 && (all || !now.Before(s.retry[0].at)) {
		e := s.retry[0]
		s.retry = s.retry[1:]
		if all || s.phase > phaseHold || now.Sub(e.started) >= s.o.Timeout {
			s.inFlight--
			s.r.col.failed(now, "TEMPORARY_FAILURE")
			continue
		}
		s.initiate(now, e.gw, s.initiation(e.gw), e.started, e.tries)
	}
}

func (s *shard) expireAttempts(now time.Time) {
	i := 0
	for ; i < len(s.pending) && !now.Before(s.pending[i].at); i++ {
		e := s.pending[i]
		if e.rec.state == saConnecting && e.rec.started == e.key {
			s.timeoutAttempt(now, e.rec)
		}
	}
	s.pending = s.pending[i:]
	// Drop entries whose attempt ended, so the queue stays short.
	for len(s.pending) > 0 && s.pending[0].rec.state != saConnecting {
		s.pending = s.pending[1:]
	}
}

func (s *shard) timeoutAttempt(now time.Time, rec *saRec) {
	rec.state = saGone
	s.inFlight--
	delete(s.bySPI, rec.spi)
	s.in.abandon(rec.spi)
	s.r.col.timedOut(now)
}

func (s *shard) addUp(gw *gateway) {
	gw.upIdx = len(s.up)
	s.up = append(s.up, gw)
}

func (s *shard) removeUp(gw *gateway) {
	i := gw.upIdx
	if i < 0 || i >= len(s.up) || s.up[i] != gw {
		return
	}
	last := s.up[len(s.up)-1]
	s.up[i], last.upIdx = last, i
	s.up = s.up[:len(s.up)-1]
	gw.upIdx = -1
}

// receive handles a datagram from a gateway socket.
func (s *shard) receive(now time.Time, in inbound) {
	sk := in.s
	if sk.stale {
		return // the NAT mapping is gone: a real NAT would drop it
	}
	if sk.confirm != moveNone {
		k := sk.confirm
		sk.confirm = moveNone
		s.r.col.with(func(c *collector) {
			if k == moveRebind {
				c.moves.RebindsConfirmed++
			} else {
				c.moves.MOBIKEConfirmed++
			}
		})
	}
	b := in.data
	gw := sk.gw
	from, target := s.r.router.fromTarget(in.from)
	in.from = from
	local := netip.AddrPortFrom(gw.virt[s.addrOf(sk)], virtIKEPort)
	if in.from.Port() == s.o.ServerNATT {
		local = netip.AddrPortFrom(local.Addr(), virtNATTPort)
		switch {
		case len(b) == 1 && b[0] == 0xff:
			return // keepalive
		case len(b) >= 4 && b[0]|b[1]|b[2]|b[3] == 0:
			b = b[4:]
		default:
			s.receiveESP(now, gw, b)
			return
		}
	}
	s.in.handle(now, ike.Packet{Local: local, Remote: in.from, Data: b})
	if !gw.moveAt.IsZero() && target >= 0 && target != gw.moveFrom && gw.cur != nil && gw.cur.state == saUp &&
		s.in.answeredAt(now, gw.cur.spi) {
		s.r.router.recovered(gw.moveEvent, now.Sub(gw.moveAt))
		gw.moveAt = time.Time{}
	}
}

// reroute takes a new route (Targets): the established gateways whose
// NAT-T flow now reaches another node check liveness at once, and the time
// until their SA answers from there is their outage.
func (s *shard) reroute(now time.Time, set *routeSet) {
	rt := s.r.router
	old := s.route
	s.route = set
	ev := rt.latestEvent()
	moved := 0
	for _, gw := range s.up {
		sk := gw.socks[gw.addr][1]
		if sk == nil || gw.cur == nil || gw.cur.state != saUp {
			continue
		}
		from, to := rt.pickIn(old.up, sk.real, s.o.ServerNATT), rt.pickIn(set.up, sk.real, s.o.ServerNATT)
		if from == to {
			continue
		}
		moved++
		gw.moveAt, gw.moveEvent, gw.moveFrom = now, ev, from
		s.probes = append(s.probes, gw)
	}
	rt.countMoved(ev, moved)
}

// probeRate bounds the liveness checks after a route change (all shards):
// a fleet that moves at once would otherwise claim all its SAs in the
// same instant, which no gateway fleet does. The wait counts in the
// outage.
const probeRate = 2000

// probe sends the liveness checks that are due.
func (s *shard) probe(now time.Time) {
	every := time.Duration(float64(time.Second) * float64(len(s.r.shards)) / probeRate)
	if s.probeNext.Before(now.Add(-every)) {
		s.probeNext = now
	}
	for len(s.probes) > 0 && !now.Before(s.probeNext) {
		gw := s.probes[0]
		s.probes = s.probes[1:]
		if !gw.moveAt.IsZero() && gw.cur != nil && gw.cur.state == saUp {
			s.in.checkLiveness(now, gw.cur.spi)
			s.probeNext = s.probeNext.Add(every)
		}
	}
}

func (s *shard) addrOf(sk *gsock) int {
	gw := sk.gw
	if gw.socks[1][0] == sk || gw.socks[1][1] == sk {
		return 1
	}
	return 0
}

// activities runs the hold phase's scheduled events.
func (s *shard) activities(now time.Time) {
	for s.churnEvery > 0 && !now.Before(s.churnAt) {
		s.churnAt = s.churnAt.Add(s.churnEvery)
		if gw := s.pickUp(); gw != nil {
			rec := gw.cur
			rec.state = saClosing
			s.removeUp(gw)
			s.in.remove(now, rec.spi)
			s.start(now, gw)
		}
	}
	for s.rebindEvery > 0 && !now.Before(s.rebindAt) {
		s.rebindAt = s.rebindAt.Add(s.rebindEvery)
		if gw := s.pickUp(); gw != nil {
			s.rebind(now, gw)
		}
	}
	for s.mobikeEvery > 0 && !now.Before(s.mobikeAt) {
		s.mobikeAt = s.mobikeAt.Add(s.mobikeEvery)
		if gw := s.pickUp(); gw != nil {
			s.mobike(now, gw)
		}
	}
	for s.espEvery > 0 && !now.Before(s.espAt) {
		s.espAt = s.espAt.Add(s.espEvery)
		if len(s.up) > 0 {
			s.espNext = (s.espNext + 1) % len(s.up)
			s.sendESP(now, s.up[s.espNext])
		}
	}
}

func (s *shard) pickUp() *gateway {
	if len(s.up) == 0 {
		return nil
	}
	return s.up[s.rng.IntN(len(s.up))]
}

// rebind gives gw a new NAT-T source port, as a NAT does when its mapping
// expires: the old socket goes, the engine does not notice, the responder
// learns the new port from the next authenticated message.
func (s *shard) rebind(now time.Time, gw *gateway) {
	ai := gw.addr
	old := gw.socks[ai][1]
	c, err := openSocket(netip.AddrPortFrom(gw.real[ai], 0))
	if err != nil {
		s.o.Log.Warn("rebind: new socket", "gateway", gw.n, "err", err)
		s.r.col.with(func(c *collector) { c.moves.Skipped++ })
		return
	}
	la := c.LocalAddr().(*net.UDPAddr).AddrPort()
	sk := &gsock{conn: c, gw: gw, virt: old.virt, real: netip.AddrPortFrom(gw.real[ai], la.Port()), natt: old.natt, confirm: moveRebind}
	if old.confirm != moveNone {
		s.r.col.with(func(c *collector) { c.moves.Unconfirmed++ }) // rebound again before the first was seen
	}
	old.stale = true
	old.conn.Close()
	gw.socks[ai][1] = sk
	if gw.socks[ai][0] == old {
		gw.socks[ai][0] = sk
		s.socks[netip.AddrPortFrom(gw.virt[ai], virtIKEPort)] = sk
		s.socks[netip.AddrPortFrom(gw.virt[ai], virtNATTPort)] = sk
	} else {
		s.socks[sk.virt] = sk
	}
	go s.read(sk)
	s.r.col.with(func(c *collector) { c.moves.Rebinds++ })
}

// mobike moves gw's SA to its other address (RFC 4555 UPDATE_SA_ADDRESSES).
func (s *shard) mobike(now time.Time, gw *gateway) {
	to := 1 - gw.addr
	if gw.socks[to][0] == nil {
		if err := s.openSockets(gw, to == 1); err != nil {
			s.o.Log.Warn("mobike: sockets", "gateway", gw.n, "err", err)
			s.r.col.with(func(c *collector) { c.moves.Skipped++ })
			return
		}
	}
	if !s.in.updateAddresses(now, gw.cur.spi, netip.AddrPortFrom(gw.virt[to], virtNATTPort)) {
		s.r.col.with(func(c *collector) { c.moves.Skipped++ })
		return
	}
	gw.addr = to
	gw.socks[to][1].confirm = moveMOBIKE
	s.r.col.with(func(c *collector) { c.moves.MOBIKE++ })
}

func (s *shard) startRekey(now time.Time, gw *gateway) {
	rec := gw.cur
	if rec == nil || rec.state != saUp || !rec.rekeyAt.IsZero() {
		return
	}
	var ok bool
	if s.o.RekeyIKE {
		ok = s.in.rekeyIKE(now, rec.spi)
	} else {
		ok = s.in.rekeyChild(now, rec.spi)
	}
	if !ok {
		s.r.col.with(func(c *collector) { c.moves.Skipped++ })
		return
	}
	rec.rekeyAt, rec.rekeyIKE = now, s.o.RekeyIKE
	s.rekeyOut++
	s.rekeys = append(s.rekeys, timeoutEntry{rec: rec, at: now.Add(s.o.Timeout), key: now})
	s.r.col.with(func(c *collector) { c.rekey.Attempted++ })
}

func (s *shard) expireRekeys(now time.Time, all bool) {
	i := 0
	for ; i < len(s.rekeys) && (all || !now.Before(s.rekeys[i].at)); i++ {
		e := s.rekeys[i]
		if e.rec.rekeyAt.Equal(e.key) {
			e.rec.rekeyAt = time.Time{}
			s.rekeyOut--
			s.r.col.with(func(c *collector) { c.rekey.TimedOut++ })
		}
	}
	s.rekeys = s.rekeys[i:]
}

// rekeyEnded settles our outstanding rekey of rec, if any.
func (s *shard) rekeyEnded(now time.Time, rec *saRec, ok bool, reason string) {
	if rec.rekeyAt.IsZero() {
		return
	}
	lat := now.Sub(rec.rekeyAt)
	rec.rekeyAt = time.Time{}
	s.rekeyOut--
	if ok {
		s.r.col.rekeyed(now, rec.rekeyIKE, lat)
		return
	}
	s.r.col.with(func(c *collector) {
		c.rekey.Failed++
		c.rekey.Failures[reason]++
	})
}

// ---- sink: what the engine reports ----

func (s *shard) send(local, remote netip.AddrPort, msgs [][]byte) {
	sk := s.socks[local]
	if sk == nil {
		s.o.Log.Warn("no socket for", "local", local)
		return
	}
	for _, m := range msgs {
		b := m
		if local.Port() == virtNATTPort {
			s.scratch = append(append(s.scratch[:0], 0, 0, 0, 0), m...)
			b = s.scratch
		}
		to, ok := s.r.router.wire(sk.real, remote)
		if !ok {
			continue // no node in service: no route
		}
		if _, err := sk.conn.WriteToUDPAddrPort(b, to); err != nil {
			s.o.Log.Warn("send failed", "gateway", sk.gw.n, "err", err)
		}
	}
}

func (s *shard) keepalive(local, remote netip.AddrPort) {
	if sk := s.socks[local]; sk != nil {
		to, ok := s.r.router.wire(sk.real, remote)
		if !ok {
			return
		}
		if _, err := sk.conn.WriteToUDPAddrPort([]byte{0xff}, to); err == nil {
			s.r.col.with(func(c *collector) { c.keepalives++ })
		}
	}
}

func (s *shard) established(now time.Time, spi uint64, proposal string) {
	rec := s.bySPI[spi]
	if rec == nil || rec.state != saConnecting {
		return
	}
	rec.state = saUp
	s.inFlight--
	s.addUp(rec.gw)
	s.r.col.established(now, now.Sub(rec.started), proposal)
	s.o.Log.Info("IKE_SA established", "gateway", rec.gw.n, "spi_i", spiHex(spi), "proposal", proposal)
}

func (s *shard) failed(now time.Time, spi uint64, reason string) {
	rec := s.bySPI[spi]
	if rec == nil {
		rec = s.initiating // failed inside Initiate, before we knew the SPI
		if rec == nil {
			return
		}
	}
	delete(s.bySPI, spi)
	if rec.state != saConnecting {
		return
	}
	rec.state = saGone
	if s.o.Reconnect && reason == ike.TEMPORARY_FAILURE.String() && rec.tries < maxRetries && s.phase <= phaseHold {
		// Refused for now (a draining node): try again shortly, as a
		// gateway does; the attempt goes on.
		s.retry = append(s.retry, retryEntry{gw: rec.gw, at: now.Add(retryDelay), started: rec.started, tries: rec.tries + 1})
		s.r.col.with(func(c *collector) { c.retried[reason]++ })
		return
	}
	s.inFlight--
	s.r.col.failed(now, reason)
	s.o.Log.Warn("IKE_SA failed", "gateway", rec.gw.n, "spi_i", spiHex(spi), "reason", reason)
}

func (s *shard) deleted(now time.Time, spi uint64, reason string) {
	rec := s.bySPI[spi]
	if rec == nil {
		return
	}
	delete(s.bySPI, spi)
	switch rec.state {
	case saUp, saClosing:
		byUs := rec.state == saClosing
		rec.state = saGone
		if !rec.rekeyAt.IsZero() {
			s.rekeyEnded(now, rec, false, "IKE SA deleted: "+reason)
		}
		if rec.gw.cur == rec {
			s.removeUp(rec.gw)
		}
		s.r.col.gone(now, byUs, reason)
		if !byUs {
			s.o.Log.Warn("IKE_SA lost", "gateway", rec.gw.n, "spi_i", spiHex(spi), "reason", reason)
			if s.o.Reconnect && rec.gw.cur == rec {
				s.reconnect = append(s.reconnect, rec.gw) // set up again from step, outside the engine's callback
			}
		}
	case saConnecting:
		// Deleted before it was up (e.g. the peer deleted it at once).
		rec.state = saGone
		s.inFlight--
		s.r.col.failed(now, "deleted: "+reason)
	}
}

func (s *shard) childInstalled(now time.Time, spi uint64, c *ike.ChildSA) {
	s.r.col.child()
	if rec := s.bySPI[spi]; rec != nil {
		rec.child = c
		rec.espEncoder = nil
	}
}

func (s *shard) childRekeyed(now time.Time, spi uint64, byUs bool) {
	rec := s.bySPI[spi]
	if rec == nil {
		return
	}
	if byUs && !rec.rekeyAt.IsZero() && !rec.rekeyIKE {
		s.rekeyEnded(now, rec, true, "")
		return
	}
	if !byUs {
		s.r.col.rekeyed(now, false, -1)
	}
}

func (s *shard) childFailed(now time.Time, spi uint64, reason string) {
	rec := s.bySPI[spi]
	if rec == nil {
		return
	}
	if !rec.rekeyAt.IsZero() {
		s.rekeyEnded(now, rec, false, reason)
		return
	}
	if rec.child == nil {
		// The IKE SA came up without its CHILD SA.
		s.r.col.with(func(c *collector) { c.childFailures[reason]++ })
		s.o.Log.Warn("CHILD_SA failed", "gateway", rec.gw.n, "spi_i", spiHex(spi), "reason", reason)
	}
}

func (s *shard) ikeRekeyed(now time.Time, oldSPI, newSPI uint64) {
	rec := s.bySPI[oldSPI]
	if rec == nil {
		return
	}
	delete(s.bySPI, oldSPI)
	rec.spi = newSPI
	s.bySPI[newSPI] = rec
	if !rec.rekeyAt.IsZero() && rec.rekeyIKE {
		s.rekeyEnded(now, rec, true, "")
		return
	}
	s.r.col.rekeyed(now, true, -1)
}

func (s *shard) addressChanged(now time.Time, spi uint64) {}

func spiHex(spi uint64) string {
	const hex = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = hex[spi&0xf]
		spi >>= 4
	}
	return string(b[:])
}
