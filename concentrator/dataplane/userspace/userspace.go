// Package userspace is a data plane that carries ESP in user space, for
// hosts whose kernel has no ESP (and for the load-test gateways): inner
// packets come and go through a TUN device, ESP-in-UDP through the node's
// NAT-T socket.
//
//	outbound: TUN read → SA by destination (selector match) → worker(SA):
//	          esp.Outbound.Seal → node's NAT-T socket → peer
//	inbound:  node's NAT-T socket → HandleESP → SA by SPI → worker(SA):
//	          esp.Inbound.Open (replay window) → selector check → TUN write
//
// Each SA is pinned to one worker by a hash of its inbound SPI, so its
// sequence numbers and replay window are touched by one goroutine only.
//
// Sequence numbers (dataplane.ChildSA OutSeq, OutSeqLimit, OutSeqMargin,
// InSeqLow): an SA starts sending at OutSeq+1 and never sends above its
// limit: such packets are dropped and counted as "seq_reservation" until
// SetSeqLimit raises it. Its replay window starts at InSeqLow with every
// bit set. Progress (dataplane.SeqProgress) is reported by the SA's worker
// as the packets pass, by the rule documented there; a report that finds
// the channel full is tried again at the SA's next packet.
// Queues are bounded; a full queue drops the packet and counts it. Routes
// for the remote traffic selectors (and virtual IPs) point at the TUN
// device and are reference-counted, so a CHILD rekey (new SA installed
// before the old is removed) keeps them.
package userspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/esp"
	"github.com/ikefleet/ikefleet/internal/evlog"
	"github.com/ikefleet/ikefleet/internal/hexid"
)

// Defaults and limits.
const (
	DefaultTUNName  = "ikf0"
	DefaultMTU      = 1400 // as strongSwan's kernel-libipsec: leaves room for ESP-in-UDP in 1500
	DefaultQueueLen = 1024 // packets per worker queue
	maxInner        = 9000 // largest inner packet carried (jumbo); bigger ESP is dropped
)

// Device is the inner side: a TUN device, or a test double. Read returns
// one IP packet; Write takes one.
type Device interface {
	Name() string
	Read(b []byte) (int, error)
	Write(b []byte) (int, error)
	Close() error
}

// Router points routes for remote selectors at the device. AddRoute and
// DelRoute are idempotent. localTS lets the router pick a source address
// the peer's selectors accept for locally generated traffic.
type Router interface {
	AddRoute(dst netip.Prefix, localTS []dataplane.Selector) error
	DelRoute(dst netip.Prefix) error
}

// Config configures the user-space data plane.
type Config struct {
	TUNName      string // DefaultTUNName if empty
	MTU          int    // DefaultMTU if 0
	Workers      int    // 0: GOMAXPROCS
	QueueLen     int    // DefaultQueueLen if 0
	ReplayWindow int    // esp.DefaultReplayWindow if 0
	Log          *slog.Logger

	// Buffer sizes of the node's NAT-T socket in bytes; 0 keeps the
	// system default (see ConfigureSocket).
	SocketRecvBuffer, SocketSendBuffer int

	// Routes are routed into the TUN device for the data plane's life (the
	// virtual IP pool), with a source hint from RoutesLocalTS: a CHILD SA
	// whose remote selectors lie inside one of them adds and removes no
	// route of its own, so a fleet of virtual IPs costs one route, not one
	// netlink round trip per SA.
	Routes        []netip.Prefix
	RoutesLocalTS []dataplane.Selector

	// Device and Router replace the TUN device and netlink routes (tests).
	Device Device
	Router Router
}

// DropReason names why a packet was dropped; a fixed label set.
type DropReason int

const (
	DropNoSA           DropReason = iota // no SA for the SPI or destination
	DropQueueFull                        // the SA's worker queue was full
	DropMalformed                        // bad ESP or inner packet
	DropReplay                           // outside the window or seen before
	DropIntegrity                        // ICV / AEAD tag check failed
	DropSelector                         // inner addresses outside the SA's traffic selectors
	DropDummy                            // TFC dummy packet (next header 59)
	DropOversize                         // larger than the buffers
	DropSeqOverflow                      // outbound sequence numbers exhausted
	DropSendError                        // UDP send failed, or no sender yet
	DropTUNWrite                         // writing to the TUN device failed
	DropLinkLocal                        // multicast or link-local traffic the host sent to the TUN link (IPv6 RS, MLD)
	DropSeqReservation                   // the next sequence number is above the SA's limit (OutSeqLimit)
	DropFenced                           // outbound while the node is fenced (SetFenced)
	numDropReasons
)

