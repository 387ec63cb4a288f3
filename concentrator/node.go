// Package concentrator runs a concentrator node: UDP socket loops, the IKE
// engine sharded across cores, the data plane, and the wiring between them.
package concentrator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// Implementation limits of the socket loop.
const (
	shardQueueLen = 4096  // packets waiting per shard before we drop
	maxDatagram   = 65535 // UDP payload
	spiShardShift = 44    // IKE SPI bits 44..51 name the shard
	spiShardMask  = uint64(0xff) << spiShardShift
)

// socketConfigurer is implemented by data planes that need to prepare the
// node's UDP sockets (xfrm: UDP_ENCAP_ESPINUDP on the NAT-T socket).
type socketConfigurer interface {
	ConfigureSocket(c *net.UDPConn, natt bool) error
}

// Node is one concentrator node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	dp     dataplane.DataPlane
	ecfg   ike.Config
	shards []*shard
	seed   maphash.Seed

	mu       sync.Mutex
	conns    map[netip.AddrPort]*net.UDPConn
	natt     map[netip.AddrPort]bool // sockets on the NAT-T port
	ready    chan struct{}
	ikeAddr  netip.AddrPort
	nattAddr netip.AddrPort

	nodeID          string
	runCtx          context.Context // Run's, for work handed to shards from other goroutines
	espBits         int             // inbound ESP SPI bits naming the shard
	persist         *persistence
	persistFailures atomic.Uint64
	fencedDrops     atomic.Uint64
	queueDrops      atomic.Uint64
	nonIKEDrops     atomic.Uint64
	keepalives      atomic.Uint64
}

type shard struct {
	id    int
	eng   *ike.Engine
	in    chan ike.Packet
	calls chan func()
	// watch: rekeyed CHILD SAs (inbound SPI) whose first inbound traffic
	// retires their predecessor, until when to look.
	watch map[uint32]time.Time
	// SPIs reserved cluster-wide ahead of need (state store), taken by the
	// engine without waiting.
	ikeSPIs chan uint64
	espSPIs chan uint32
}

// New builds a node from a validated configuration. It loads keys,
// certificates and PSKs; errors name the configuration field.
func New(cfg Config, log *slog.Logger, dp dataplane.DataPlane) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ecfg, err := cfg.engineConfig()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: log, dp: dp, ecfg: ecfg, seed: maphash.MakeSeed(),
		conns: map[netip.AddrPort]*net.UDPConn{}, natt: map[netip.AddrPort]bool{}, ready: make(chan struct{}),
		nodeID: nodeIDOf(cfg)}
	if su, ok := dp.(dataplane.SenderUser); ok {
		su.SetSender(n) // user-space ESP leaves through our NAT-T socket
	}
	ns := cfg.shards()
	espBits := bits.Len(uint(ns - 1))
	n.espBits = espBits
	perShard := ecfg.CookieThreshold
	if perShard > 0 {
		perShard = (perShard + ns - 1) / ns
	}
	for i := 0; i < ns; i++ {
		sc := ecfg
		sc.Rand = rand.Reader
		sc.CookieThreshold = perShard
		sc.SPITagMask = spiShardMask
		sc.SPITag = uint64(i) << spiShardShift
		if espBits > 0 {
			sc.ESPSPITagMask = uint32((1<<espBits)-1) << (32 - espBits)
			sc.ESPSPITag = uint32(i) << (32 - espBits)
		}
		sh := &shard{id: i, in: make(chan ike.Packet, shardQueueLen), calls: make(chan func()),
			watch: map[uint32]time.Time{}, ikeSPIs: make(chan uint64, spiPoolLen), espSPIs: make(chan uint32, spiPoolLen)}
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
		if cfg.StateStore.Mode == "none" {
			sc.IKESPIs, sc.ESPSPIs = nil, nil
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

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

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

// Run binds the sockets and serves until ctx is cancelled. Established SAs
// are not deleted on shutdown: a node that stops is not a peer that left.
func (n *Node) Run(ctx context.Context) error {
	var conns []*net.UDPConn
	for _, a := range n.cfg.IKE.Listen {
		addr := netip.MustParseAddr(a)
		for i, port := range []int{n.cfg.IKE.Port, n.cfg.IKE.NATTPort} {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port))))
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return fmt.Errorf("listen %s port %d: %w", a, port, err)
			}
			conns = append(conns, c)
			// The data plane may prepare the socket: buffer sizes, and
			// UDP_ENCAP_ESPINUDP on the NAT-T port for kernel ESP (xfrm).
			if sc, ok := n.dp.(socketConfigurer); ok {
				if err := sc.ConfigureSocket(c, i == 1); err != nil {
					for _, c := range conns {
						c.Close()
					}
					return fmt.Errorf("listen %s port %d: %s data plane: %w", a, port, n.dp.Name(), err)
				}
			}
			local := c.LocalAddr().(*net.UDPAddr).AddrPort()
			local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
			n.mu.Lock()
			n.conns[local] = c
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
	if n.cfg.StateStore.Mode != "none" {
		p, err := n.openStore(ctx)
		if err != nil {
			closeAll()
			return err
		}
		n.persist = p
		defer p.close()
		// Our slot goes into every IKE SPI we allocate from now on.
		me, slot := p.store.Registration()
		for i, s := range n.shards {
			s.eng.SetSPITag(uint64(slot)<<slotShift|uint64(i)<<spiShardShift, slotMask|spiShardMask)
		}
		n.log.Info("registered", "node", n.nodeID, "slot", slot, "epoch", me.Epoch, "statestore", n.cfg.StateStore.Mode)
		n.refillSPIs(ctx) // the first IKE_SA_INIT finds reserved SPIs
	}
	if err := n.restore(ctx); err != nil {
		closeAll()
		return err
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
	if n.persist != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(spiRefillInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					n.refillSPIs(ctx)
				}
			}
		}()
	}
	if er, ok := n.dp.(dataplane.ExpiryReporter); ok {
		wg.Add(1)
		go func() { defer wg.Done(); n.expiries(ctx, er.Expiries()) }()
	}
	var readers sync.WaitGroup
	for _, c := range conns {
		readers.Add(1)
		go func() { defer readers.Done(); n.readLoop(c) }()
	}
	<-ctx.Done()
	for _, c := range conns {
		c.Close()
	}
	readers.Wait()
	wg.Wait()
	n.log.Info("stopped", "node", n.nodeID)
	return nil
}

