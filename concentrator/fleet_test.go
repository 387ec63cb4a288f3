package concentrator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
)

// Implementation limits of the simulated fleet.
const (
	fleetParts     = 4       // initiator engines (and goroutines) the gateways share
	fleetPartQueue = 1 << 14 // datagrams waiting per engine
)

// gatewayFleet is many simulated gateways in one process: gateway i (0
// based) has its own address, fleetAddr(i), and its own IKE SA, so that
// ECMP hashes each one on its own and the nodes see each as a peer of
// its own; but the gateways share a few initiator engines (an engine
// holds many IKE SAs), one socket per port on the unspecified address
// (which receives for every gateway's address), and a bounded number of
// goroutines. What a test measures per gateway stays per gateway: the
// real time of the last datagram it received, and the IKE SAs it
// established.
type gatewayFleet struct {
	t     testing.TB
	netw  *transport.Network
	clk   *clock.Fake
	n     int
	parts []*fleetPart
	// Per gateway: real time (UnixNano) of the last datagram received,
	// IKE SAs established (1 unless it re-authenticated), and the SPI of
	// the IKE SA it initiated.
	lastRecv    []atomic.Int64
	established []atomic.Int64
	spi         []atomic.Uint64
}

// fleetPart is one engine, the gateways i with i%fleetParts == its
// index, and the goroutine that drives it.
type fleetPart struct {
	f     *gatewayFleet
	eng   *ike.Engine
	pkts  chan ike.Packet
	calls chan func()
	wait  map[int]chan error // gateway: dial waiting for its IKE SA (the part's goroutine only)
}

// fleetAddr is gateway i's address (100.64.0.0/10 holds 4M of them).
func fleetAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// fleetIndex is the gateway whose address a is, or -1.
func (f *gatewayFleet) index(a netip.Addr) int {
	if !a.Is4() {
		return -1
	}
	b := a.As4()
	if b[0] != 100 || b[1] < 64 || b[1] >= 128 {
		return -1
	}
	i := int(b[1]-64)<<16 | int(b[2])<<8 | int(b[3])
	if i >= f.n {
		return -1
	}
	return i
}

type readFromTo interface {
	ReadFromTo([]byte) (int, netip.AddrPort, netip.AddrPort, error)
}

