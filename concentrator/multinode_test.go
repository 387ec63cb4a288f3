package concentrator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/statestore"
)

// memGateway is a simulated IoT gateway (our initiator engine) on an
// in-memory network, driven by the same fake clock as the nodes.
type memGateway struct {
	t      testing.TB
	eng    *ike.Engine
	clk    *clock.Fake
	ike    transport.Conn
	natt   transport.Conn
	pkts   chan ike.Packet
	calls  chan func()
	events chan ike.Event
	netw   *transport.Network
	// lastRecv: real time (UnixNano) of the last datagram received.
	lastRecv atomic.Int64
	// established counts IKE SAs established (1 unless it re-authenticated).
	established atomic.Int64
}

func (g *memGateway) netwStats() (uint64, uint64) { return g.netw.Stats() }

func startMemGateway(t testing.TB, ctx context.Context, netw *transport.Network, clk *clock.Fake, addr netip.Addr, opts ...func(*ike.Config)) *memGateway {
	t.Helper()
	ikeC, err := netw.Listen(netip.AddrPortFrom(addr, 500))
	if err != nil {
		t.Fatal(err)
	}
	nattC, err := netw.Listen(netip.AddrPortFrom(addr, 4500))
	if err != nil {
		t.Fatal(err)
	}
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	ecfg := ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 4500, Rand: rand.Reader, ForceEncap: true}
	for _, o := range opts {
		o(&ecfg)
	}
	eng, err := ike.NewEngine(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	g := &memGateway{t: t, eng: eng, clk: clk, ike: ikeC, natt: nattC,
		pkts: make(chan ike.Packet, 64), calls: make(chan func()), events: make(chan ike.Event, 64), netw: netw}
	read := func(c transport.Conn, natt bool) {
		buf := make([]byte, 65535)
		for {
			nb, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			g.lastRecv.Store(time.Now().UnixNano())
			b := buf[:nb]
			if natt {
				if nb < 4 || binary.BigEndian.Uint32(b) != 0 {
					continue // keepalive or ESP
				}
				b = b[4:]
			}
			g.pkts <- ike.Packet{Local: c.LocalAddr(), Remote: from, Data: append([]byte(nil), b...)}
		}
	}
	go read(ikeC, false)
	go read(nattC, true)
	t.Cleanup(func() { ikeC.Close(); nattC.Close() })
	go g.loop(ctx)
	return g
}

func (g *memGateway) loop(ctx context.Context) {
	timer := g.clk.NewTimer(time.Hour)
	defer timer.Stop()
	var rd ike.Ready
	for {
		rd.Reset()
		select {
		case <-ctx.Done():
			return
		case p := <-g.pkts:
			g.eng.Handle(g.clk.Now(), p, &rd)
		case <-timer.C():
			g.eng.Tick(g.clk.Now(), &rd)
		case f := <-g.calls:
			f()
			continue
		}
		g.perform(&rd)
		if d := g.eng.NextDeadline(g.clk.Now()); !d.IsZero() {
			timer.ResetAt(d)
		}
	}
}

// perform applies a batch: the gateway keeps no state store, so every
// change counts as committed at once.
func (g *memGateway) perform(rd *ike.Ready) {
	for _, p := range rd.Persist {
		g.eng.Committed(p.SPI, p.Version)
	}
	for _, a := range rd.Send {
		c, natt := g.ike, false
		if a.Local.Port() == 4500 {
			c, natt = g.natt, true
		}
		if a.Keepalive {
			g.natt.WriteTo([]byte{0xff}, a.Remote)
			continue
		}
		for _, m := range a.Messages {
			if natt {
				m = append([]byte{0, 0, 0, 0}, m...)
			}
			c.WriteTo(m, a.Remote)
		}
	}
	for _, ev := range rd.Events {
		if ev.Kind == ike.EventIKEEstablished {
			g.established.Add(1)
		}
		select {
		case g.events <- ev:
		default:
		}
	}
}