var dropNames = [numDropReasons]string{"no_sa", "queue_full", "malformed", "replay", "integrity", "selector",
	"dummy", "oversize", "seq_overflow", "send_error", "tun_write", "link_local", "seq_reservation", "fenced"}

func (r DropReason) String() string { return dropNames[r] }

// Stats are data-plane-wide counters.
type Stats struct {
	Drops map[string]uint64 // by DropReason.String()
	SAs   int
	// SeqProgressDeferred counts progress reports that found the
	// SeqProgress channel full (each is tried again at a later packet).
	SeqProgressDeferred uint64
	// Mappings counts NAT mapping changes reported (OnMapping).
	Mappings uint64
}

// sa is one installed CHILD SA.
type sa struct {
	// What List reports besides the live numbers; under DataPlane.mu.
	// The key bytes are not kept: in and out hold them (until their first
	// packet) or their keyed ciphers.
	desc saDesc

	localTS, remoteTS []dataplane.Selector // immutable: workers read them without the lock
	esn               bool                 // immutable
	encap             bool                 // immutable: UDP-encapsulated (NAT-T)
	outReported       bool                 // the worker's: the outbound report of armSeen was sent
	in                esp.Inbound
	out               esp.Outbound
	worker            int
	order             uint64                    // install order: newest wins outbound
	ep                atomic.Pointer[endpoints] // outer addresses; moved by UpdateAddresses
	// What an SA starts with, held in place so that an installed SA is one
	// object for the collector to mark, not six: ep and arm point here
	// until UpdateAddresses or SetSeqLimit replace them (with new objects:
	// workers read them without the lock), remoteTS into remote1 when
	// one selector covers the peer (a gateway's virtual IP).
	ep0     endpoints
	arm0    seqArm
	remote1 [1]dataplane.Selector

	inBytes, inPackets, outBytes, outPackets atomic.Uint64
	softSent, hardSent                       atomic.Bool // expiry reported
	mappedAt                                 int64       // worker's: UnixNano of the last mapping report

	// Sequence numbers. arm is replaced by SetSeqLimit and read by the
	// worker; outSeq and inSeq mirror the worker's numbers for readers
	// outside it. The rest belongs to the worker.
	arm           atomic.Pointer[seqArm]
	outSeq, inSeq atomic.Uint64
	base          atomic.Uint64 // outbound number of the last outbound report (OutSeq first)
	armSeen       *seqArm
	inBase        uint64 // inbound number at the last inbound report (or InSeqLow)
}

// sharedLocal returns the local selectors an SA keeps: the slice of the SA
// installed before it when they are the same (memory per SA), a copy of
// ts otherwise.
func (d *DataPlane) sharedLocal(ts []dataplane.Selector) []dataplane.Selector {
	d.localMu.Lock()
	defer d.localMu.Unlock()
	if !slices.Equal(ts, d.local) {
		d.local = slices.Clip(slices.Clone(ts))
	}
	return d.local
}

// saDesc is an installed SA as negotiated, without its keys and selectors.
type saDesc struct {
	outSPI                       uint32
	encrID, encrKeyBits, integID uint16
	outSeqLimit, outSeqMargin    uint64
	ikeSPIi, ikeSPIr             uint64
	peerID                       string
	virtualIP                    netip.Addr
	created                      int64 // UnixNano; 0: not known
}

// seqArm is an SA's current limit and when to report progress
// (dataplane.SeqMargin): at outbound number threshold (0: never) and each
// step inbound numbers (0: never).
type seqArm struct {
	limit, threshold, step uint64
}

func newArm(margin, base, limit uint64) *seqArm {
	a := armFor(margin, base, limit)
	return &a
}

func armFor(margin, base, limit uint64) seqArm {
	eff, thr := dataplane.SeqMargin(margin, base, limit)
	return seqArm{limit: limit, threshold: thr, step: 2 * eff}
}

// Outbound sequence numbers of a non-ESN SA: past softSeqLimit the SA is
// reported for rekeying (dataplane.Expiry), at the end of the 32-bit space
// as unusable.
const softSeqLimit = 1<<32 - 1<<24

type endpoints struct{ local, remote netip.AddrPort }

type job struct {
	sa       *sa
	buf      *[]byte
	off, n   int
	outbound bool
	from     netip.AddrPort // inbound: the outer source
}