// startFleet starts n gateways (not yet connected) on netw.
func startFleet(t testing.TB, ctx context.Context, netw *transport.Network, clk *clock.Fake, n int, opts ...func(*ike.Config)) *gatewayFleet {
	t.Helper()
	f := &gatewayFleet{t: t, netw: netw, clk: clk, n: n,
		lastRecv: make([]atomic.Int64, n), established: make([]atomic.Int64, n), spi: make([]atomic.Uint64, n)}
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	for range fleetParts {
		ecfg := ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 4500, Rand: rand.Reader, ForceEncap: true}
		for _, o := range opts {
			o(&ecfg)
		}
		eng, err := ike.NewEngine(ecfg)
		if err != nil {
			t.Fatal(err)
		}
		p := &fleetPart{f: f, eng: eng, pkts: make(chan ike.Packet, fleetPartQueue), calls: make(chan func()), wait: map[int]chan error{}}
		f.parts = append(f.parts, p)
		go p.loop(ctx)
	}
	for _, port := range []uint16{500, 4500} {
		c, err := netw.Listen(netip.AddrPortFrom(netip.IPv4Unspecified(), port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go f.read(c.(readFromTo), port == 4500)
	}
	return f
}

// read takes the datagrams for every gateway's address on one port.
func (f *gatewayFleet) read(c readFromTo, natt bool) {
	buf := make([]byte, 65535)
	for {
		nb, from, to, err := c.ReadFromTo(buf)
		if err != nil {
			return
		}
		i := f.index(to.Addr())
		if i < 0 {
			continue
		}
		f.lastRecv[i].Store(time.Now().UnixNano())
		b := buf[:nb]
		if natt {
			if nb < 4 || binary.BigEndian.Uint32(b) != 0 {
				continue // keepalive or ESP
			}
			b = b[4:]
		}
		f.parts[i%fleetParts].pkts <- ike.Packet{Local: to, Remote: from, Data: append([]byte(nil), b...)}
	}
}

func (p *fleetPart) loop(ctx context.Context) {
	timer := p.f.clk.NewTimer(time.Hour)
	defer timer.Stop()
	var rd ike.Ready
	for {
		rd.Reset()
		select {
		case <-ctx.Done():
			return
		case pkt := <-p.pkts:
			p.eng.Handle(p.f.clk.Now(), pkt, &rd)
		case <-timer.C():
			p.eng.Tick(p.f.clk.Now(), &rd)
		case fn := <-p.calls:
			fn() // may start an SA: its deadline counts below
		}
		p.perform(&rd)
		if d := p.eng.NextDeadline(p.f.clk.Now()); !d.IsZero() {
			timer.ResetAt(d)
		}
	}
}

// perform applies a batch: the gateways keep no state store, so every
// change counts as committed at once. Each datagram leaves from its
// gateway's address.
func (p *fleetPart) perform(rd *ike.Ready) {
	f := p.f
	for _, c := range rd.Persist {
		p.eng.Committed(c.SPI, c.Version)
	}
	for _, a := range rd.Send {
		if a.Keepalive {
			f.send(a.Local, a.Remote, []byte{0xff})
			continue
		}
		for _, m := range a.Messages {
			if a.Local.Port() == 4500 {
				m = append([]byte{0, 0, 0, 0}, m...)
			}
			f.send(a.Local, a.Remote, m)
		}
	}
	for _, ev := range rd.Events {
		i := f.index(ev.Local.Addr())
		if i < 0 {
			continue
		}
		var err error
		switch ev.Kind {
		case ike.EventIKEEstablished:
			f.established[i].Add(1)
		case ike.EventIKEFailed, ike.EventIKEDeleted:
			err = fmt.Errorf("gateway %d: %v: %v %s", i+1, ev.Kind, ev.Notify, ev.Reason)
		default:
			continue
		}
		if w := p.wait[i]; w != nil {
			w <- err
			delete(p.wait, i)
		}
	}
}

// send puts a datagram on the network. A receiver's full queue holds the
// sender back a little (as a socket's send buffer would) rather than
// dropping at once: a fleet of 100,000 answering one clock tick would
// otherwise lose most of its burst to the first queue it meets.
func (f *gatewayFleet) send(from, to netip.AddrPort, b []byte) {
	for try := 0; try < 40 && !f.netw.Inject(from, to, b); try++ {
		time.Sleep(5 * time.Millisecond)
	}
}

// do runs fn on gateway i's engine goroutine.
func (f *gatewayFleet) do(i int, fn func(p *fleetPart)) {
	p := f.parts[i%fleetParts]
	done := make(chan struct{})
	p.calls <- func() { fn(p); close(done) }
	<-done
}

// dial initiates gateway i's IKE SA (as gateway i+1 of the nodes'
// configuration) and waits until it is established.
func (f *gatewayFleet) dial(ctx context.Context, server netip.Addr, i int) error {
	id, _ := ike.ParseIdentity(fmt.Sprintf("gw%d@iot.example", i+1))
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	ini := ike.Initiation{Local: netip.AddrPortFrom(fleetAddr(i), 500), Remote: netip.AddrPortFrom(server, 500),
		Creds: ike.Credentials{ID: id}, PSK: []byte(fmt.Sprintf("psk-0123456789ab-%d", i+1)),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, RemoteNATT: 4500}
	w := make(chan error, 1)
	var err error
	f.do(i, func(p *fleetPart) {
		var rd ike.Ready
		var spi uint64
		spi, err = p.eng.Initiate(f.clk.Now(), ini, &rd)
		if err == nil {
			f.spi[i].Store(spi)
			p.wait[i] = w
		}
		p.perform(&rd)
	})
	if err != nil {
		return err
	}
	for {
		select {
		case err := <-w:
			return err
		case <-ctx.Done():
			return fmt.Errorf("gateway %d: not established: %w", i+1, ctx.Err())
		case <-time.After(time.Minute):
			state := "gone"
			f.do(i, func(p *fleetPart) {
				if sa := p.eng.SA(f.spi[i].Load()); sa != nil {
					state = sa.State()
				}
			})
			f.t.Logf("gateway %d: no IKE SA after a minute: %s", i+1, state)
		}
	}
}

// sas is every gateway's established IKE SA's responder SPI (zero if it
// has none), read with one call per engine.
func (f *gatewayFleet) sas() []uint64 {
	out := make([]uint64, f.n)
	for k, p := range f.parts {
		done := make(chan struct{})
		p.calls <- func() {
			for i := k; i < f.n; i += fleetParts {
				if sa := p.eng.SA(f.spi[i].Load()); sa != nil && sa.Established() {
					out[i] = sa.SPIr
				}
			}
			close(done)
		}
		<-done
	}
	return out
}
