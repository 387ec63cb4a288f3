package main

// The simulated gateways: groups of initiators, each group one engine
// (initiator role) on its own pair of sockets on a loopback address of its
// own, so the node sees as many distinct source addresses as there are
// groups.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// fleetOptions configure the gateways.
type fleetOptions struct {
	server     netip.AddrPort // node's IKE address
	serverNATT uint16
	groups     int
	proposal   ike.ProposalSpec
	esp        ike.ProposalSpec
	remoteTS   []ike.TrafficSelector
}

// gateway identities and PSKs: per device, as a fleet has them.
func gatewayID(n int) string  { return "gw" + strconv.Itoa(n) + "@bench.example" }
func gatewayPSK(n int) string { return "bench-psk-" + strconv.Itoa(n) + "-0123456789abcdef" }

type fleet struct {
	o      fleetOptions
	groups []*group

	mu        sync.Mutex
	lat       []time.Duration // setup latencies of this phase
	lastUp    time.Time
	failures  map[string]int
	up, fail  atomic.Int64 // established / failed handshakes (all phases)
	deleted   atomic.Int64 // IKE SAs whose delete the node confirmed
	started   atomic.Int64
	sendDrops atomic.Uint64
	// churn: each SA is deleted as soon as it is established (runChurn).
	churn atomic.Bool
}

type group struct {
	f           *fleet
	eng         *ike.Engine
	ikeC, nattC *net.UDPConn
	ikeL, nattL netip.AddrPort
	pkts        chan ike.Packet
	cmds        chan func(*ike.Ready)
	starts      map[uint64]time.Time // SPIi -> initiation time, until established or failed
	established map[uint64]bool
	churned     []uint64 // established during a churn run, to delete
}

func newFleet(ctx context.Context, o fleetOptions) (*fleet, error) {
	f := &fleet{o: o, failures: map[string]int{}}
	for i := 0; i < o.groups; i++ {
		g, err := f.newGroup(ctx, groupAddr(i))
		if err != nil {
			f.close()
			return nil, err
		}
		f.groups = append(f.groups, g)
	}
	return f, nil
}

// groupAddr is group i's source address: a loopback address of its own
// (127.1.0.1, 127.1.0.2, ...), as gateways of a fleet come from many
// addresses. From one address a burst measures the node's per-address
// half-open quota (ike.max_half_open_per_prefix: the 1,025th cookie-proven
// request of one address waits for a retransmission), not the node.
func groupAddr(i int) net.IP { return net.IPv4(127, 1, byte(i/250), byte(i%250+1)) }

// maxGroups is how many groups have an address of their own.
const maxGroups = 250 * 256

func listenLoopback(ip net.IP) (*net.UDPConn, netip.AddrPort, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	// Large buffers so that the gateways, not the driver, are what a burst
	// tests (SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it the kernel caps).
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
			}
		})
	}
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return c, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()), nil
}

func (f *fleet) newGroup(ctx context.Context, ip net.IP) (*group, error) {
	g := &group{f: f, pkts: make(chan ike.Packet, 4096), cmds: make(chan func(*ike.Ready), 1024),
		starts: map[uint64]time.Time{}, established: map[uint64]bool{}}
	var err error
	if g.ikeC, g.ikeL, err = listenLoopback(ip); err != nil {
		return nil, err
	}
	if g.nattC, g.nattL, err = listenLoopback(ip); err != nil {
		g.ikeC.Close()
		return nil, err
	}
	g.eng, err = ike.NewEngine(ike.Config{IKEProposals: []ike.ProposalSpec{f.o.proposal}, NATTPort: g.nattL.Port(),
		Rand: rand.Reader, ForceEncap: true})
	if err != nil {
		return nil, err
	}
	go g.read(ctx, g.ikeC, g.ikeL, false)
	go g.read(ctx, g.nattC, g.nattL, true)
	go g.run(ctx)
	return g, nil
}

func (f *fleet) close() {
	for _, g := range f.groups {
		g.ikeC.Close()
		g.nattC.Close()
	}
}

func (g *group) read(ctx context.Context, c *net.UDPConn, local netip.AddrPort, natt bool) {
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		if natt {
			if n < 4 || binary.BigEndian.Uint32(b) != 0 {
				continue
			}
			b = b[4:]
		}
		select {
		case g.pkts <- ike.Packet{Local: local, Remote: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), Data: append([]byte(nil), b...)}:
		case <-ctx.Done():
			return
		}
	}
}

// run is the group's engine loop: packets, timers and commands.
func (g *group) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var rd ike.Ready
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-g.pkts:
			g.eng.Handle(time.Now(), p, &rd)
		case c := <-g.cmds:
			c(&rd)
		case <-timer.C:
			g.eng.Tick(time.Now(), &rd)
		}
		g.perform(&rd)
		rd.Reset()
		for len(g.churned) > 0 {
			spis := g.churned
			g.churned = nil
			now := time.Now()
			for _, spi := range spis {
				g.eng.Delete(now, spi, &rd)
			}
			g.perform(&rd)
			rd.Reset()
		}
		timer.Stop()
		if d := g.eng.NextDeadline(time.Now()); !d.IsZero() {
			timer.Reset(time.Until(d))
		}
	}
}