// DataPlane is the user-space data plane.
type DataPlane struct {
	cfg     Config
	log     *slog.Logger
	dev     Device
	router  Router
	sender  atomic.Pointer[senderBox]
	pool    sync.Pool
	bufSize int
	workers []chan job
	drops   [numDropReasons]atomic.Uint64
	fenced  atomic.Bool                             // SetFenced
	unknown atomic.Pointer[func(uint32)]            // OnUnknownSPI
	mapping atomic.Pointer[func(dataplane.Mapping)] // OnMapping
	parked  espParking                              // ESP for SPIs being claimed (park.go)
	// gone: the counters of SAs removed, so that Report's totals never
	// go down.
	gone dataplane.Counters
	// local: the local selectors of the SA installed last, which the SAs
	// with the same ones share (most have the same: 0.0.0.0/0, or the
	// node's subnets). Never written; its capacity is its length.
	localMu sync.Mutex
	local   []dataplane.Selector

	mu     sync.RWMutex
	bySPI  map[uint32]*sa
	out    outIndex             // outbound: SA by destination
	routes map[netip.Prefix]int // reference counts
	order  uint64
	closed bool

	done     chan struct{}
	wg       sync.WaitGroup
	expiries chan dataplane.Expiry
	progress chan dataplane.SeqProgress
	deferred atomic.Uint64 // progress reports that found the channel full
	mappings atomic.Uint64 // NAT mapping changes reported
}

// SeqProgress reports CHILD SAs' sequence numbers (dataplane.SeqReporter)
// by the rule of dataplane.SeqProgress.
func (d *DataPlane) SeqProgress() <-chan dataplane.SeqProgress { return d.progress }

// report sends s's numbers on the progress channel without blocking; it
// runs on s's worker.
func (d *DataPlane) report(s *sa) bool {
	select {
	case d.progress <- dataplane.SeqProgress{InSPI: s.in.SPI(), OutSeq: s.out.Seq(), InSeq: s.in.Seq()}:
		return true
	default:
		d.deferred.Add(1)
		return false
	}
}

// SetSeqLimit raises (or lowers) the highest outbound sequence number of
// an SA and re-arms its progress report (dataplane.SeqLimiter). Packets
// refused at the old limit are gone; the next one uses the next number.
func (d *DataPlane) SetSeqLimit(_ context.Context, inSPI uint32, limit uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	s, ok := d.bySPI[inSPI]
	if !ok {
		return fmt.Errorf("userspace: no SA with inbound SPI %08x", inSPI)
	}
	if !s.esn && limit > 0xffffffff {
		limit = 0xffffffff // the 32-bit space ends first
	}
	s.arm.Store(newArm(s.desc.outSeqMargin, s.base.Load(), limit))
	s.desc.outSeqLimit = limit
	return nil
}

// Expiries reports CHILD SAs whose outbound sequence numbers are nearly
// (soft) or entirely (hard) used up (dataplane.ExpiryReporter).
func (d *DataPlane) Expiries() <-chan dataplane.Expiry { return d.expiries }

func (d *DataPlane) expire(s *sa, hard bool, reason string) {
	flag := &s.softSent
	if hard {
		flag = &s.hardSent
	}
	if flag.Swap(true) {
		return
	}
	select {
	case d.expiries <- dataplane.Expiry{InSPI: s.in.SPI(), Hard: hard, Reason: reason}:
	default: // the node is behind; the hard expiry or the rekey schedule follows
	}
}

type senderBox struct{ s dataplane.UDPSender }

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

var (
	_ dataplane.DataPlane  = (*DataPlane)(nil)
	_ dataplane.ESPHandler = (*DataPlane)(nil)
	_ dataplane.SenderUser = (*DataPlane)(nil)

	_ dataplane.AddressUpdater = (*DataPlane)(nil)
	_ dataplane.SACounter      = (*DataPlane)(nil)
	_ dataplane.SeqLimiter     = (*DataPlane)(nil)
	_ dataplane.SeqReporter    = (*DataPlane)(nil)
	_ dataplane.Reporter       = (*DataPlane)(nil)
)