func (n *Node) readLoop(c *net.UDPConn) {
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	n.mu.Lock()
	natt := n.natt[local]
	n.mu.Unlock()
	espIn, _ := n.dp.(dataplane.ESPHandler)
	buf := make([]byte, maxDatagram)
	for {
		nb, remote, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("read failed", "local", local.String(), "err", err)
			continue
		}
		b := buf[:nb]
		if natt {
			switch {
			case nb == 1 && b[0] == 0xff:
				n.keepalives.Add(1) // NAT-T keepalive (RFC 3948 §2.3)
				continue
			case nb >= 4 && binary.BigEndian.Uint32(b) == 0:
				b = b[4:] // non-ESP marker: IKE
			case espIn != nil:
				espIn.HandleESP(b, local, netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())) // user-space ESP
				continue
			default:
				n.nonIKEDrops.Add(1) // ESP: the data plane's, not ours
				continue
			}
		}
		s := n.shardFor(b)
		if s == nil {
			n.nonIKEDrops.Add(1)
			continue
		}
		pkt := ike.Packet{Local: local, Remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), Data: append([]byte(nil), b...)}
		select {
		case s.in <- pkt:
		default:
			n.queueDrops.Add(1)
		}
	}
}

// shardFor routes a message to the shard owning its SA: by our SPI's shard
// bits, or for a new IKE_SA_INIT by a hash of the initiator's SPI.
func (n *Node) shardFor(b []byte) *shard {
	if len(b) < 28 {
		return nil
	}
	spii := binary.BigEndian.Uint64(b[0:])
	spir := binary.BigEndian.Uint64(b[8:])
	fromInitiator := b[19]&ike.FlagInitiator != 0
	var idx uint64
	switch {
	case fromInitiator && spir == 0:
		idx = maphash.Comparable(n.seed, spii) % uint64(len(n.shards))
	case fromInitiator:
		idx = (spir & spiShardMask) >> spiShardShift
	default:
		idx = (spii & spiShardMask) >> spiShardShift
	}
	if idx >= uint64(len(n.shards)) {
		return nil
	}
	return n.shards[idx]
}