// gatewayInitiation is gateway n's IKE SA to the node at server.
func gatewayInitiation(g *memGateway, server netip.Addr, n int) ike.Initiation {
	id, _ := ike.ParseIdentity(fmt.Sprintf("gw%d@iot.example", n))
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	return ike.Initiation{Local: g.ike.LocalAddr(), Remote: netip.AddrPortFrom(server, 500),
		Creds: ike.Credentials{ID: id}, PSK: []byte(fmt.Sprintf("psk-0123456789ab-%d", n)),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, RemoteNATT: 4500}
}

// initiate starts ini on the gateway's engine and does not wait.
func (g *memGateway) initiate(ini ike.Initiation) {
	g.t.Helper()
	errc := make(chan error, 1)
	g.calls <- func() {
		var rd ike.Ready
		_, err := g.eng.Initiate(g.clk.Now(), ini, &rd)
		g.perform(&rd)
		errc <- err
	}
	if err := <-errc; err != nil {
		g.t.Fatal(err)
	}
}

// connect initiates an IKE SA to the node at server as gateway n and
// waits until it is established.
func (g *memGateway) connect(ctx context.Context, server netip.Addr, n int) {
	g.t.Helper()
	g.initiate(gatewayInitiation(g, server, n))
	for {
		select {
		case ev := <-g.events:
			switch ev.Kind {
			case ike.EventIKEEstablished:
				return
			case ike.EventIKEFailed:
				g.t.Fatalf("gateway %d: %v %s", n, ev.Notify, ev.Reason)
			}
		case <-ctx.Done():
			g.t.Fatalf("gateway %d: not established", n)
		}
	}
}