// New creates the TUN device (unless cfg.Device is set), brings it up and
// starts the reader and the workers.
func New(cfg Config) (*DataPlane, error) {
	if cfg.TUNName == "" {
		cfg.TUNName = DefaultTUNName
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.ReplayWindow == 0 {
		cfg.ReplayWindow = esp.DefaultReplayWindow
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.MTU < 576 || cfg.MTU > maxInner:
		return nil, fmt.Errorf("userspace: MTU %d out of range 576..%d", cfg.MTU, maxInner)
	case cfg.Workers < 1 || cfg.QueueLen < 1:
		return nil, fmt.Errorf("userspace: workers and queue length must be positive")
	case cfg.ReplayWindow < 1 || cfg.ReplayWindow > esp.MaxReplayWindow:
		return nil, fmt.Errorf("userspace: replay window %d out of range 1..%d", cfg.ReplayWindow, esp.MaxReplayWindow)
	}
	d := &DataPlane{cfg: cfg, log: cfg.Log, dev: cfg.Device, router: cfg.Router,
		bySPI: map[uint32]*sa{}, routes: map[netip.Prefix]int{},
		done: make(chan struct{}), expiries: make(chan dataplane.Expiry, 256),
		progress: make(chan dataplane.SeqProgress, 4096)}
	d.bufSize = esp.MaxHeadroom + max(maxInner, cfg.MTU) + esp.MaxTailroom
	d.pool.New = func() any { b := make([]byte, d.bufSize); return &b }
	if d.dev == nil {
		tun, err := openTUN(cfg.TUNName, cfg.MTU)
		if err != nil {
			return nil, err
		}
		d.dev = tun
		if d.router == nil {
			d.router = tun
		}
	}
	if d.router == nil {
		d.router = noRoutes{}
	}
	for _, p := range cfg.Routes {
		if err := d.router.AddRoute(p.Masked(), cfg.RoutesLocalTS); err != nil {
			d.dev.Close()
			return nil, fmt.Errorf("userspace: route %s: %w", p, err)
		}
	}
	for i := 0; i < cfg.Workers; i++ {
		q := make(chan job, cfg.QueueLen)
		d.workers = append(d.workers, q)
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.work(q) }()
	}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.readTUN() }()
	d.log.Info("userspace data plane up", "tun", d.dev.Name(), "mtu", cfg.MTU, "workers", cfg.Workers,
		"queue_len", cfg.QueueLen, "replay_window", cfg.ReplayWindow, "socket_recv_buffer", cfg.SocketRecvBuffer)
	return d, nil
}

type noRoutes struct{}

func (noRoutes) AddRoute(netip.Prefix, []dataplane.Selector) error { return nil }
func (noRoutes) DelRoute(netip.Prefix) error                       { return nil }

func (d *DataPlane) Name() string { return "userspace" }

// TUNName is the name of the inner device.
func (d *DataPlane) TUNName() string { return d.dev.Name() }

// SetSender implements dataplane.SenderUser.
func (d *DataPlane) SetSender(s dataplane.UDPSender) { d.sender.Store(&senderBox{s}) }

func espConfig(spi uint32, c *dataplane.ChildSA, k dataplane.Keys, window int) esp.Config {
	return esp.Config{SPI: spi, EncrID: c.EncrID, KeyBits: c.EncrKeyBits, IntegID: c.IntegID,
		EncrKey: k.Encr, IntegKey: k.Integ, ESN: c.ESN, ReplayWindow: window,
		OutSeq: c.OutSeq, OutSeqLimit: c.OutSeqLimit, InSeqLow: c.InSeqLow}
}

// workerFor pins an SA to a worker by a hash of its inbound SPI (the
// engine puts shard bits at the top of SPIs, so mix before reducing).
func (d *DataPlane) workerFor(spi uint32) int {
	h := uint64(spi) * 0x9e3779b97f4a7c15
	return int((h >> 32) % uint64(len(d.workers)))
}

// Install adds a CHILD SA pair and routes for its remote selectors and
// virtual IP. The SA's first packet carries OutSeq+1, none goes above
// OutSeqLimit, inbound numbers up to InSeqLow are refused. Installing an
// installed SA (same inbound SPI) succeeds and changes nothing.
func (d *DataPlane) Install(ctx context.Context, c *dataplane.ChildSA) error {
	if err := d.install(ctx, c); err != nil {
		return err
	}
	// ESP that arrived while the SA was being claimed from another node.
	for _, p := range d.parked.take(c.InSPI) {
		d.HandleESP(p.pkt, p.local, p.remote)
	}
	return nil
}

