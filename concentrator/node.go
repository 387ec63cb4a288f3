// Package concentrator runs a concentrator node: UDP socket loops, the IKE
// engine sharded across cores, the data plane, and the wiring between them.
//
// Files by concern: node.go (the Node, New, Run, options), sockets.go
// (socket loops and sends over a transport.Transport: UDP, or an in-memory
// network in tests), shard.go (engine shards), apply.go (an engine step's
// batch: persist, then data plane, then send), store.go (opening the state
// store), restore.go (restoring owned SAs, reclaim after a fence),
// spipool.go (SPIs reserved cluster-wide), convert.go (engine state <->
// records, data plane), health.go, inspect.go (logs, SA listings,
// counters), ops.go and events.go (operator actions and the SA event feed,
// for the admin API).
package concentrator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/bits"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/internal/ratelog"
	"github.com/ikefleet/ikefleet/statestore"
)

// Node is one concentrator node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	plog   *ratelog.Logger // per-packet events, rate-limited together (harden.go)
	dp     dataplane.DataPlane
	ecfg   ike.Config
	shards []*shard
	// resvMu: one refill of the SPI pools at a time, and none while the
	// reservations of an ended registration are dropped (spipool.go).
	resvMu sync.Mutex
	// cookieBacklog: ike.cookie_backlog (0: off).
	cookieBacklog int
	// Session resumption ticket keys (resumption.go); nil: disabled.
	tickets      *ike.TicketRing
	localTickets []statestore.TicketKey
	seed         maphash.Seed

	tr    transport.Transport
	clock clock.Clock
	// storeOverride replaces the configured state store (tests).
	storeOverride statestore.Interface
	// selectorWatchGate, if set, holds the start of watchSelectors until
	// closed (tests: a node that sees the others' claims late).
	selectorWatchGate chan struct{}
	// submitHook, when set, submits the engine's changes to st instead
	// of Submit (tests: it may answer for the store).
	submitHook func(st statestore.Interface, c statestore.Change, done func(error)) error
	// handOffHook, when set, writes hand-offs instead of the store's
	// HandOffMany (tests: a commit whose answer is lost).
	handOffHook func(context.Context, batchStore, []*statestore.SARecord, statestore.Owner) ([]statestore.Moved, error)

	mu       sync.Mutex
	conns    map[netip.AddrPort]transport.Conn // the socket of each bound address that replies leave by
	sockets  []transport.Conn                  // every socket bound, split ones too
	bulk     map[transport.Conn]bool           // split sockets receiving new IKE_SA_INITs without a cookie
	natt     map[netip.AddrPort]bool           // sockets on the NAT-T port
	ready    chan struct{}
	stopped  chan struct{} // closed when Run ends: do gives up (a store callback must not wait on a shard forever)
	stopOnce sync.Once
	ikeAddr  netip.AddrPort
	nattAddr netip.AddrPort

	nodeID          string
	runCtx          context.Context // Run's, for work handed to shards from other goroutines
	creds           *credCache      // auth.credential_store's copy (credstore.go)
	eap             *eapBackend     // auth.eap.radius; nil without EAP
	rev             *revocations    // auth.revocation: fetched CRLs and OCSP (revocation.go); nil when nothing is fetched
	espBits         int             // inbound ESP SPI bits naming the shard
	persist         *persistence
	persistFailures atomic.Uint64
	droppedBatches  atomic.Uint64 // batches not applied: a write failed
	fencedDrops     atomic.Uint64
	prioDrops       atomic.Uint64 // queue drops of IKE_AUTH and established SAs' messages
	initDrops       atomic.Uint64 // queue drops of new IKE_SA_INITs
	nonIKEDrops     atomic.Uint64
	headerDrops     atomic.Uint64 // IKE datagrams with malformed headers the socket loop dropped (in Stats.Dropped)
	keepalives      atomic.Uint64
	obs             observability
	peer            *peerAPI     // the peer API (peer.go); nil without cluster.peer_listen
	claims          claims       // SAs being claimed (claim.go)
	settle          settler      // Established writes of unknown outcome (settle.go)
	cluster         clusterStats // claims and hand-offs
	unique          uniqueStats  // unique identities (unique.go)
	ops             ops          // operator actions (ops.go)
	front           front        // the anycast front (anycast.go)
}

