// Package loadtest drives a simulated fleet of IKEv2 gateways (our own
// initiator engine) against a concentrator or any IKEv2 responder.
//
// Each gateway has its own UDP sockets and source ports (it sits behind
// its own NAT mapping, see sockets.go); a run goes through phases —
// establish (ramp, closed loop or burst), hold (DPD, keepalives, churn,
// NAT rebindings, MOBIKE moves, ESP traffic), an optional rekey storm,
// drain and teardown — each bounded in time, and ends by itself. Every
// setup attempt ends exactly one way: established, failed (by reason) or
// timed out.
package loadtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// Options describe a load run. The zero value of a knob disables it.
type Options struct {
	Server     netip.AddrPort // responder IKE address (port 500)
	ServerNATT uint16         // responder NAT-T port; 0 = 4500
	Source     netip.Addr     // our address (all gateways), unless Sources is set
	// Sources spreads the gateways over the addresses of a prefix,
	// PerAddress gateways each (0: 64), e.g. 127.1.0.0/16 on loopback.
	Sources    netip.Prefix
	PerAddress int
	// SourcePort, when set, fixes the ports: gateway n binds
	// SourcePort + PortsPerGateway*(n-1) (+1 for NAT-T); 0 = ephemeral.
	SourcePort uint16
	// PortsPerGateway: 2 gives each gateway one socket for IKE and one for
	// NAT-T, as a NAT maps ports 500 and 4500 separately; 1 uses one socket
	// for both (half the file descriptors); 0 = 2 if the open file limit
	// (hard) allows, else 1.
	PortsPerGateway int
	// AltSource is the second address of each gateway for MOBIKE moves
	// (default: for a loopback source, the same address with the top bit
	// of the second octet flipped; otherwise the source itself).
	AltSource netip.Addr

	IDTemplate string // our identity; "{n}" is replaced by the gateway number (1-based)
	RemoteID   string // expected responder identity ("" = accept any)
	PSK        []byte // "{n}" is replaced by the gateway number (per-device keys)
	Signer     crypto.Signer
	Chain      [][]byte
	CA         *CA // issue each gateway its own certificate (instead of Signer/Chain)
	Verifier   *sig.Verifier

	IKEProposals []ike.ProposalSpec
	ESPProposals []ike.ProposalSpec
	LocalTS      []ike.TrafficSelector
	RemoteTS     []ike.TrafficSelector
	RequestVIP   bool

	Scenario string // a label for the report ("ramp", "burst", ...)
	Label    string // free text for the report (e.g. the responder's name)

	Count int // gateways
	// First is the number of the first gateway (default 1): several
	// processes share a fleet larger than one process's open file limit,
	// each with its own range of identities.
	First int
	// Ready, when set, is called once the gateways, their credentials
	// and sockets are prepared; the run's clock starts when it returns
	// (processes sharing a fleet start together). An error ends the run.
	Ready func(ctx context.Context) error
	Rate  float64 // new gateways per second; 0 = as fast as Window allows
	// Window bounds handshakes in flight (0 = unbounded: with Rate 0, all
	// gateways at once — a mass restart).
	Window      int
	Hold        time.Duration // keep the SAs this long once all are up
	Timeout     time.Duration // one setup (or rekey) attempt gives up after this long; 0 = 30 s
	MaxDuration time.Duration // the whole run ends by then, whatever remains; 0 = 10 min

	DPDDelay          time.Duration // gateways send liveness checks after this much silence
	KeepaliveInterval time.Duration // NAT-T keepalives (each gateway is behind a NAT)

	ChurnPerMin  float64 // % of the fleet that reconnects (delete + new setup) per minute of Hold
	RebindPerMin float64 // % of the fleet whose NAT mapping changes (new NAT-T source port) per minute of Hold
	MOBIKEPerMin float64 // % of the fleet moving to its other address with MOBIKE per minute of Hold

	RekeyStorm bool    // after Hold, every gateway rekeys its CHILD SA (IKE SA with RekeyIKE)
	RekeyRate  float64 // rekeys started per second in the storm; 0 = all at once
	RekeyIKE   bool

	// ESPRate: each established gateway sends this many ESP packets per
	// second during Hold (user-space ESP codec, UDP-encapsulated), of
	// ESPSize bytes of inner IPv4/UDP to ESPDest (default: the first
	// address of RemoteTS).
	ESPRate float64
	ESPSize int
	ESPDest netip.Addr

	// Targets: the responder is a cluster of nodes behind one address,
	// Server's (the anycast address), and the load generator is the ECMP
	// router in front of it (router.go): each flow goes to the target a
	// hash of its 5-tuple picks among those in service. The nodes listen
	// on Server's ports at their own addresses.
	Targets []netip.Addr
	// TargetHTTP: per target, the base URL of its /readyz (checked every
	// 100 ms: a failing target leaves the route) and /metrics (the SAs it
	// holds, scraped once a second). Empty: every target stays in service.
	TargetHTTP []string
	// Reconnect: a gateway whose established SA is lost (deleted by the
	// responder, no answer to liveness checks) sets up a new one, as a real
	// gateway would: a re-authentication, counted in the report.
	Reconnect bool
	// StartNATT: the gateways send IKE_SA_INIT to the NAT-T port already
	// (RFC 7296 §2.23 allows it), so all of a gateway's IKE and ESP
	// traffic is one UDP flow. Behind ECMP, a gateway that starts on port
	// 500 has two flows that may reach two nodes: the cluster then
	// forwards its IKE_AUTH to the node holding the half-open SA.
	StartNATT bool

	// NoDelete: at the end the gateways leave without deleting their SAs
	// (counted as deleted all the same).
	NoDelete bool

	Workers   int // engine shards (goroutines); 0 = GOMAXPROCS
	TargetPID int // measure this process's CPU and RSS (the responder)

	Progress      func(Progress) // called every ProgressEvery (0 = 1 s)
	ProgressEvery time.Duration
	Log           *slog.Logger
}