func (d *DataPlane) install(_ context.Context, c *dataplane.ChildSA) error {
	if !c.Encap {
		return &dataplane.InstallError{InSPI: c.InSPI, OutSPI: c.OutSPI,
			Err: errors.New("userspace ESP needs UDP encapsulation (force_encap)")}
	}
	s := &sa{worker: d.workerFor(c.InSPI), inBase: c.InSeqLow, esn: c.ESN, encap: c.Encap,
		localTS: d.sharedLocal(c.LocalTS), desc: saDesc{
			outSPI: c.OutSPI, encrID: c.EncrID, encrKeyBits: c.EncrKeyBits, integID: c.IntegID,
			outSeqLimit: c.OutSeqLimit, outSeqMargin: c.OutSeqMargin, ikeSPIi: c.IKESPIi, ikeSPIr: c.IKESPIr,
			peerID: c.PeerID, virtualIP: c.VirtualIP}}
	if err := s.in.Init(espConfig(c.InSPI, c, c.In, d.cfg.ReplayWindow)); err != nil {
		return &dataplane.InstallError{InSPI: c.InSPI, OutSPI: c.OutSPI, Err: err}
	}
	if err := s.out.Init(espConfig(c.OutSPI, c, c.Out, 0)); err != nil {
		return &dataplane.InstallError{InSPI: c.InSPI, OutSPI: c.OutSPI, Err: err}
	}
	s.remoteTS = append(s.remote1[:0], c.RemoteTS...) // allocates past one selector
	if c.VirtualIP.IsValid() && !matchAny(c.RemoteTS, c.VirtualIP, 0, 0) {
		s.remoteTS = append(s.remoteTS, dataplane.Selector{Start: c.VirtualIP, End: c.VirtualIP, EndPort: 0xffff})
	}
	if !c.Created.IsZero() {
		s.desc.created = c.Created.UnixNano()
	}
	s.arm0 = armFor(c.OutSeqMargin, c.OutSeq, c.OutSeqLimit)
	s.arm.Store(&s.arm0)
	s.armSeen = &s.arm0
	s.outSeq.Store(c.OutSeq)
	s.inSeq.Store(c.InSeqLow)
	s.base.Store(c.OutSeq)
	s.ep0 = endpoints{local: c.Local, remote: c.Remote}
	s.ep.Store(&s.ep0)

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	if _, ok := d.bySPI[c.InSPI]; ok {
		return nil
	}
	var added []netip.Prefix
	for _, sel := range s.remoteTS {
		for _, p := range prefixes(sel) {
			if d.staticRoute(p) {
				continue
			}
			if d.routes[p] == 0 {
				if err := d.router.AddRoute(p, s.localTS); err != nil {
					for _, a := range added {
						d.unref(a)
					}
					return &dataplane.InstallError{InSPI: c.InSPI, OutSPI: c.OutSPI, Err: fmt.Errorf("route %s: %w", p, err)}
				}
			}
			d.routes[p]++
			added = append(added, p)
		}
	}
	d.order++
	s.order = d.order
	d.bySPI[c.InSPI] = s
	d.out.add(s)
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		// Debug: the node's "CHILD_SA installed" line says the same for
		// every data plane, and a line per SA costs a node of many SAs
		// more than this whole install.
		evlog.Attrs(context.Background(), d.log, slog.LevelDebug, "userspace SA installed",
			slog.String("spi_in", hexid.String(uint64(c.InSPI), 8)), slog.String("spi_out", hexid.String(uint64(c.OutSPI), 8)),
			slog.String("peer", c.Remote.String()), slog.String("peer_id", c.PeerID), slog.Int("worker", s.worker),
			slog.String("routes", fmt.Sprint(added)))
	}
	return nil
}

// UpdateAddresses moves an installed SA to new outer addresses (NAT
// rebinding, MOBIKE) keeping its sequence numbers and replay window, which
// a remove and reinstall would reset.
func (d *DataPlane) UpdateAddresses(_ context.Context, inSPI uint32, local, remote netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	s, ok := d.bySPI[inSPI]
	if !ok {
		return fmt.Errorf("userspace: no SA with inbound SPI %08x", inSPI)
	}
	s.ep.Store(&endpoints{local: local, remote: remote})
	d.log.Info("userspace SA moved", "spi_in", fmt.Sprintf("%08x", inSPI), "local", local.String(), "peer", remote.String())
	return nil
}