// Option changes how New builds a node.
type Option func(*Node)

// WithTransport binds the node's sockets on t instead of UDP: an
// in-memory transport.Network runs several nodes in one test process.
func WithTransport(t transport.Transport) Option { return func(n *Node) { n.tr = t } }

// WithClock gives the node a clock other than the system's (a
// clock.Fake in tests).
func WithClock(c clock.Clock) Option { return func(n *Node) { n.clock = c } }

// New builds a node from a validated configuration. It loads keys,
// certificates and PSKs; errors name the configuration field.
func New(cfg Config, log *slog.Logger, dp dataplane.DataPlane, opts ...Option) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ecfg, err := cfg.engineConfig()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: log, dp: dp, ecfg: ecfg, seed: maphash.MakeSeed(),
		tr: transport.UDP{}, clock: clock.Real(),
		conns: map[netip.AddrPort]transport.Conn{}, natt: map[netip.AddrPort]bool{}, bulk: map[transport.Conn]bool{}, ready: make(chan struct{}), stopped: make(chan struct{}),
		nodeID: nodeIDOf(cfg), creds: newCredCache()}
	n.settle.wake = make(chan struct{}, 1)
	for _, o := range opts {
		o(n)
	}
	n.resumptionSetup(&n.ecfg)
	n.withCredentialStore(&n.ecfg)
	_, n.ecfg.TrafficLiveness = n.dp.(dataplane.TrafficCounter)
	ecfg = n.ecfg
	n.initObservability()
	if n.eap, err = newEAPBackend(cfg, n.nodeID); err != nil {
		return nil, err
	}
	n.rev = n.wireRevocations(&cfg, n.ecfg.Verifier)
	if err := n.checkClusterKey(); err != nil {
		return nil, err
	}
	if err := cfg.checkSecretFiles(); err != nil {
		return nil, err
	}
	if cfg.Children.RestoreRekeyWindow != 0 {
		log.Warn("children.restore_rekey_window is deprecated and ignored: restored CHILD SAs keep their rekey schedule and continue above their sequence number reservations")
	}
	n.plog = ratelog.New(log, cfg.Log.PerEventRate, cfg.Log.PerEventRate)
	if su, ok := dp.(dataplane.SenderUser); ok {
		su.SetSender(n) // user-space ESP leaves through our NAT-T socket
	}
	ns := cfg.shards()
	espBits := bits.Len(uint(ns - 1))
	n.espBits = espBits
	n.cookieBacklog = defaultCookieBacklog
	if cfg.IKE.CookieBacklog != nil {
		n.cookieBacklog = *cfg.IKE.CookieBacklog
	}
	perShard := ecfg.CookieThreshold
	if perShard > 0 {
		perShard = (perShard + ns - 1) / ns
	}
	for i := 0; i < ns; i++ {
		sc := ecfg
		sc.Rand = rand.Reader
		// The engine's times are the clock's monotonic-derived ones; the
		// wall date is for certificates, tickets and persisted state.
		sc.Wall = func(t time.Time) time.Time { return t.Add(n.clock.Now().Sub(n.clock.Mono())) }
		sc.CookieThreshold = perShard
		shareAdmission(&sc, ns)
		sc.SPITagMask = spiShardMask
		sc.SPITag = uint64(i) << spiShardShift
		if espBits > 0 {
			sc.ESPSPITagMask = uint32((1<<espBits)-1) << (32 - espBits)
			sc.ESPSPITag = uint32(i) << (32 - espBits)
		}
		// The cookie-proven queue holds as many as the new one: in a mass
		// restart nearly every gateway comes back with its cookie at once,
		// and one dropped there waits out its retransmission back-off.
		sh := &shard{id: i, q: newShardQueue(shardQueueLen, initQueueLen, initQueueLen, spillPerShard(ns)), calls: make(chan func()),
			watch: map[uint32]time.Time{}, ikeSPIs: make(chan uint64, spiPoolLen), espSPIs: make(chan uint32, spiPoolLen),
			commits: commits{wake: make(chan struct{}, 1)}}
		sc.IKESPIs = func() (uint64, bool) {
			select {
			case spi := <-sh.ikeSPIs:
				return spi, true
			default:
				return 0, false
			}
		}
		sc.ESPSPIs = func() (uint32, bool) {
			select {
			case spi := <-sh.espSPIs:
				return spi, true
			default:
				return 0, false
			}
		}
		sc.ReturnIKESPI, sc.ReturnESPSPI = sh.giveBackIKE, sh.giveBackESP
		if cfg.StateStore.Mode == "none" {
			sc.IKESPIs, sc.ESPSPIs, sc.ReturnIKESPI, sc.ReturnESPSPI = nil, nil, nil, nil
		}
		eng, err := ike.NewEngine(sc)
		if err != nil {
			return nil, err
		}
		sh.eng = eng
		n.shards = append(n.shards, sh)
	}
	return n, nil
}