// Two nodes and two gateways on one in-memory network, with one embedded
// etcd and a fake clock: each node registers under its own slot, persists
// the SA it serves under its own ownership, and an hour of fake time
// later has rekeyed its CHILD SA with the gateway (and persisted that),
// all without a socket or a real wait.
func TestTwoNodesOnMemoryNetwork(t *testing.T) {
	etcd, err := statestore.StartEmbedded(statestore.EmbedConfig{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	keyDir := t.TempDir()
	if _, err := statestore.LoadKeyFile(filepath.Join(keyDir, "cluster.key"), true); err != nil { // generates the shared key
		t.Fatal(err)
	}
	keyFile := filepath.Join(keyDir, "cluster.key")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	netw := transport.NewNetwork()
	clk := clock.NewFake(time.Now().Truncate(time.Millisecond))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	type member struct {
		n    *Node
		dp   *memory.DataPlane
		addr netip.Addr
	}
	var nodes []member
	for i, id := range []string{"a", "b"} {
		addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
		text := nodeConfig(2, "", fmt.Sprintf("statestore:\n  mode: external\n  endpoints: [%s]\n  cluster_key_file: %s\n  data_dir: %s\n  lease_ttl: 5s\n",
			etcd.Endpoints()[0], keyFile, filepath.Join(keyDir, "node-"+id)))
		text = replaceOnce(t, text, "node: {id: test}", "node: {id: "+id+"}")
		text = replaceOnce(t, text, "listen: [127.0.0.1]\n  port: 0\n  natt_port: 0", "listen: ["+addr.String()+"]\n  port: 500\n  natt_port: 4500")
		cfg, err := ParseConfig([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		dp := memory.New()
		n, err := New(cfg, log.With("node", id), dp, WithTransport(netw), WithClock(clk))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		rctx, stop := context.WithCancel(ctx)
		go func() { done <- n.Run(rctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("node %s: %v", id, err)
			}
		})
		select {
		case <-n.Ready():
		case err := <-done:
			t.Fatalf("node %s did not start: %v", id, err)
		}
		if got := n.IKEAddr(); got != netip.AddrPortFrom(addr, 500) {
			t.Fatalf("node %s bound %v", id, got)
		}
		nodes = append(nodes, member{n, dp, addr})
	}

	// Gateway i+1 connects to node i.
	for i, m := range nodes {
		g := startMemGateway(t, ctx, netw, clk, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}))
		g.connect(ctx, m.addr, i+1)
	}
	// Each node holds one SA, persisted, owned by it, with its own slot
	// in the SPI.
	before := map[string]SAInfo{}
	slots := map[uint64]bool{}
	for _, m := range nodes {
		if err := m.n.persist.store.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		sas, err := m.n.SAs(ctx)
		if err != nil || len(sas) != 1 || sas[0].State != "ESTABLISHED" || len(sas[0].Children) != 1 || m.dp.Len() != 1 {
			t.Fatalf("node %s: %+v %v (data plane %d)", m.n.nodeID, sas, err, m.dp.Len())
		}
		sa := sas[0]
		before[m.n.nodeID] = sa
		slots[sa.SPIr>>slotShift] = true
		_, owner, err := m.n.persist.store.Load(ctx, sa.SPIr)
		if err != nil || owner.Node != m.n.nodeID {
			t.Fatalf("SA %016x of node %s: owner %v, %v", sa.SPIr, m.n.nodeID, owner, err)
		}
	}
	if len(slots) != 2 {
		t.Fatalf("both nodes put the same slot into their SPIs: %v", slots)
	}
	// Each gateway's virtual IP was leased to it with its SA (from the
	// node's reservations), distinct across the nodes.
	vips := map[netip.Addr]string{}
	for id, sa := range before {
		vip := sa.Children[0].VirtualIP
		st := nodes[0].n.persist.store.(*statestore.Store)
		got, ok, err := st.AddressOf(ctx, sa.PeerID)
		if err != nil || !ok || got != vip {
			t.Fatalf("node %s: %s's lease %v %v %v, its SA has %v", id, sa.PeerID, got, ok, err, vip)
		}
		if other, dup := vips[vip]; dup {
			t.Fatalf("%v handed out by %s and %s", vip, other, id)
		}
		vips[vip] = id
	}

	// An hour later (fake): past children.rekey_after (50m) plus its
	// window, and the rekey overlap after it.
	clk.Advance(time.Hour)
	waitFor(t, ctx, "CHILD SAs rekeyed on both nodes", func() bool {
		for _, m := range nodes {
			sas, _ := m.n.SAs(ctx)
			if len(sas) != 1 {
				return false
			}
			rekeyed := false
			for _, c := range sas[0].Children {
				rekeyed = rekeyed || c.InSPI != before[m.n.nodeID].Children[0].InSPI
			}
			if !rekeyed {
				return false
			}
		}
		return true
	})
	clk.Advance(time.Minute) // the old CHILD SA retires after the overlap
	waitFor(t, ctx, "old CHILD SAs retired", func() bool {
		for _, m := range nodes {
			if sas, _ := m.n.SAs(ctx); len(sas) != 1 || len(sas[0].Children) != 1 || m.dp.Len() != 1 {
				return false
			}
		}
		return true
	})
	for _, m := range nodes {
		if err := m.n.persist.store.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		sas, _ := m.n.SAs(ctx)
		rec, _, err := m.n.persist.store.Load(ctx, sas[0].SPIr)
		if err != nil || len(rec.Children) != 1 || rec.Children[0].InSPI != sas[0].Children[0].InSPI {
			t.Fatalf("node %s: stored record after the rekey %+v, %v", m.n.nodeID, rec, err)
		}
		if sas[0].SPIr != before[m.n.nodeID].SPIr {
			t.Fatalf("node %s: IKE SA replaced", m.n.nodeID)
		}
	}
	if _, dropped := netw.Stats(); dropped != 0 {
		t.Fatalf("%d datagrams dropped on a lossless network", dropped)
	}
}

func replaceOnce(t testing.TB, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q not in the configuration", old)
	}
	return strings.Replace(s, old, new, 1)
}

// waitFor polls cond (real time) until it holds or ctx ends.
func waitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("never: %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