// staticRoute reports whether p lies inside one of Config.Routes.
func (d *DataPlane) staticRoute(p netip.Prefix) bool {
	for _, r := range d.cfg.Routes {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func (d *DataPlane) unref(p netip.Prefix) {
	d.routes[p]--
	if d.routes[p] <= 0 {
		delete(d.routes, p)
		if err := d.router.DelRoute(p); err != nil {
			d.log.Warn("route removal failed", "dst", p.String(), "err", err)
		}
	}
}

// Remove deletes the SA with inbound SPI inSPI and the routes only it
// needed; it logs the SA's final counters.
func (d *DataPlane) Remove(_ context.Context, inSPI uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	s, ok := d.bySPI[inSPI]
	if !ok {
		return nil
	}
	delete(d.bySPI, inSPI)
	d.out.remove(s)
	d.gone.InBytes += s.inBytes.Load()
	d.gone.InPackets += s.inPackets.Load()
	d.gone.OutBytes += s.outBytes.Load()
	d.gone.OutPackets += s.outPackets.Load()
	for _, sel := range s.remoteTS {
		for _, p := range prefixes(sel) {
			if !d.staticRoute(p) {
				d.unref(p)
			}
		}
	}
	evlog.Attrs(context.Background(), d.log, slog.LevelInfo, "userspace SA removed",
		slog.String("spi_in", hexid.String(uint64(inSPI), 8)), slog.String("spi_out", hexid.String(uint64(s.desc.outSPI), 8)),
		slog.String("peer_id", s.desc.peerID), slog.Uint64("in_packets", s.inPackets.Load()), slog.Uint64("in_bytes", s.inBytes.Load()),
		slog.Uint64("out_packets", s.outPackets.Load()), slog.Uint64("out_bytes", s.outBytes.Load()), slog.Uint64("replay_top", s.in.Seq()))
	return nil
}

// List returns the installed SAs; their OutSeq and InSeqLow are the
// current numbers (last sent, highest received). Their keys are empty:
// the ESP state holds them, and an installed SA keeps no second copy.
func (d *DataPlane) List(context.Context) ([]*dataplane.ChildSA, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*dataplane.ChildSA, 0, len(d.bySPI))
	for _, s := range d.bySPI {
		out = append(out, s.describe())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InSPI < out[j].InSPI })
	return out, nil
}

// describe returns the SA as installed, with its current outer addresses
// and numbers (last sent, highest received) and without its keys. Under
// DataPlane.mu.
func (s *sa) describe() *dataplane.ChildSA {
	d := &s.desc
	ep := s.ep.Load()
	var created time.Time
	if d.created != 0 {
		created = time.Unix(0, d.created)
	}
	return &dataplane.ChildSA{
		InSPI: s.in.SPI(), OutSPI: d.outSPI, Local: ep.local, Remote: ep.remote, Encap: s.encap,
		EncrID: d.encrID, EncrKeyBits: d.encrKeyBits, IntegID: d.integID, ESN: s.esn,
		LocalTS: slices.Clone(s.localTS), RemoteTS: slices.Clone(s.remoteTS), VirtualIP: d.virtualIP,
		PeerID: d.peerID, IKESPIi: d.ikeSPIi, IKESPIr: d.ikeSPIr, Created: created,
		OutSeq: s.outSeq.Load(), OutSeqLimit: d.outSeqLimit, OutSeqMargin: d.outSeqMargin, InSeqLow: s.inSeq.Load(),
	}
}

// Counters reports inner bytes and packets per SA.
func (d *DataPlane) Counters(context.Context) ([]dataplane.Counters, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]dataplane.Counters, 0, len(d.bySPI))
	for spi, s := range d.bySPI {
		out = append(out, dataplane.Counters{InSPI: spi, InBytes: s.inBytes.Load(), OutBytes: s.outBytes.Load(),
			InPackets: s.inPackets.Load(), OutPackets: s.outPackets.Load()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InSPI < out[j].InSPI })
	return out, nil
}

// Counter reports one SA's counters (dataplane.SACounter: the node
// watches a rekeyed SA's first traffic).
func (d *DataPlane) Counter(_ context.Context, inSPI uint32) (dataplane.Counters, error) {
	d.mu.RLock()
	s := d.bySPI[inSPI]
	d.mu.RUnlock()
	if s == nil {
		return dataplane.Counters{}, fmt.Errorf("userspace: no SA with inbound SPI %08x", inSPI)
	}
	return dataplane.Counters{InSPI: inSPI, InBytes: s.inBytes.Load(), OutBytes: s.outBytes.Load(),
		InPackets: s.inPackets.Load(), OutPackets: s.outPackets.Load()}, nil
}

// InboundPackets reports the inbound packets of each SA
// (dataplane.TrafficCounter): those authenticated and delivered, as
// Counter counts them.
func (d *DataPlane) InboundPackets(_ context.Context, inSPIs []uint32, packets []uint64) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for i, spi := range inSPIs {
		packets[i] = ^uint64(0)
		if s := d.bySPI[spi]; s != nil {
			packets[i] = s.inPackets.Load()
		}
	}
}

// Stats returns the drop counters.
func (d *DataPlane) Stats() Stats {
	st := Stats{Drops: map[string]uint64{}, SeqProgressDeferred: d.deferred.Load(), Mappings: d.mappings.Load()}
	for r := DropReason(0); r < numDropReasons; r++ {
		if v := d.drops[r].Load(); v > 0 {
			st.Drops[r.String()] = v
		}
	}
	d.mu.RLock()
	st.SAs = len(d.bySPI)
	d.mu.RUnlock()
	return st
}