// Ready is closed once the sockets are bound.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// nodeIDOf is node.id, or the host name made fit for a registry key.
func nodeIDOf(cfg Config) string {
	if cfg.Node.ID != "" {
		return cfg.Node.ID
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "ikefleet"
	}
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return string(b)
}

// IKEAddr and NATTAddr return the first bound IKE and NAT-T socket
// addresses (useful with port 0).
func (n *Node) IKEAddr() netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ikeAddr
}

func (n *Node) NATTAddr() netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nattAddr
}

// Addrs returns the bound socket addresses.
func (n *Node) Addrs() []netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(n.conns))
	for a := range n.conns {
		out = append(out, a)
	}
	return out
}

// splitListener is a transport that binds split sockets
// (transport.UDP.ListenSplit).
type splitListener interface {
	ListenSplit(local netip.AddrPort, natt bool) (*transport.Split, error)
}

// listen binds the sockets of one IKE or NAT-T port and prepares them. On
// a UDP transport with ike.split_sockets two: first the one replies leave
// by, which receives established SAs' traffic, cookie-bearing requests
// and ESP; then the one new IKE_SA_INITs without a cookie arrive on.
// Otherwise one.
// The data plane may prepare each (UDP_ENCAP_ESPINUDP on the NAT-T port
// for kernel ESP, on both: ESP-in-UDP is decapsulated by the socket that
// receives it), and each gets ike.socket_buffer. On an error none stays
// bound.
func (n *Node) listen(local netip.AddrPort, natt bool) ([]transport.Conn, error) {
	var cs []transport.Conn
	if sl, ok := n.tr.(splitListener); ok && (n.cfg.IKE.SplitSockets == nil || *n.cfg.IKE.SplitSockets) {
		sp, err := sl.ListenSplit(local, natt)
		if err != nil {
			if !errors.Is(err, transport.ErrPortInUse) {
				err = fmt.Errorf("%w (ike.split_sockets: false binds one socket per port)", err)
			}
			return nil, err
		}
		cs = []transport.Conn{sp.Prio, sp.Bulk}
	} else {
		c, err := n.tr.Listen(local)
		if err != nil {
			return nil, err
		}
		cs = []transport.Conn{c}
	}
	closeAll := func() {
		for _, c := range cs {
			c.Close()
		}
	}
	for _, c := range cs {
		// (Sockets of other transports are not the kernel's.)
		udp, _ := c.(*transport.UDPConn)
		if sc, ok := n.dp.(socketConfigurer); ok {
			err := fmt.Errorf("needs UDP sockets, not %T", c)
			if udp != nil {
				err = sc.ConfigureSocket(udp.Socket(), natt)
			}
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("%s data plane: %w", n.dp.Name(), err)
			}
		}
		if udp != nil {
			if err := configureSocket(udp.Socket(), n.cfg.IKE.SocketBuffer); err != nil {
				closeAll()
				return nil, err
			}
		}
	}
	return cs, nil
}