// perform commits the step's state at once (the simulated gateways keep
// none), sends its messages and counts its events.
func (g *group) perform(rd *ike.Ready) {
	f := g.f
	for _, p := range rd.Persist {
		g.eng.Committed(p.SPI, p.Version)
	}
	for _, a := range rd.Send {
		if a.Keepalive {
			continue
		}
		c, natt := g.ikeC, false
		if a.Local.Port() == g.nattL.Port() {
			c, natt = g.nattC, true
		}
		for _, m := range a.Messages {
			if natt {
				m = append([]byte{0, 0, 0, 0}, m...)
			}
			if _, err := c.WriteToUDPAddrPort(m, a.Remote); err != nil {
				f.sendDrops.Add(1)
			}
		}
	}
	for _, a := range rd.Events {
		switch a.Kind {
		case ike.EventIKEEstablished:
			if t, ok := g.starts[a.SPIi]; ok {
				now := time.Now()
				delete(g.starts, a.SPIi)
				g.established[a.SPIi] = true
				f.mu.Lock()
				f.lat = append(f.lat, now.Sub(t))
				if now.After(f.lastUp) {
					f.lastUp = now
				}
				f.mu.Unlock()
				f.up.Add(1)
				if f.churn.Load() {
					g.churned = append(g.churned, a.SPIi)
				}
			}
		case ike.EventIKEFailed:
			if _, ok := g.starts[a.SPIi]; ok {
				delete(g.starts, a.SPIi)
				reason := a.Reason
				if a.Notify != 0 {
					reason = a.Notify.String()
				}
				f.mu.Lock()
				f.failures[reason]++
				f.mu.Unlock()
				f.fail.Add(1)
			}
		case ike.EventIKEDeleted:
			if g.established[a.SPIi] {
				delete(g.established, a.SPIi)
				f.deleted.Add(1)
			}
		}
	}
}

// start initiates gateway n (1-based) in its group.
func (f *fleet) start(n int) {
	g := f.groups[n%len(f.groups)]
	id, _ := ike.ParseIdentity(gatewayID(n))
	remoteNATT := f.o.serverNATT
	ini := ike.Initiation{Local: g.ikeL, Remote: f.o.server, Creds: ike.Credentials{ID: id},
		PSK: []byte(gatewayPSK(n)), IKEProposals: []ike.ProposalSpec{f.o.proposal}, ESPProposals: []ike.ProposalSpec{f.o.esp},
		TSi: []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))}, TSr: f.o.remoteTS,
		RequestVIP: true, RemoteNATT: remoteNATT}
	f.started.Add(1)
	g.cmds <- func(rd *ike.Ready) {
		now := time.Now()
		spi, err := g.eng.Initiate(now, ini, rd)
		if err != nil {
			f.mu.Lock()
			f.failures["initiate: "+err.Error()]++
			f.mu.Unlock()
			f.fail.Add(1)
			return
		}
		g.starts[spi] = now
	}
}

// run starts gateways first..first+count-1 at rate per second (0: all at
// once) and waits until each has established or failed, or until timeout.
func (f *fleet) runSetups(ctx context.Context, first, count int, rate float64, timeout time.Duration) error {
	want := f.up.Load() + f.fail.Load() + int64(count)
	start := time.Now()
	for i := 0; i < count; i++ {
		if rate > 0 {
			at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(at); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		f.start(first + i)
	}
	deadline := start.Add(timeout)
	for f.up.Load()+f.fail.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d handshakes unfinished after %v; initiator states %v", want-f.up.Load()-f.fail.Load(), count, timeout, f.pendingStates())
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// runChurn is runSetups with each SA deleted as soon as it is
// established; it also waits for the node to confirm those deletes. The
// number of SAs held stays where it was (plus those in flight).
func (f *fleet) runChurn(ctx context.Context, first, count int, rate float64, timeout time.Duration) error {
	up0, del0 := f.up.Load(), f.deleted.Load()
	f.churn.Store(true)
	defer f.churn.Store(false)
	start := time.Now()
	if err := f.runSetups(ctx, first, count, rate, timeout); err != nil {
		return err
	}
	return f.waitDeleted(ctx, del0+f.up.Load()-up0, start.Add(timeout), timeout)
}

// pendingStates counts the unfinished handshakes by their SA's state.
func (f *fleet) pendingStates() map[string]int {
	states := map[string]int{}
	for _, g := range f.groups {
		done := make(chan struct{})
		g.cmds <- func(*ike.Ready) {
			for spi := range g.starts {
				if sa := g.eng.SA(spi); sa != nil {
					states[sa.State()]++
				} else {
					states["gone"]++
				}
			}
			close(done)
		}
		<-done
	}
	return states
}

// deleteAll deletes every established SA and waits for the node's answers.
func (f *fleet) deleteAll(ctx context.Context, timeout time.Duration) error {
	want := f.deleted.Load()
	for _, g := range f.groups {
		done := make(chan int)
		g.cmds <- func(rd *ike.Ready) {
			now := time.Now()
			for spi := range g.established {
				g.eng.Delete(now, spi, rd)
			}
			done <- len(g.established)
		}
		want += int64(<-done)
	}
	return f.waitDeleted(ctx, want, time.Now().Add(timeout), timeout)
}

// waitDeleted waits until the node has confirmed want deletes in all, or
// deadline (timeout after the wait's start, for the error) has passed.
func (f *fleet) waitDeleted(ctx context.Context, want int64, deadline time.Time, timeout time.Duration) error {
	for f.deleted.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d deletes unanswered after %v", want-f.deleted.Load(), timeout)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// phase returns and resets the latencies and failures collected since the
// last call.
func (f *fleet) phase() (lat []time.Duration, last time.Time, failures map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lat, last, failures = f.lat, f.lastUp, f.failures
	f.lat, f.lastUp, f.failures = nil, time.Time{}, map[string]int{}
	return
}

func (f *fleet) stats() (retransmits uint64) {
	for _, g := range f.groups {
		done := make(chan uint64)
		g.cmds <- func(*ike.Ready) { done <- g.eng.Stats().Retransmits }
		retransmits += <-done
	}
	return
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