// Report sums the traffic of every SA since the data plane started (those
// removed included) and the drops by reason (DropReason names, all of
// them, zeros too). It takes the read lock once; packets pay nothing.
func (d *DataPlane) Report(context.Context) (dataplane.Report, error) {
	r := dataplane.Report{Drops: make(map[string]uint64, numDropReasons)}
	for rs := DropReason(0); rs < numDropReasons; rs++ {
		r.Drops[rs.String()] = d.drops[rs].Load()
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	r.InBytes, r.InPackets, r.OutBytes, r.OutPackets = d.gone.InBytes, d.gone.InPackets, d.gone.OutBytes, d.gone.OutPackets
	for _, s := range d.bySPI {
		r.InBytes += s.inBytes.Load()
		r.InPackets += s.inPackets.Load()
		r.OutBytes += s.outBytes.Load()
		r.OutPackets += s.outPackets.Load()
	}
	return r, nil
}

// Close stops the reader and workers and removes the TUN device (and with
// it the routes).
func (d *DataPlane) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	close(d.done)
	err := d.dev.Close()
	d.wg.Wait()
	st := d.Stats()
	d.log.Info("userspace data plane stopped", "tun", d.dev.Name(), "drops", st.Drops)
	return err
}

func (d *DataPlane) drop(r DropReason) { d.drops[r].Add(1) }

func (d *DataPlane) getBuf() *[]byte  { return d.pool.Get().(*[]byte) }
func (d *DataPlane) putBuf(b *[]byte) { d.pool.Put(b) }

func (d *DataPlane) enqueue(j job) {
	select {
	case d.workers[j.sa.worker] <- j:
	default:
		d.drop(DropQueueFull)
		d.putBuf(j.buf)
	}
}

// HandleESP implements dataplane.ESPHandler: it copies the packet and
// queues it on its SA's worker.
func (d *DataPlane) HandleESP(pkt []byte, local, remote netip.AddrPort) {
	h, err := esp.ParseHeader(pkt)
	if err != nil {
		d.drop(DropMalformed)
		return
	}
	if len(pkt) > d.bufSize {
		d.drop(DropOversize)
		return
	}
	d.mu.RLock()
	s := d.bySPI[h.SPI]
	d.mu.RUnlock()
	if s == nil {
		f := d.unknown.Load()
		// In a cluster the SA may be on its way here (a claim): keep a
		// few of its packets for replay once it is installed.
		parked := false
		if f != nil {
			var expired int
			parked, expired = d.parked.park(h.SPI, pkt, local, remote)
			d.drops[DropNoSA].Add(uint64(expired))
		}
		if !parked {
			d.drop(DropNoSA)
		}
		if f != nil {
			(*f)(h.SPI)
		}
		return
	}
	b := d.getBuf()
	n := copy(*b, pkt)
	d.enqueue(job{sa: s, buf: b, off: 0, n: n, from: remote})
}

// lookupOut finds the SA for an outbound inner packet: its destination
// under the SA's remote selectors and its source under the local ones.
func (d *DataPlane) lookupOut(f flow) *sa {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.out.lookup(f)
}

// readTUN reads inner packets and queues each on its SA's worker.
func (d *DataPlane) readTUN() {
	const off = esp.MaxHeadroom
	for {
		b := d.getBuf()
		n, err := d.dev.Read((*b)[off : off+d.cfg.MTU])
		if err != nil {
			d.putBuf(b)
			select {
			case <-d.done:
				return
			default:
			}
			if errors.Is(err, errClosed) {
				return
			}
			d.log.Warn("TUN read failed", "tun", d.dev.Name(), "err", err)
			continue
		}
		f, ok := parseFlow((*b)[off : off+n])
		if !ok {
			d.drop(DropMalformed)
			d.putBuf(b)
			continue
		}
		s := d.lookupOut(f)
		if s == nil {
			if f.dst.IsMulticast() || f.dst.IsLinkLocalUnicast() || f.dst == broadcast4 {
				d.drop(DropLinkLocal) // never tunnelled: not an error
			} else {
				d.drop(DropNoSA)
			}
			d.putBuf(b)
			continue
		}
		d.enqueue(job{sa: s, buf: b, off: off, n: n, outbound: true})
	}
}

func (d *DataPlane) work(q chan job) {
	for {
		select {
		case <-d.done:
			return
		case j := <-q:
			if j.outbound {
				d.sendOut(j)
			} else {
				d.receive(j)
			}
			d.putBuf(j.buf)
		}
	}
}

// OnUnknownSPI sets the function told of inbound ESP for SPIs without a
// CHILD SA here (dataplane.UnknownSPIReporter).
func (d *DataPlane) OnUnknownSPI(f func(spi uint32)) { d.unknown.Store(&f) }