// ErrIncomplete is returned (with the report) when some attempt failed
// or timed out.
var ErrIncomplete = errors.New("not every gateway established its IKE SA")

func (o *Options) defaults() error {
	if o.Count <= 0 {
		o.Count = 1
	}
	if o.First <= 0 {
		o.First = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = 10 * time.Minute
	}
	if o.ServerNATT == 0 {
		o.ServerNATT = 4500
	}
	if o.PortsPerGateway == 0 {
		// Two sockets per gateway while the file descriptors allow it.
		o.PortsPerGateway = 2
		if lim := fileLimit(); lim > 0 && uint64(2*o.Count)+fdReserve > lim {
			o.PortsPerGateway = 1
		}
	}
	if o.PortsPerGateway != 1 && o.PortsPerGateway != 2 {
		return fmt.Errorf("PortsPerGateway %d: want 1 or 2", o.PortsPerGateway)
	}
	if o.PerAddress <= 0 {
		o.PerAddress = 64
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	o.Workers = min(o.Workers, o.Count)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ESPSize <= 0 {
		o.ESPSize = 64
	}
	if !o.Sources.IsValid() && !o.Source.IsValid() {
		o.Source = netip.IPv4Unspecified()
	}
	if o.Sources.IsValid() && !o.Sources.Addr().Is4() {
		return errors.New("loadtest: Sources: IPv4 only")
	}
	if o.Sources.IsValid() {
		if avail := uint64(1) << (32 - o.Sources.Bits()); uint64(o.First-1+o.Count) > avail*uint64(o.PerAddress) {
			return fmt.Errorf("loadtest: Sources %v: %d addresses × %d gateways each < %d gateways", o.Sources, avail, o.PerAddress, o.Count)
		}
	}
	if len(o.TargetHTTP) > 0 && len(o.TargetHTTP) != len(o.Targets) {
		return fmt.Errorf("loadtest: TargetHTTP: %d URLs for %d targets", len(o.TargetHTTP), len(o.Targets))
	}
	for _, t := range o.Targets {
		if t == o.Server.Addr() {
			return fmt.Errorf("loadtest: Targets: %v is the anycast address (Server) itself", t)
		}
	}
	if o.PSK == nil && o.Signer == nil && o.CA == nil {
		return errors.New("need a PSK, a key and certificate, or a CA to issue certificates")
	}
	if o.ESPRate > 0 && !o.ESPDest.IsValid() {
		if len(o.RemoteTS) == 0 {
			return errors.New("ESP traffic needs a destination")
		}
		o.ESPDest = o.RemoteTS[0].Start
	}
	return nil
}

// realAddr is where gateway n's sockets are bound (alt: its second address).
func (o *Options) realAddr(n int, alt bool) netip.Addr {
	a := o.Source
	if o.Sources.IsValid() {
		a = addAddr(o.Sources.Masked().Addr(), uint32((n-1)/o.PerAddress))
	}
	if !alt {
		return a
	}
	if o.AltSource.IsValid() {
		return o.AltSource
	}
	if a.Is4() && a.IsLoopback() {
		b := a.As4()
		b[1] ^= 0x80
		return netip.AddrFrom4(b)
	}
	return a
}

func addAddr(a netip.Addr, k uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += k
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (o *Options) params() Params {
	p := Params{Server: o.Server.String(), Count: o.Count, First: o.First, Rate: o.Rate, Window: o.Window, HoldS: o.Hold.Seconds(),
		TimeoutS: o.Timeout.Seconds(), MaxDurationS: o.MaxDuration.Seconds(), Workers: o.Workers,
		PortsPerGateway: o.PortsPerGateway, DPDS: o.DPDDelay.Seconds(), KeepaliveS: o.KeepaliveInterval.Seconds(),
		ChurnPerMin: o.ChurnPerMin, RebindPerMin: o.RebindPerMin, MOBIKEPerMin: o.MOBIKEPerMin,
		RekeyStorm: o.RekeyStorm, RekeyRate: o.RekeyRate, ESPRate: o.ESPRate}
	for _, t := range o.Targets {
		p.Targets = append(p.Targets, t.String())
	}
	switch {
	case o.PSK != nil:
		p.Auth = "psk"
	case o.CA != nil:
		p.Auth = "certificates (one per gateway)"
	default:
		p.Auth = "certificate"
	}
	if len(o.IKEProposals) > 0 {
		p.IKEProposal = o.IKEProposals[0].String()
	}
	return p
}

// runner is one run: the shards and what they share.
type runner struct {
	o        Options
	col      *collector
	shards   []*shard
	remoteID ike.Identity
	done     chan struct{} // closed when the run must end now (MaxDuration, ctx)
	router   *router       // nil: one responder

	hurry      atomic.Bool   // the caller ended the run: a short teardown
	setupDone  atomic.Int32  // shards whose establish phase is over
	setupEnded chan struct{} // closed by the last of them
}

// Run executes the load and returns its report. The error is
// ErrIncomplete when an attempt failed or timed out, the context's error
// when ctx ended the run early, or a setup error (then the report is
// empty).
func Run(ctx context.Context, o Options) (Report, error) {
	if err := o.defaults(); err != nil {
		return Report{}, err
	}
	r := &runner{o: o, done: make(chan struct{}), setupEnded: make(chan struct{})}
	if len(o.Targets) > 0 {
		r.router = newRouter(&o)
	}
	if o.RemoteID != "" {
		id, err := ike.ParseIdentity(o.RemoteID)
		if err != nil {
			return Report{}, fmt.Errorf("remote id: %w", err)
		}
		r.remoteID = id
	}
	fds := uint64(o.Count*o.PortsPerGateway) + fdReserve
	if o.MOBIKEPerMin > 0 {
		fds += uint64(o.Count * o.PortsPerGateway)
	}
	if err := raiseFileLimit(fds); err != nil {
		return Report{}, err
	}
	// Gateways, their credentials and sockets, before the clock starts.
	for i := range o.Workers {
		s, err := newShard(r, i)
		if err != nil {
			r.closeAll()
			return Report{}, err
		}
		r.shards = append(r.shards, s)
	}
	for n := o.First; n < o.First+o.Count; n++ {
		gw, err := r.newGateway(n)
		if err != nil {
			r.closeAll()
			return Report{}, err
		}
		s := r.shards[(n-1)%len(r.shards)]
		gw.sh = s
		s.gws = append(s.gws, gw)
	}
	for _, s := range r.shards {
		for _, gw := range s.gws {
			if err := s.openSockets(gw, false); err != nil {
				r.closeAll()
				return Report{}, fmt.Errorf("gateway %d: %w", gw.n, err)
			}
		}
	}
	ports := map[netip.AddrPort]bool{}
	for _, s := range r.shards {
		for _, sk := range s.socks {
			ports[sk.real] = true
		}
	}

	var target, self *procWatch
	if o.TargetPID > 0 {
		w, err := newProcWatch(o.TargetPID)
		if err != nil {
			r.closeAll()
			return Report{}, fmt.Errorf("target pid %d: %w", o.TargetPID, err)
		}
		target = w
	}
	if o.Ready != nil {
		if err := o.Ready(ctx); err != nil {
			r.closeAll()
			return Report{}, err
		}
	}
	self, _ = newProcWatch(0)

	start := time.Now()
	r.col = newCollector(start)
	runCtx, cancel := context.WithTimeout(ctx, o.MaxDuration)
	defer cancel()
	go func() {
		<-runCtx.Done()
		// Ended by the caller (not MaxDuration): delete, but do not wait long.
		r.hurry.Store(ctx.Err() != nil)
		close(r.done)
	}()

	routerCtx, stopRouter := context.WithCancel(ctx)
	defer stopRouter()
	if r.router != nil {
		r.router.start = start
		go r.router.run(routerCtx)
	}

	var wg sync.WaitGroup
	for _, s := range r.shards {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(start) }()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()

	// Once a second: the processes, the progress line.
	var targetAtSetup, selfAtSetup procStat
	every := o.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	tick := time.NewTicker(time.Second)
	lastProgress := start
	setupSeen := false
	setupEnded := r.setupEnded
loop:
	for {
		select {
		case <-finished:
			break loop
		case <-setupEnded:
			// The setup phase's CPU, read when it ends.
			setupEnded, setupSeen = nil, true
			if target != nil {
				targetAtSetup, _ = readProc(o.TargetPID)
			}
			selfAtSetup, _ = readProc(0)
		case now := <-tick.C:
			var ts, ss *procSample
			if target != nil {
				ts = target.sample()
			}
			if self != nil {
				ss = self.sample()
			}
			r.col.sample(now, ts, ss)
			r.router.sample()
			if o.Progress != nil && now.Sub(lastProgress) >= every-10*time.Millisecond {
				lastProgress = now
				p := r.col.progress(now)
				p.Phase = r.phase()
				o.Progress(p)
			}
		}
	}
	tick.Stop()
	stopRouter()
	end := time.Now()
	if target != nil {
		target.sample()
	}
	if self != nil {
		self.sample()
	}
	if !setupSeen {
		if target != nil {
			targetAtSetup, _ = readProc(o.TargetPID)
		}
		selfAtSetup, _ = readProc(0)
	}
	r.closeAll()

	rep := r.col.report(end)
	rep.Scenario, rep.Label, rep.Params = o.Scenario, o.Label, o.params()
	rep.SourcePorts = len(ports)
	rep.RouteEvents, rep.Nodes = r.router.report()
	for _, s := range r.shards {
		rep.Retransmits += s.in.retransmits()
	}
	setupCPU := func(w *procWatch, at procStat) ProcReport {
		pr := ProcReport{PID: w.pid, CPUSeconds: round3(w.cpuUsed().Seconds()), RSSMaxMiB: round1(float64(w.rssMax) / 1024)}
		used := at.cpu - w.first.cpu
		if wall := at.at.Sub(w.first.at); wall > 0 && at.cpu > 0 {
			pr.CPUMeanPct = round1(100 * float64(used) / float64(wall))
		}
		if used > 0 && rep.Established > 0 {
			pr.SetupsPerCPU = round1(float64(rep.Established) / used.Seconds())
		}
		return pr
	}
	if target != nil {
		t := setupCPU(target, targetAtSetup)
		rep.Target = &t
	}
	if self != nil {
		rep.Self = setupCPU(self, selfAtSetup)
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if !rep.Consistent {
		return rep, fmt.Errorf("inconsistent accounting: attempted %d != established %d + failed %d + timed out %d (in flight %d)",
			rep.Attempted, rep.Established, rep.Failed, rep.TimedOut, rep.InFlight)
	}
	if rep.Established < rep.Attempted {
		return rep, ErrIncomplete
	}
	return rep, nil
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

func (r *runner) phase() string {
	counts := map[phase]int{}
	for _, s := range r.shards {
		counts[phase(s.phaseNow.Load())]++
	}
	best := phaseDone
	for p := range counts {
		best = min(best, p)
	}
	return best.String()
}

func (r *runner) closeAll() {
	for _, s := range r.shards {
		s.closeSockets()
	}
}

func (r *runner) newGateway(n int) (*gateway, error) {
	o := &r.o
	ns := strconv.Itoa(n)
	idText := strings.ReplaceAll(o.IDTemplate, "{n}", ns)
	id, err := ike.ParseIdentity(idText)
	if err != nil {
		return nil, fmt.Errorf("id %q: %w", idText, err)
	}
	gw := &gateway{n: n, id: id, signer: o.Signer, chain: o.Chain}
	if o.PSK != nil {
		gw.psk = []byte(strings.ReplaceAll(string(o.PSK), "{n}", ns))
	}
	if o.CA != nil {
		key, der, err := o.CA.Issue(idText)
		if err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", idText, err)
		}
		gw.signer, gw.chain = key, [][]byte{der}
	}
	for i, alt := range []bool{false, true} {
		gw.virt[i] = virtAddr(n, alt)
		gw.real[i] = o.realAddr(n, alt)
	}
	return gw, nil
}

// gateway is one simulated device.
type gateway struct {
	n      int
	sh     *shard
	id     ike.Identity
	psk    []byte
	signer crypto.Signer
	chain  [][]byte
	virt   [2]netip.Addr // inside addresses (engine's view): primary, MOBIKE alternate
	real   [2]netip.Addr // bound addresses
	socks  [2][2]*gsock  // [address][0 IKE, 1 NAT-T] (the same socket twice with one port per gateway)
	addr   int           // the address in use
	cur    *saRec        // the current attempt or SA
	upIdx  int           // index in shard.up, -1 if not up
	// The flow moved to another node (Targets) at moveAt, in route event
	// moveEvent, away from target moveFrom; zero once the SA answered.
	moveAt    time.Time
	moveEvent int
	moveFrom  int
}

type saState uint8

const (
	saConnecting saState = iota + 1
	saUp
	saClosing // we asked for the delete
	saGone
)

// saRec is one setup attempt and, once established, its IKE SA.
type saRec struct {
	gw         *gateway
	spi        uint64
	started    time.Time
	tries      int // retries of the attempt (TEMPORARY_FAILURE)
	state      saState
	rekeyAt    time.Time // our rekey outstanding since
	rekeyIKE   bool
	child      *ike.ChildSA
	espEncoder *espSender
}

func newShardEngine(o *Options, s *shard) (*initiator, error) {
	return newInitiator(ike.Config{
		IKEProposals: o.IKEProposals, NATTPort: virtNATTPort, Rand: rand.Reader, ForceEncap: true,
		DPDDelay: o.DPDDelay, KeepaliveInterval: o.KeepaliveInterval, MOBIKE: o.MOBIKEPerMin > 0,
	}, s)
}