// Run binds the sockets and serves until ctx is cancelled. Established SAs
// are not deleted on shutdown: a node that stops is not a peer that left.
func (n *Node) Run(ctx context.Context) error {
	stopHTTP, err := n.serveHTTP() // probes answer from the start
	if err != nil {
		return err
	}
	defer stopHTTP()
	var conns []transport.Conn
	for _, a := range n.cfg.IKE.Listen {
		addr := netip.MustParseAddr(a)
		for i, port := range []int{n.cfg.IKE.Port, n.cfg.IKE.NATTPort} {
			cs, err := n.listen(netip.AddrPortFrom(addr, uint16(port)), i == 1)
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return fmt.Errorf("listen %s port %d: %w", a, port, err)
			}
			conns = append(conns, cs...)
			local := cs[0].LocalAddr()
			n.mu.Lock()
			n.sockets = append(n.sockets, cs...)
			if len(cs) == 2 {
				n.bulk[cs[1]] = true
			}
			n.conns[local] = cs[0]
			n.natt[local] = i == 1
			if !n.ikeAddr.IsValid() && i == 0 {
				n.ikeAddr = local
			} else if !n.nattAddr.IsValid() && i == 1 {
				n.nattAddr = local
			}
			n.mu.Unlock()
		}
	}
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	// Callbacks from the state store's goroutines reach the shards through
	// this context, so none waits on a shard that has stopped.
	n.runCtx = ctx
	// The peer API's address goes into our registry entry: bind it first.
	if n.peer, err = n.listenPeer(); err != nil {
		closeAll()
		return err
	}
	if n.peer != nil {
		defer n.peer.close()
	}
	defer n.eap.close()
	defer n.rev.close()
	if n.cfg.StateStore.Mode != "none" {
		p, err := n.openStore(ctx)
		if err != nil {
			closeAll()
			if ctx.Err() != nil {
				n.log.Info("stopped while starting", "node", n.nodeID, "err", err)
				return nil // asked to stop (SIGTERM) before the store was up: not a failure
			}
			return err
		}
		if _, ok := p.store.(selectorWatcher); ok && n.ecfg.Selectors != nil {
			p.claims = newClaimBook() // before the shards and the watch use it
		}
		n.persist = p
		defer p.close()
		// Before the store closes (deferred calls run last first): a store
		// callback waiting for a shard that will never run (Run failed at
		// start, or has stopped) gives up, so Close does not wait forever.
		defer n.stopOnce.Do(func() { close(n.stopped) })
		if l, ok := p.store.(addressLeaser); ok {
			for _, cp := range clusterPools(&n.ecfg) {
				cp.useStore(l) // virtual IPs leased cluster-wide
				defer func() {
					uctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
					cp.unreserve(uctx)
					cancel()
				}()
			}
		}
		// Our slot goes into every IKE SPI we allocate from now on.
		me, slot := p.store.Registration()
		for i, s := range n.shards {
			s.eng.SetSPITag(uint64(slot)<<slotShift|uint64(i)<<spiShardShift, slotMask|spiShardMask)
		}
		n.log.Info("registered", "node", n.nodeID, "slot", slot, "epoch", me.Epoch, "statestore", n.cfg.StateStore.Mode)
		n.refillSPIs(ctx) // the first IKE_SA_INIT finds reserved SPIs
		n.refillAddresses(ctx)
		if n.cfg.Auth.CredentialStore {
			b, err := n.credentialBackend()
			if err == nil {
				err = n.loadCredentials(ctx, b)
			}
			if err != nil {
				closeAll()
				return fmt.Errorf("auth.credential_store: %w", err)
			}
		}
	}
	if err := n.restore(ctx); err != nil {
		closeAll()
		if ctx.Err() != nil {
			n.log.Info("stopped while starting", "node", n.nodeID, "err", err)
			return nil
		}
		return err
	}
	if n.tickets != nil {
		if err := n.syncTicketKeys(ctx); err != nil {
			n.log.Warn("no ticket keys yet: tickets are refused until they load", "err", err)
		}
	}
	n.log.Info("listening", "node", n.nodeID, "addrs", fmt.Sprint(n.Addrs()), "shards", len(n.shards),
		"dataplane", n.dp.Name(), "identity", n.ecfg.Local.ID.String())
	close(n.ready)

	var wg sync.WaitGroup
	for _, s := range n.shards {
		wg.Add(1)
		go func() { defer wg.Done(); n.runShard(ctx, s) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.watchStore(ctx) }()
	if n.tickets != nil {
		wg.Add(1)
		go func() { defer wg.Done(); n.runTicketKeys(ctx) }()
	}
	if b, err := n.credentialBackend(); err == nil {
		wg.Add(1)
		go func() { defer wg.Done(); n.followCredentials(ctx, b) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.flushSuppressed(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); n.fenceDataPlane(ctx) }()
	if n.persist != nil {
		wg.Add(3)
		go func() { defer wg.Done(); n.claimLoop(ctx) }()
		go func() { defer wg.Done(); n.watchOwners(ctx) }()
		go func() { defer wg.Done(); n.settleLoop(ctx) }() // settle.go
	}
	wg.Add(1)
	go func() { defer wg.Done(); n.runFront(ctx) }() // anycast.go
	if r, ok := n.dp.(dataplane.UnknownSPIReporter); ok && n.persist != nil {
		r.OnUnknownSPI(n.unknownESP) // ESP for SAs other nodes hold: claim them (claim.go)
	}
	if n.peer != nil {
		go n.peer.serve() // stopped by n.peer.close
		n.log.Info("peer API", "listen", n.peer.lis.Addr().String(), "advertise", n.peer.advertise, "tls", n.cfg.Cluster.TLS())
	}
	if n.persist != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := n.clock.NewTicker(spiRefillInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C():
					n.refillSPIs(ctx)
					n.refillAddresses(ctx)
				case <-n.addressesLow():
					n.refillAddresses(ctx)
				}
			}
		}()
	}
	if n.persist != nil {
		wg.Add(1)
		go func() { defer wg.Done(); n.rewrapLoop(ctx, n.persist) }()
		if n.ecfg.Selectors != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.watchSelectors(ctx) }()
		}
	}
	if mr, ok := n.dp.(dataplane.MappingReporter); ok {
		wg.Add(1)
		go func() { defer wg.Done(); n.watchMappings(ctx, mr) }()
	}
	if er, ok := n.dp.(dataplane.ExpiryReporter); ok {
		wg.Add(1)
		go func() { defer wg.Done(); n.expiries(ctx, er.Expiries()) }()
	}
	if sr, ok := n.dp.(dataplane.SeqReporter); ok {
		wg.Add(1)
		go func() { defer wg.Done(); n.seqProgress(ctx, sr.SeqProgress()) }()
	}
	var readers sync.WaitGroup
	for _, c := range conns {
		nr := 1 // another transport (an in-memory network): one reader
		// (Run is n.bulk's only writer: read here without n.mu.)
		if _, ok := c.(*transport.UDPConn); ok && (n.bulk[c] || !n.carriesESP(c)) {
			nr = socketReaders(n.cfg.IKE.SocketReaders, runtime.GOMAXPROCS(0))
		}
		for range nr {
			readers.Add(1)
			go func() { defer readers.Done(); n.readLoop(c) }()
		}
	}
	<-ctx.Done()
	for _, c := range conns {
		c.Close()
	}
	readers.Wait()
	wg.Wait()
	rs := n.ReceiveStats()
	attrs := []any{"node", n.nodeID, "queue_drops_new", rs.QueueDropsNew, "queue_drops_other", rs.QueueDropsOther}
	if n.persist != nil {
		h := n.persist.store.Health()
		attrs = append(attrs, "persisted_changes", h.Changes, "persist_batches", h.Batches)
	}
	n.log.Info("stopped", attrs...)
	return nil
}
