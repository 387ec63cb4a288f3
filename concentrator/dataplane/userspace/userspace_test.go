package userspace

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/esp"
)

// memDevice is an in-memory TUN: the test writes packets "from the host"
// into toDP and reads what the data plane delivers from fromDP.
type memDevice struct {
	name      string
	toDP      chan []byte
	fromDP    chan []byte
	closeOnce sync.Once
	closed    chan struct{}
}

func newMemDevice(name string) *memDevice {
	return &memDevice{name: name, toDP: make(chan []byte, 64), fromDP: make(chan []byte, 64), closed: make(chan struct{})}
}

func (m *memDevice) Name() string { return m.name }
func (m *memDevice) Read(b []byte) (int, error) {
	select {
	case p := <-m.toDP:
		return copy(b, p), nil
	case <-m.closed:
		return 0, errClosed
	}
}
func (m *memDevice) Write(b []byte) (int, error) {
	m.fromDP <- bytes.Clone(b)
	return len(b), nil
}
func (m *memDevice) Close() error { m.closeOnce.Do(func() { close(m.closed) }); return nil }

// wire delivers datagrams sent by one data plane to another's HandleESP,
// optionally duplicating each (to exercise the replay window).
type wire struct {
	mu        sync.Mutex
	to        *DataPlane
	duplicate bool
	noRecord  bool // benchmarks: keep nothing
	sent      [][]byte
}

func (w *wire) SendUDP(b []byte, local, remote netip.AddrPort) error {
	if w.noRecord {
		w.to.HandleESP(b, remote, local)
		return nil
	}
	w.mu.Lock()
	w.sent = append(w.sent, bytes.Clone(b))
	dup := w.duplicate
	w.mu.Unlock()
	w.to.HandleESP(b, remote, local)
	if dup {
		w.to.HandleESP(b, remote, local)
	}
	return nil
}

type fakeRouter struct {
	mu     sync.Mutex
	routes map[netip.Prefix]int
	adds   int
	dels   int
}

func (r *fakeRouter) AddRoute(p netip.Prefix, _ []dataplane.Selector) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes = map[netip.Prefix]int{}
	}
	r.routes[p]++
	r.adds++
	return nil
}

func (r *fakeRouter) DelRoute(p netip.Prefix) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.routes, p)
	r.dels++
	return nil
}

func sel(p string) dataplane.Selector {
	pf := netip.MustParsePrefix(p)
	return dataplane.Selector{Start: pf.Masked().Addr(), End: lastAddr(pf), EndPort: 0xffff}
}

var (
	concAddr = netip.MustParseAddrPort("192.168.100.2:4500")
	gwAddr   = netip.MustParseAddrPort("192.168.100.1:61000")
)

// childPair returns the two views of one CHILD SA: the concentrator's
// (local 10.30.0.0/24) and the gateway's (local 10.20.0.0/24).
func childPair(inSPI, outSPI uint32, seed byte) (conc, gw *dataplane.ChildSA) {
	key := func(s byte) []byte {
		k := make([]byte, 36)
		for i := range k {
			k[i] = s + byte(i)
		}
		return k
	}
	k1, k2 := dataplane.Keys{Encr: key(seed)}, dataplane.Keys{Encr: key(seed + 100)}
	conc = &dataplane.ChildSA{InSPI: inSPI, OutSPI: outSPI, Local: concAddr, Remote: gwAddr, Encap: true,
		EncrID: esp.EncrAESGCM16, EncrKeyBits: 256, In: k1, Out: k2,
		LocalTS: []dataplane.Selector{sel("10.30.0.0/24")}, RemoteTS: []dataplane.Selector{sel("10.20.0.0/24")}, PeerID: "gw1"}
	gw = &dataplane.ChildSA{InSPI: outSPI, OutSPI: inSPI, Local: gwAddr, Remote: concAddr, Encap: true,
		EncrID: esp.EncrAESGCM16, EncrKeyBits: 256, In: k2, Out: k1,
		LocalTS: conc.RemoteTS, RemoteTS: conc.LocalTS, PeerID: "conc"}
	return conc, gw
}