func (n *Node) runShard(ctx context.Context, s *shard) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	watchTick := time.NewTicker(watchInterval)
	defer watchTick.Stop()
	var rd ike.Ready
	for {
		select {
		case <-ctx.Done():
			return
		case pkt := <-s.in:
			s.eng.Handle(time.Now(), pkt, &rd)
		case f := <-s.calls:
			f()
		case <-timer.C:
			s.eng.Tick(time.Now(), &rd)
		case <-watchTick.C:
			n.checkWatched(ctx, s)
		}
		n.perform(ctx, s, &rd)
		rd.Reset()
		timer.Stop()
		if d := s.eng.NextDeadline(time.Now()); !d.IsZero() {
			timer.Reset(time.Until(d))
		}
	}
}

// do runs f on the shard's goroutine and waits for it.
func (n *Node) do(ctx context.Context, s *shard, f func()) error {
	done := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

func (n *Node) perform(ctx context.Context, s *shard, rd *ike.Ready) {
	for _, ev := range rd.Events {
		n.logEvent(s, ev)
	}
	// The caller persists before it sends (DESIGN.md): messages that go
	// with a state change leave once the change is in the state store.
	var gate *sendGate
	if n.persist != nil && len(rd.Persist) > 0 {
		gate = &sendGate{pending: len(rd.Persist) + 1} // +1: this function
		defer gate.done(n, true)
	}
	for _, p := range rd.Persist {
		if n.persist == nil {
			s.eng.Committed(p.SPI, p.Version) // nothing to write
			continue
		}
		n.persistChange(s, p, gate)
	}
	for _, a := range rd.DataPlane {
		switch a := a.(type) {
		case ike.InstallChild:
			if err := n.dp.Install(ctx, toDataplane(a)); err != nil {
				n.log.Error("CHILD_SA install failed", childAttrs(a.SPIi, a.SPIr, a.PeerID, a.Child, "err", err)...)
			}
			if _, ok := n.dp.(dataplane.SACounter); ok && a.Replaces != 0 && n.ecfg.RekeyOverlap > 0 {
				s.watch[a.Child.InSPI] = time.Now().Add(n.ecfg.RekeyOverlap)
			}
		case ike.RemoveChild:
			if err := n.dp.Remove(ctx, a.Child.InSPI); err != nil {
				n.log.Error("CHILD_SA remove failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, a.Child, "err", err)...)
			}
		case ike.UpdateChild:
			n.updateChild(ctx, a)
		}
	}
	for _, snd := range rd.Send {
		switch {
		case snd.Keepalive:
			n.sendKeepalive(snd)
		case gate != nil:
			gate.hold(snd)
		default:
			n.send(snd)
		}
	}
}

// conn returns the socket bound to local, or to its port on the wildcard
// address, and whether it is a NAT-T socket.
func (n *Node) conn(local netip.AddrPort) (*net.UDPConn, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, natt := n.conns[local], n.natt[local]
	if c == nil {
		// Bound to the wildcard address: find the socket by port.
		for addr, conn := range n.conns {
			if addr.Port() == local.Port() && addr.Addr().IsUnspecified() {
				c, natt = conn, n.natt[addr]
				break
			}
		}
	}
	return c, natt
}

// SendUDP sends b as is from the socket bound to local: the data plane's
// user-space ESP (dataplane.UDPSender).
func (n *Node) SendUDP(b []byte, local, remote netip.AddrPort) error {
	c, _ := n.conn(local)
	if c == nil {
		return fmt.Errorf("no socket bound to %s", local)
	}
	_, err := c.WriteToUDPAddrPort(b, remote)
	return err
}

// expiries hands the data plane's CHILD SA expiries to the shard that owns
// the SA (its inbound SPI carries the shard): soft ones are rekeyed now,
// hard ones deleted.
func (n *Node) expiries(ctx context.Context, ch <-chan dataplane.Expiry) {
	for {
		select {
		case <-ctx.Done():
			return
		case ex, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			i := 0
			if n.espBits > 0 {
				i = int(ex.InSPI >> (32 - n.espBits))
			}
			if i >= len(n.shards) {
				continue
			}
			s := n.shards[i]
			n.log.Info("CHILD_SA expiring", "spi_in", fmt.Sprintf("%08x", ex.InSPI), "hard", ex.Hard, "reason", ex.Reason)
			n.do(ctx, s, func() {
				var rd ike.Ready
				s.eng.ExpireChild(time.Now(), ex.InSPI, ex.Hard, &rd)
				n.perform(ctx, s, &rd)
			})
		}
	}
}

// watchInterval is how often a shard looks at the counters of rekeyed
// CHILD SAs waiting for their first traffic.
const watchInterval = 500 * time.Millisecond

// checkWatched retires the predecessors of rekeyed CHILD SAs that carry
// traffic now.
func (n *Node) checkWatched(ctx context.Context, s *shard) {
	if len(s.watch) == 0 {
		return
	}
	counter := n.dp.(dataplane.SACounter)
	now := time.Now()
	for spi, until := range s.watch {
		c, err := counter.Counter(ctx, spi)
		switch {
		case err == nil && c.InPackets > 0:
			s.eng.ChildActive(now, spi)
			delete(s.watch, spi)
		case err != nil || now.After(until):
			delete(s.watch, spi) // the engine's overlap timer retires it
		}
	}
}

// sendKeepalive sends a NAT-T keepalive: one 0xFF octet, no marker.
func (n *Node) sendKeepalive(a ike.Send) {
	if c, _ := n.conn(a.Local); c != nil {
		if _, err := c.WriteToUDPAddrPort([]byte{0xff}, a.Remote); err != nil {
			n.log.Debug("keepalive failed", "remote", a.Remote.String(), "err", err)
		}
	}
}

// updateChild moves an installed CHILD SA to new outer addresses: in place
// where the data plane can, else by reinstalling it.
func (n *Node) updateChild(ctx context.Context, a ike.UpdateChild) {
	c := a.Child
	var err error
	if u, ok := n.dp.(dataplane.AddressUpdater); ok {
		err = u.UpdateAddresses(ctx, c.InSPI, c.Local, c.Remote)
	} else if err = n.dp.Remove(ctx, c.InSPI); err == nil {
		err = n.dp.Install(ctx, toDataplane(ike.InstallChild{SPIi: a.SPIi, SPIr: a.SPIr, PeerID: a.PeerID, Child: c}))
	}
	if err != nil {
		n.log.Error("CHILD_SA address update failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, c, "err", err)...)
	}
}

func (n *Node) send(a ike.Send) {
	if n.persist != nil && !n.persist.store.CanSend() {
		// Fenced: our lease may have lapsed and another node may own
		// these SAs now; stay silent until re-registered.
		n.fencedDrops.Add(1)
		return
	}
	c, natt := n.conn(a.Local)
	if c == nil {
		n.log.Warn("no socket to send from", "local", a.Local.String(), "remote", a.Remote.String())
		return
	}
	for _, m := range a.Messages {
		if natt {
			m = append([]byte{0, 0, 0, 0}, m...)
		}
		if _, err := c.WriteToUDPAddrPort(m, a.Remote); err != nil {
			n.log.Warn("send failed", "local", a.Local.String(), "remote", a.Remote.String(), "err", err)
		}
	}
}

func (n *Node) logEvent(s *shard, ev ike.Event) {
	attrs := []any{"spi_i", fmt.Sprintf("%016x", ev.SPIi), "spi_r", fmt.Sprintf("%016x", ev.SPIr),
		"peer", ev.Remote.String(), "shard", s.id}
	if !ev.PeerID.IsZero() {
		attrs = append(attrs, "peer_id", ev.PeerID.String())
	}
	if ev.Proposal != "" {
		attrs = append(attrs, "proposal", ev.Proposal)
	}
	if ev.Notify != 0 {
		attrs = append(attrs, "notify", ev.Notify.String())
	}
	if ev.Reason != "" {
		attrs = append(attrs, "reason", ev.Reason)
	}
	if c := ev.Child; c != nil {
		attrs = append(attrs, "spi_in", fmt.Sprintf("%08x", c.InSPI), "spi_out", fmt.Sprintf("%08x", c.OutSPI),
			"ts_local", ike.FormatSelectors(c.LocalTS), "ts_remote", ike.FormatSelectors(c.RemoteTS),
			"esp", c.Proposal.String(), "encap", c.Encap)
		if c.VirtualIP.IsValid() {
			attrs = append(attrs, "vip", c.VirtualIP.String())
		}
	}
	switch ev.Kind {
	case ike.EventDropped:
		n.log.Debug(ev.Kind.String(), attrs...)
	case ike.EventIKEFailed, ike.EventChildFailed:
		n.log.Warn(ev.Kind.String(), attrs...)
	default:
		n.log.Info(ev.Kind.String(), attrs...)
	}
}

func childAttrs(spii, spir uint64, peer ike.Identity, c *ike.ChildSA, extra ...any) []any {
	a := []any{"spi_i", fmt.Sprintf("%016x", spii), "spi_r", fmt.Sprintf("%016x", spir),
		"spi_in", fmt.Sprintf("%08x", c.InSPI), "spi_out", fmt.Sprintf("%08x", c.OutSPI)}
	if !peer.IsZero() {
		a = append(a, "peer_id", peer.String())
	}
	return append(a, extra...)
}

func toDataplane(a ike.InstallChild) *dataplane.ChildSA {
	c := a.Child
	conv := func(ts []ike.TrafficSelector) []dataplane.Selector {
		out := make([]dataplane.Selector, len(ts))
		for i, t := range ts {
			out[i] = dataplane.Selector{Start: t.Start, End: t.End, IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort}
		}
		return out
	}
	return &dataplane.ChildSA{
		InSPI: c.InSPI, OutSPI: c.OutSPI, Local: c.Local, Remote: c.Remote, Encap: c.Encap,
		EncrID: c.Proposal.Encr.ID, EncrKeyBits: c.Proposal.Encr.KeyLen, IntegID: c.Proposal.Integ,
		ESN:     c.Proposal.ESN == 1,
		In:      dataplane.Keys{Encr: c.KeyIn.Encr, Integ: c.KeyIn.Integ},
		Out:     dataplane.Keys{Encr: c.KeyOut.Encr, Integ: c.KeyOut.Integ},
		LocalTS: conv(c.LocalTS), RemoteTS: conv(c.RemoteTS), VirtualIP: c.VirtualIP,
		PeerID: a.PeerID.String(), IKESPIi: a.SPIi, IKESPIr: a.SPIr, Created: c.Created,
	}
}

// SAInfo is a snapshot of one IKE SA for operators and tests.
type SAInfo struct {
	SPIi, SPIr uint64
	State      string
	Initiator  bool
	Local      netip.AddrPort
	Remote     netip.AddrPort
	PeerID     string
	Proposal   string
	Children   []ike.ChildSA
}

// SAs returns a snapshot of every IKE SA on every shard.
func (n *Node) SAs(ctx context.Context) ([]SAInfo, error) {
	var out []SAInfo
	for _, s := range n.shards {
		err := n.do(ctx, s, func() {
			s.eng.Each(func(sa *ike.IKESA) bool {
				info := SAInfo{SPIi: sa.SPIi, SPIr: sa.SPIr, State: sa.State(), Initiator: sa.IsInitiator(),
					Local: sa.Local, Remote: sa.Remote, PeerID: sa.PeerID.String()}
				if p := sa.Proposal(); p != nil {
					info.Proposal = p.String()
				}
				for _, c := range sa.Children() {
					info.Children = append(info.Children, *c)
				}
				out = append(out, info)
				return true
			})
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Stats sums the engine counters of all shards.
func (n *Node) Stats(ctx context.Context) (ike.Stats, error) {
	total := ike.Stats{Failed: map[ike.NotifyType]uint64{}}
	for _, s := range n.shards {
		var st ike.Stats
		if err := n.do(ctx, s, func() { st = s.eng.Stats() }); err != nil {
			return total, err
		}
		total.HalfOpen += st.HalfOpen
		total.Established += st.Established
		total.CookiesSent += st.CookiesSent
		total.Dropped += st.Dropped
		total.Retransmits += st.Retransmits
		total.DuplicateRequests += st.DuplicateRequests
		total.UnreservedSPIs += st.UnreservedSPIs
		total.ChildRekeys += st.ChildRekeys
		total.IKERekeys += st.IKERekeys
		total.DPDSent += st.DPDSent
		total.DPDDead += st.DPDDead
		for k, v := range st.Failed {
			total.Failed[k] += v
		}
	}
	return total, nil
}