// OnMapping sets the function told of NAT mapping changes
// (dataplane.MappingReporter).
func (d *DataPlane) OnMapping(f func(dataplane.Mapping)) { d.mapping.Store(&f) }

// mappingInterval bounds the mapping reports of one SA.
const mappingInterval = time.Second

// checkMapping reports authenticated ESP of an encapsulated SA that came
// from another address than the SA sends to; on s's worker.
func (d *DataPlane) checkMapping(s *sa, from netip.AddrPort) {
	if !from.IsValid() {
		return
	}
	ep := s.ep.Load()
	if from == ep.remote {
		return
	}
	if !s.encap {
		return // plain ESP has no ports to re-map
	}
	f := d.mapping.Load()
	if f == nil {
		return
	}
	now := time.Now().UnixNano()
	if now-s.mappedAt < int64(mappingInterval) {
		return
	}
	s.mappedAt = now
	d.mappings.Add(1)
	(*f)(dataplane.Mapping{InSPI: s.in.SPI(), Remote: from})
}

// SetFenced stops (true) or resumes (false) outbound ESP: packets are
// dropped before they take a sequence number (dataplane.Fencer).
func (d *DataPlane) SetFenced(f bool) { d.fenced.Store(f) }

func (d *DataPlane) sendOut(j job) {
	if d.fenced.Load() {
		d.drop(DropFenced) // the worker returns the buffer
		return
	}
	s := j.sa
	a := s.arm.Load()
	if a != s.armSeen {
		s.out.SetSeqLimit(a.limit)
		s.armSeen, s.outReported = a, false
	}
	nh, _ := esp.InnerVersion((*j.buf)[j.off:])
	pkt, err := s.out.Seal(*j.buf, j.off, j.n, nh)
	if err != nil {
		switch {
		case errors.Is(err, esp.ErrSeqOverflow):
			d.drop(DropSeqOverflow)
			d.expire(s, true, "sequence numbers")
		case errors.Is(err, esp.ErrSeqLimit):
			d.drop(DropSeqReservation)
			d.outProgress(s, a) // a report that found the channel full goes now
		default:
			d.drop(DropOversize)
		}
		return
	}
	s.outSeq.Store(s.out.Seq())
	d.outProgress(s, a)
	if !s.esn && s.out.Seq() >= softSeqLimit {
		d.expire(s, false, "sequence numbers")
	}
	sb := d.sender.Load()
	if sb == nil {
		d.drop(DropSendError)
		return
	}
	ep := s.ep.Load()
	if err := sb.s.SendUDP(pkt, ep.local, ep.remote); err != nil {
		d.drop(DropSendError)
		return
	}
	s.outPackets.Add(1)
	s.outBytes.Add(uint64(j.n))
}

func (d *DataPlane) receive(j job) {
	s := j.sa
	payload, nh, _, err := s.in.Open((*j.buf)[j.off : j.off+j.n])
	if err == nil {
		top := s.in.Seq()
		s.inSeq.Store(top)
		if step := s.arm.Load().step; step != 0 && top-s.inBase >= step && d.report(s) {
			s.inBase = top
		}
	}
	if err != nil {
		switch err {
		case esp.ErrReplay:
			d.drop(DropReplay)
		case esp.ErrIntegrity:
			d.drop(DropIntegrity)
		default:
			d.drop(DropMalformed)
		}
		return
	}
	d.checkMapping(s, j.from) // authenticated: its source counts
	if nh == esp.NextHeaderDummy {
		d.drop(DropDummy)
		return
	}
	f, ok := parseFlow(payload)
	if v, _ := esp.InnerVersion(payload); !ok || v != nh {
		d.drop(DropMalformed)
		return
	}
	if !matchAny(s.remoteTS, f.src, f.proto, f.srcPort) || !matchAny(s.localTS, f.dst, f.proto, f.dstPort) {
		d.drop(DropSelector)
		return
	}
	if _, err := d.dev.Write(payload); err != nil {
		d.drop(DropTUNWrite)
		return
	}
	s.inPackets.Add(1)
	s.inBytes.Add(uint64(len(payload)))
}

// outProgress reports s's outbound progress once per arm when its number
// has reached the arm's threshold; it runs on s's worker.
func (d *DataPlane) outProgress(s *sa, a *seqArm) {
	if !s.outReported && a == s.armSeen && a.threshold != 0 && s.out.Seq() >= a.threshold {
		if s.outReported = d.report(s); s.outReported {
			s.base.Store(s.out.Seq())
		}
	}
}