type rig struct {
	conc, gw       *DataPlane
	concDev, gwDev *memDevice
	concWire       *wire // conc → gw
	gwWire         *wire // gw → conc
	router         *fakeRouter
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{concDev: newMemDevice("conc0"), gwDev: newMemDevice("gw0"), router: &fakeRouter{}}
	var err error
	if r.conc, err = New(Config{Device: r.concDev, Router: r.router, Workers: 3, QueueLen: 64}); err != nil {
		t.Fatal(err)
	}
	if r.gw, err = New(Config{Device: r.gwDev, Workers: 2}); err != nil {
		t.Fatal(err)
	}
	r.concWire, r.gwWire = &wire{to: r.gw}, &wire{to: r.conc}
	r.conc.SetSender(r.concWire)
	r.gw.SetSender(r.gwWire)
	t.Cleanup(func() { r.conc.Close(); r.gw.Close() })
	return r
}

func ipv4Packet(src, dst string, proto uint8, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	copy(p[20:], payload)
	return p
}

func recv(t *testing.T, ch chan []byte) []byte {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no packet delivered")
		return nil
	}
}

func waitDrops(t *testing.T, d *DataPlane, reason string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.Stats().Drops[reason] < want {
		if time.Now().After(deadline) {
			t.Fatalf("drops %v, want %s >= %d", d.Stats().Drops, reason, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTunnel: packets written into one side's TUN come out of the other's,
// both ways, as ESP-in-UDP with the SA's SPI; counters count them.
func TestTunnel(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000001, 0x61000001, 1)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	if got := r.router.routes; len(got) != 1 || got[netip.MustParsePrefix("10.20.0.0/24")] != 1 {
		t.Fatalf("routes %v, want 10.20.0.0/24", got)
	}
	for i, size := range []int{0, 36, 1000, 1372} {
		up := ipv4Packet("10.20.0.1", "10.30.0.1", 1, bytes.Repeat([]byte{byte(i)}, size))
		r.gwDev.toDP <- up
		if got := recv(t, r.concDev.fromDP); !bytes.Equal(got, up) {
			t.Fatalf("gw→conc packet %d differs", i)
		}
		down := ipv4Packet("10.30.0.1", "10.20.0.1", 17, bytes.Repeat([]byte{byte(i + 1)}, size))
		r.concDev.toDP <- down
		if got := recv(t, r.gwDev.fromDP); !bytes.Equal(got, down) {
			t.Fatalf("conc→gw packet %d differs", i)
		}
	}
	r.concWire.mu.Lock()
	for _, b := range r.concWire.sent {
		if h, err := esp.ParseHeader(b); err != nil || h.SPI != cc.OutSPI {
			t.Errorf("conc sent %x...: header %+v %v, want SPI %08x", b[:8], h, err, cc.OutSPI)
		}
	}
	r.concWire.mu.Unlock()
	// The sender counts after SendUDP returns, which may be after the
	// far side delivered the packet: wait for the counters to settle.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cs, _ := r.conc.Counters(ctx)
		if len(cs) == 1 && cs[0].InPackets == 4 && cs[0].OutPackets == 4 && cs[0].InBytes == 4*20+2408 && cs[0].OutBytes == 4*20+2408 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("conc counters %+v", cs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c, err := r.conc.Counter(ctx, cc.InSPI); err != nil || c.InPackets != 4 {
		t.Fatalf("Counter: %+v %v", c, err)
	}
	if _, err := r.conc.Counter(ctx, 1); err == nil {
		t.Fatal("Counter of an SA that is not installed")
	}
	if drops := r.conc.Stats().Drops; len(drops) != 0 {
		t.Fatalf("conc drops %v", drops)
	}
	// Report's totals include SAs that are gone: they never go down.
	want := dataplane.Report{InBytes: 4*20 + 2408, OutBytes: 4*20 + 2408, InPackets: 4, OutPackets: 4}
	for _, step := range []string{"installed", "removed"} {
		rep, err := r.conc.Report(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.InBytes != want.InBytes || rep.OutBytes != want.OutBytes || rep.InPackets != want.InPackets || rep.OutPackets != want.OutPackets {
			t.Fatalf("%s: Report %+v, want totals %+v", step, rep, want)
		}
		if len(rep.Drops) != int(numDropReasons) || rep.Drops["no_sa"] != 0 {
			t.Fatalf("%s: Report drops %v, want every reason at 0", step, rep.Drops)
		}
		if err := r.conc.Remove(ctx, cc.InSPI); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDrops: no SA, replayed, forged and out-of-selector packets are
// dropped and counted by reason; nothing reaches the TUN.
func TestDrops(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000002, 0x61000002, 2)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	// No SA for this destination.
	r.concDev.toDP <- ipv4Packet("10.30.0.1", "10.99.0.1", 1, nil)
	waitDrops(t, r.conc, "no_sa", 1)
	// Unknown SPI.
	r.conc.HandleESP([]byte{1, 2, 3, 4, 0, 0, 0, 1, 9, 9}, concAddr, gwAddr)
	waitDrops(t, r.conc, "no_sa", 2)
	// Replayed: the wire delivers every packet twice.
	r.gwWire.duplicate = true
	up := ipv4Packet("10.20.0.1", "10.30.0.1", 1, []byte("ping"))
	r.gwDev.toDP <- up
	recv(t, r.concDev.fromDP)
	waitDrops(t, r.conc, "replay", 1)
	r.gwWire.duplicate = false
	// Forged: a flipped ciphertext bit.
	o, _ := esp.NewOutbound(esp.Config{SPI: cc.InSPI, EncrID: esp.EncrAESGCM16, EncrKey: cc.In.Encr})
	o.SetSeq(100)
	pkt, _ := o.AppendSeal(nil, up, esp.NextHeaderIPv4)
	bad := bytes.Clone(pkt)
	bad[20] ^= 1
	r.conc.HandleESP(bad, concAddr, gwAddr)
	waitDrops(t, r.conc, "integrity", 1)
	// Authentic but outside the selectors: source 10.21.0.1.
	pkt, _ = o.AppendSeal(nil, ipv4Packet("10.21.0.1", "10.30.0.1", 1, nil), esp.NextHeaderIPv4)
	r.conc.HandleESP(pkt, concAddr, gwAddr)
	waitDrops(t, r.conc, "selector", 1)
	// A TFC dummy packet.
	pkt, _ = o.AppendSeal(nil, nil, esp.NextHeaderDummy)
	r.conc.HandleESP(pkt, concAddr, gwAddr)
	waitDrops(t, r.conc, "dummy", 1)
	select {
	case p := <-r.concDev.fromDP:
		t.Fatalf("a dropped packet reached the TUN: %x", p)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestRekeyKeepsRoutes: a CHILD rekey installs the new SA before removing
// the old; the route stays throughout, outbound moves to the newest SA, and
// the last removal deletes the route.
func TestRekeyKeepsRoutes(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	old, gold := childPair(0xc1000003, 0x61000003, 3)
	nw, gnew := childPair(0xc1000004, 0x61000004, 4)
	for _, c := range []*dataplane.ChildSA{old, nw} {
		if err := r.conc.Install(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*dataplane.ChildSA{gold, gnew} {
		if err := r.gw.Install(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.conc.Install(ctx, old); err != nil { // idempotent
		t.Fatal(err)
	}
	if r.router.adds != 1 {
		t.Fatalf("%d route adds, want 1", r.router.adds)
	}
	r.concDev.toDP <- ipv4Packet("10.30.0.1", "10.20.0.7", 6, make([]byte, 20))
	recv(t, r.gwDev.fromDP)
	r.concWire.mu.Lock()
	last := r.concWire.sent[len(r.concWire.sent)-1]
	r.concWire.mu.Unlock()
	if h, _ := esp.ParseHeader(last); h.SPI != nw.OutSPI {
		t.Fatalf("outbound SPI %08x, want the new SA's %08x", h.SPI, nw.OutSPI)
	}
	if err := r.conc.Remove(ctx, old.InSPI); err != nil {
		t.Fatal(err)
	}
	if r.router.dels != 0 || len(r.router.routes) != 1 {
		t.Fatalf("route removed while the new SA needs it: %v", r.router.routes)
	}
	if err := r.conc.Remove(ctx, nw.InSPI); err != nil {
		t.Fatal(err)
	}
	if err := r.conc.Remove(ctx, nw.InSPI); err != nil { // idempotent
		t.Fatal(err)
	}
	if r.router.dels != 1 || len(r.router.routes) != 0 {
		t.Fatalf("routes %v after removing both SAs", r.router.routes)
	}
	l, _ := r.conc.List(ctx)
	if len(l) != 0 {
		t.Fatalf("List after removal: %d SAs", len(l))
	}
}

func TestVirtualIPRoute(t *testing.T) {
	r := newRig(t)
	cc, _ := childPair(0xc1000005, 0x61000005, 5)
	cc.RemoteTS = []dataplane.Selector{sel("10.99.0.7/32")}
	cc.VirtualIP = netip.MustParseAddr("10.99.0.7")
	if err := r.conc.Install(context.Background(), cc); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.router.routes[netip.MustParsePrefix("10.99.0.7/32")]; !ok || len(r.router.routes) != 1 {
		t.Fatalf("routes %v", r.router.routes)
	}
	if s := r.conc.lookupOut(flow{src: netip.MustParseAddr("10.30.0.1"), dst: cc.VirtualIP, proto: 1}); s == nil || s.in.SPI() != cc.InSPI {
		t.Fatal("virtual IP not found by the host index")
	}
}

// A virtual IP inside the pool routed at start (Config.Routes) costs no
// route of its own, at install or removal; one outside it still does.
func TestPoolRouteCoversVirtualIPs(t *testing.T) {
	router := &fakeRouter{}
	pool := netip.MustParsePrefix("10.99.0.0/16")
	d, err := New(Config{Device: newMemDevice("conc0"), Router: router, Workers: 1, Routes: []netip.Prefix{pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if router.adds != 1 || router.routes[pool] != 1 {
		t.Fatalf("routes %v after start, want the pool", router.routes)
	}
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		cc, _ := childPair(0xc2000000+uint32(i), 0x62000000+uint32(i), byte(i))
		vip := netip.AddrFrom4([4]byte{10, 99, 1, byte(i)})
		cc.RemoteTS = []dataplane.Selector{sel(vip.String() + "/32")}
		cc.VirtualIP = vip
		if err := d.Install(ctx, cc); err != nil {
			t.Fatal(err)
		}
		if s := d.lookupOut(flow{src: netip.MustParseAddr("10.30.0.1"), dst: vip, proto: 1}); s == nil || s.in.SPI() != cc.InSPI {
			t.Fatalf("virtual IP %s not found", vip)
		}
	}
	for i := 0; i < 50; i++ {
		if err := d.Remove(ctx, 0xc2000000+uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	if router.adds != 1 || router.dels != 0 {
		t.Fatalf("%d route adds and %d removals for 50 virtual IPs in the pool, want the pool's one add", router.adds, router.dels)
	}
	out, _ := childPair(0xc3000000, 0x63000000, 9)
	out.RemoteTS = []dataplane.Selector{sel("10.98.0.1/32")}
	if err := d.Install(ctx, out); err != nil {
		t.Fatal(err)
	}
	if router.adds != 2 || router.routes[netip.MustParsePrefix("10.98.0.1/32")] != 1 {
		t.Fatalf("routes %v: a selector outside the pool needs its own route", router.routes)
	}
}

func TestInstallErrors(t *testing.T) {
	r := newRig(t)
	cc, _ := childPair(0xc1000006, 0x61000006, 6)
	cc.Encap = false
	if err := r.conc.Install(context.Background(), cc); err == nil {
		t.Fatal("SA without UDP encapsulation installed")
	}
	cc.Encap = true
	cc.In.Encr = cc.In.Encr[:10]
	if err := r.conc.Install(context.Background(), cc); err == nil {
		t.Fatal("SA with a short key installed")
	}
	r.conc.Close()
	if err := r.conc.Install(context.Background(), cc); err == nil {
		t.Fatal("install after Close")
	}
}

func TestPrefixes(t *testing.T) {
	for _, c := range []struct {
		start, end string
		want       []string
	}{
		{"10.20.0.0", "10.20.0.255", []string{"10.20.0.0/24"}},
		{"10.0.0.1", "10.0.0.1", []string{"10.0.0.1/32"}},
		{"10.0.0.1", "10.0.0.6", []string{"10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"}},
		{"0.0.0.0", "255.255.255.255", []string{"0.0.0.0/0"}},
		{"fd00::", "fd00::ffff", []string{"fd00::/112"}},
	} {
		var got []string
		for _, p := range prefixes(dataplane.Selector{Start: netip.MustParseAddr(c.start), End: netip.MustParseAddr(c.end)}) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s..%s: %v, want %v", c.start, c.end, got, c.want)
		}
	}
}

func TestParseFlow(t *testing.T) {
	p := ipv4Packet("10.0.0.1", "10.0.0.2", 17, []byte{0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0})
	f, ok := parseFlow(p)
	if !ok || f.src.String() != "10.0.0.1" || f.dst.String() != "10.0.0.2" || f.proto != 17 || f.srcPort != 0x1234 || f.dstPort != 53 {
		t.Fatalf("%+v %v", f, ok)
	}
	for _, bad := range [][]byte{nil, {0x45}, p[:19], {0x75, 0, 0, 0}} {
		if _, ok := parseFlow(bad); ok {
			t.Errorf("%x parsed", bad)
		}
	}
}

// TestUpdateAddresses: a moved SA sends to the new peer address and keeps
// its sequence numbers (a reinstall would restart at 1 and the peer's
// replay window would drop everything).
func TestUpdateAddresses(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000007, 0x61000007, 7)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	var dsts []netip.AddrPort
	var mu sync.Mutex
	r.conc.SetSender(senderFunc(func(b []byte, local, remote netip.AddrPort) error {
		mu.Lock()
		dsts = append(dsts, remote)
		mu.Unlock()
		return r.concWire.SendUDP(b, local, remote)
	}))
	down := ipv4Packet("10.30.0.1", "10.20.0.1", 1, []byte("x"))
	r.concDev.toDP <- down
	recv(t, r.gwDev.fromDP)
	moved := netip.MustParseAddrPort("192.168.100.1:62000")
	if err := r.conc.UpdateAddresses(ctx, cc.InSPI, concAddr, moved); err != nil {
		t.Fatal(err)
	}
	r.concDev.toDP <- down
	recv(t, r.gwDev.fromDP) // seq 2 accepted by the peer's window
	mu.Lock()
	defer mu.Unlock()
	if len(dsts) != 2 || dsts[0] != gwAddr || dsts[1] != moved {
		t.Fatalf("sent to %v, want %v then %v", dsts, gwAddr, moved)
	}
	if err := r.conc.UpdateAddresses(ctx, 0x12345678, concAddr, moved); err == nil {
		t.Fatal("moved an SA that is not installed")
	}
	l, _ := r.conc.List(ctx)
	if len(l) != 1 || l[0].Remote != moved {
		t.Fatalf("List: %+v", l)
	}
}

type senderFunc func(b []byte, local, remote netip.AddrPort) error

func (f senderFunc) SendUDP(b []byte, local, remote netip.AddrPort) error { return f(b, local, remote) }

// TestExpiries: an SA close to the end of its 32-bit sequence space is
// reported for rekeying (soft, once), one past it as unusable (hard).
func TestExpiries(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000002, 0x61000002, 3)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	r.conc.mu.RLock()
	s := r.conc.bySPI[cc.InSPI]
	r.conc.mu.RUnlock()
	expect := func(hard bool) {
		t.Helper()
		select {
		case ex := <-r.conc.Expiries():
			if ex.InSPI != cc.InSPI || ex.Hard != hard {
				t.Fatalf("expiry %+v, want SPI %08x hard=%v", ex, cc.InSPI, hard)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no expiry (hard=%v)", hard)
		}
	}
	down := ipv4Packet("10.30.0.1", "10.20.0.1", 17, []byte("x"))
	s.out.SetSeq(softSeqLimit - 1)
	for i := 0; i < 3; i++ {
		r.concDev.toDP <- down
		recv(t, r.gwDev.fromDP)
	}
	expect(false)
	s.out.SetSeq(1<<32 - 2)
	r.concDev.toDP <- down // the last sequence number: delivered
	recv(t, r.gwDev.fromDP)
	r.concDev.toDP <- down // none left
	expect(true)
	select {
	case ex := <-r.conc.Expiries():
		t.Fatalf("expiry reported twice: %+v", ex)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestMappingReports: authenticated ESP from a new address of an
// encapsulated SA is reported once (rate-limited), forged ESP from
// anywhere never.
func TestMappingReports(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000009, 0x61000009, 9)
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	reports := make(chan dataplane.Mapping, 16)
	r.conc.OnMapping(func(m dataplane.Mapping) { reports <- m })
	moved := netip.MustParseAddrPort("192.168.100.1:62001")
	// Forged ESP with the SA's SPI from the new address: not reported.
	forged := make([]byte, 64)
	binary.BigEndian.PutUint32(forged, cc.InSPI)
	binary.BigEndian.PutUint32(forged[4:], 1)
	r.conc.HandleESP(forged, concAddr, moved)
	waitDrops(t, r.conc, "integrity", 1)
	// The gateway's NAT re-maps it: its ESP now comes from moved.
	r.gw.SetSender(senderFunc(func(b []byte, local, remote netip.AddrPort) error {
		r.conc.HandleESP(b, remote, moved)
		return nil
	}))
	for i := 0; i < 3; i++ {
		r.gwDev.toDP <- ipv4Packet("10.20.0.1", "10.30.0.1", 1, []byte{byte(i)})
		recv(t, r.concDev.fromDP)
	}
	select {
	case m := <-reports:
		if m.InSPI != cc.InSPI || m.Remote != moved {
			t.Fatalf("report %+v, want %08x from %v", m, cc.InSPI, moved)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no mapping report")
	}
	if len(reports) != 0 || r.conc.Stats().Mappings != 1 {
		t.Fatalf("%d more reports within a second, %d counted", len(reports), r.conc.Stats().Mappings)
	}
}

// SAs with the same local selectors share one slice of them; an SA with
// others keeps its own, and the next one like the first shares again.
func TestSAsShareTheirLocalSelectors(t *testing.T) {
	r := newRig(t)
	wide := []dataplane.Selector{sel("0.0.0.0/0")}
	install := func(n uint32, local []dataplane.Selector) *sa {
		t.Helper()
		cc, _ := childPair(0xc2000000+n, 0x62000000+n, byte(n))
		cc.LocalTS = slices.Clone(local)
		if err := r.conc.Install(context.Background(), cc); err != nil {
			t.Fatal(err)
		}
		r.conc.mu.RLock()
		defer r.conc.mu.RUnlock()
		return r.conc.bySPI[cc.InSPI]
	}
	a, b := install(1, wide), install(2, wide)
	if &a.localTS[0] != &b.localTS[0] || cap(a.localTS) != len(a.localTS) {
		t.Fatalf("the same local selectors are kept twice (cap %d)", cap(a.localTS))
	}
	c := install(3, []dataplane.Selector{sel("10.1.0.0/16")})
	d := install(4, wide)
	if &c.localTS[0] == &a.localTS[0] || c.localTS[0] != sel("10.1.0.0/16") || d.localTS[0] != wide[0] || a.localTS[0] != wide[0] {
		t.Fatalf("selectors mixed up: %v %v %v", a.localTS, c.localTS, d.localTS)
	}
}
