package statestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func startEtcd(t testing.TB, fsync bool) *Embedded {
	t.Helper()
	e, err := StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: !fsync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func dial(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, Logger: zapNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 300 * time.Millisecond}})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testConfig(t testing.TB, id string) Config {
	return Config{NodeID: id, Instance: "instance-of-" + id, Keys: testKeyring(t, 1, 9), LeaseTTL: 5 * time.Second,
		RequestTimeout: time.Second, Log: quiet}
}

func open(t testing.TB, cli *clientv3.Client, cfg Config) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, cli, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestRegistrySlotsAndEpochs(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	oa, sa := a.Registration()
	ob, sb := b.Registration()
	if sa == sb || oa.Epoch == ob.Epoch || !a.CanSend() || !b.CanSend() {
		t.Fatalf("a %v slot %d, b %v slot %d", oa, sa, ob, sb)
	}
	if h := a.Health(); !h.Registered || !h.Reachable {
		t.Fatalf("health %+v", h)
	}
	// SPI ownership is unique cluster-wide.
	spis := []uint64{1, 2, 3, 4}
	okA, err := a.ReserveIKESPIs(tctx(t, 5*time.Second), spis)
	if err != nil {
		t.Fatal(err)
	}
	okB, err := b.ReserveIKESPIs(tctx(t, 5*time.Second), append(spis, 5))
	if err != nil {
		t.Fatal(err)
	}
	for i := range spis {
		if !okA[i] || okB[i] {
			t.Fatalf("SPI %d: a %v b %v", spis[i], okA[i], okB[i])
		}
	}
	if !okB[4] {
		t.Fatal("free SPI not reserved")
	}
	esp, _ := a.ReserveESPSPIs(tctx(t, 5*time.Second), []uint32{7})
	esp2, _ := b.ReserveESPSPIs(tctx(t, 5*time.Second), []uint32{7})
	if !esp[0] || esp2[0] {
		t.Fatalf("ESP SPI 7: a %v b %v", esp[0], esp2[0])
	}
	if _, err := a.LookupESP(tctx(t, 5*time.Second), 7); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of a reserved ESP SPI: %v", err)
	}
	ns, err := a.Nodes(tctx(t, 5*time.Second))
	if err != nil || len(ns) != 2 {
		t.Fatalf("nodes: %v %v", ns, err)
	}
	if n, err := b.Node(tctx(t, 5*time.Second), "a"); err != nil || n.Owner != oa || n.Slot != sa {
		t.Fatalf("node a: %+v %v", n, err)
	}
	if err := a.ReleaseSPIs(tctx(t, 5*time.Second), []uint64{1}, []uint32{7}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.ReserveIKESPIs(tctx(t, 5*time.Second), []uint64{1}); !ok[0] {
		t.Fatal("released SPI not free")
	}
}

func TestPersistLifecycle(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	ctx := tctx(t, 10*time.Second)
	r := sampleRecord(100)
	if err := a.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	if err := b.Persist(ctx, Change{Kind: Established, Record: r}); !errors.Is(err, ErrExists) {
		t.Fatalf("second establish: %v", err)
	}
	r.NextIn = 5
	if err := b.Persist(ctx, Change{Kind: Updated, Record: r}); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("update by non-owner: %v", err)
	}
	// A live owner does not lose the SA to a takeover.
	var oe *OwnerError
	if _, err := b.TakeOver(ctx, 100); !errors.As(err, &oe) || oe.Owner.Node != "a" {
		t.Fatalf("takeover from live owner: %v", err)
	}
	// CHILD rekey: new inbound SPI, the old one released.
	old := r.Children[0].InSPI
	r.Children[0].InSPI = 0x0badf00d
	if err := a.Submit(Change{Kind: ChildRekeyed, Record: r, Released: []uint32{old}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ike, err := b.LookupESP(ctx, 0x0badf00d); err != nil || ike != 100 {
		t.Fatalf("LookupESP: %x %v", ike, err)
	}
	if ok, _ := b.ReserveESPSPIs(ctx, []uint32{old, 0x0badf00d}); !ok[0] || ok[1] {
		t.Fatalf("ESP SPIs after rekey: %v", ok)
	}
	// IKE rekey moves the record to the new SPI.
	r2 := *r
	r2.SPIr = 101
	if err := a.Persist(ctx, Change{Kind: IKERekeyed, Record: &r2, OldSPI: 100}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Load(ctx, 100); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old SPI after IKE rekey: %v", err)
	}
	got, o, err := a.Load(ctx, 101)
	if err != nil || got.NextIn != 5 || o.Node != "a" {
		t.Fatalf("load: %+v %v %v", got, o, err)
	}
	// Hand-off to a live node, with the final state.
	r2.NextIn = 9
	bo, _ := b.Registration()
	if err := a.HandOff(ctx, 101, &r2, bo); err != nil {
		t.Fatal(err)
	}
	if got, o, _ := b.Load(ctx, 101); o != bo || got.NextIn != 9 {
		t.Fatalf("after hand-off: owner %v next-in %d", o, got.NextIn)
	}
	if err := a.Persist(ctx, Change{Kind: Deleted, SPI: 101}); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("delete by former owner: %v", err)
	}
	if err := b.Persist(ctx, Change{Kind: Deleted, Record: &r2}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Load(ctx, 101); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	resp, _ := cli.Get(ctx, DefaultPrefix+"spi/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != 1 { // b's reservation of `old`
		t.Fatalf("%d SPI keys left after delete, want 1", resp.Count)
	}
}

// Embedded etcd restarted in the middle of a load of establishments: every
// establishment acknowledged is stored, and every submitted one is
// acknowledged once etcd is back.
func TestEtcdRestartDuringEstablishments(t *testing.T) {
	e := startEtcd(t, true)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "a")
	cfg.Batch.QueueNew = true
	cfg.Batch.QueueLen = 512
	a := open(t, cli, cfg)
	const n = 3000
	var acked, failed atomic.Int64
	var wg sync.WaitGroup
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(150 * time.Millisecond)
		e.Stop()
		time.Sleep(500 * time.Millisecond)
		if err := e.Start(); err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(40 * time.Second)
	sawFull := false
	for i := 0; i < n; i++ {
		r := sampleRecord(uint64(1000 + i))
		wg.Add(1)
		for {
			err := a.Submit(Change{Kind: Established, Record: r}, func(err error) {
				if err != nil {
					failed.Add(1)
					t.Errorf("establishment: %v", err)
				} else {
					acked.Add(1)
				}
				wg.Done()
			})
			if err == nil {
				break
			}
			if !errors.Is(err, ErrQueueFull) || time.Now().After(deadline) {
				t.Fatal(err)
			}
			sawFull = true
			time.Sleep(5 * time.Millisecond)
		}
	}
	<-restarted
	wg.Wait()
	if acked.Load() != n {
		t.Fatalf("acked %d of %d", acked.Load(), n)
	}
	recs, err := a.LoadOwned(tctx(t, 20*time.Second))
	if err != nil || len(recs) != n {
		t.Fatalf("stored %d of %d: %v", len(recs), n, err)
	}
	h := a.Health()
	t.Logf("queue filled during the outage: %v; txns %d for %d SAs; health %+v", sawFull, h.Txns, n, h)
	if !h.Reachable || !h.Registered {
		t.Fatalf("health after restart: %+v", h)
	}
}

// While etcd is unreachable the store refuses new SAs, queues updates,
// says so in Health, and catches up when etcd returns.
func TestUnavailableRefusesNewAndCatchesUp(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	ctx := tctx(t, 30*time.Second)
	r := sampleRecord(7)
	if err := a.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	// The next request notices.
	if _, err := a.ReserveIKESPIs(ctx, []uint64{99}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("reserve with etcd down: %v", err)
	}
	if h := a.Health(); h.Reachable || !h.RefuseNew {
		t.Fatalf("health with etcd down: %+v", h)
	}
	if err := a.Submit(Change{Kind: Established, Record: sampleRecord(8)}, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("new SA with etcd down: %v", err)
	}
	r.NextIn = 77
	done := make(chan error, 1)
	if err := a.Submit(Change{Kind: Updated, Record: r}, func(err error) { done <- err }); err != nil {
		t.Fatalf("update with etcd down: %v", err)
	}
	if !a.CanSend() {
		t.Fatal("established SAs stopped serving at once")
	}
	time.Sleep(300 * time.Millisecond)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("queued update never committed")
	}
	if got, _, err := a.Load(ctx, 7); err != nil || got.NextIn != 77 {
		t.Fatalf("after catch-up: %v %v", got, err)
	}
	if h := a.Health(); !h.Reachable || h.RefuseNew {
		t.Fatalf("health after catch-up: %+v", h)
	}
}

// putDeadOwned stores n SAs owned by a registration that no longer exists.
func putDeadOwned(t *testing.T, cli *clientv3.Client, cfg Config, base uint64, n int) {
	k := keys{DefaultPrefix}
	c := Codec{Keys: cfg.Keys}
	dead := Owner{Node: "dead", Epoch: 1}
	const per = 25 // 4 keys each, within etcd's default --max-txn-ops
	for lo := 0; lo < n; lo += per {
		// The record keys first, empty, as the store creates them: a
		// record is bound to its key's create revision and version.
		var ops []clientv3.Op
		for i := lo; i < min(lo+per, n); i++ {
			ops = append(ops, clientv3.OpPut(k.sa(base+uint64(i)), ""), clientv3.OpPut(k.seq(base+uint64(i)), ""))
		}
		created, err := cli.Txn(context.Background()).Then(ops...).Commit()
		if err != nil {
			t.Fatal(err)
		}
		ops = nil
		for i := lo; i < min(lo+per, n); i++ {
			spi := base + uint64(i)
			at := Binding{created.Header.Revision, 2}
			v, err := c.Marshal(saName(spi), sampleRecord(spi), at)
			if err != nil {
				t.Fatal(err)
			}
			sv, err := c.MarshalReservations(seqName(spi), ReservationsOf(sampleRecord(spi)), at)
			if err != nil {
				t.Fatal(err)
			}
			ops = append(ops, clientv3.OpPut(k.sa(spi), string(v)), clientv3.OpPut(k.seq(spi), string(sv)), clientv3.OpPut(k.owner(spi), dead.value()),
				clientv3.OpPut(k.owned(dead.Node, spi), ""))
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// Two nodes racing to take over the same SA, 1,000 times: exactly one
// wins each time, and the loser is told who won. At store layout 3 the
// owned/ index follows ownership; at 4 there is none, and the counts come
// from the owner keys.
func TestTakeOverRace(t *testing.T) {
	for _, layout := range []int{3, 4} {
		t.Run(fmt.Sprint("layout", layout), func(t *testing.T) { testTakeOverRace(t, layout) })
	}
}

func testTakeOverRace(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	conf := func(id string) Config {
		c := testConfig(t, id)
		c.KeepAliveInterval = 100 * time.Millisecond
		c.RequestTimeout = time.Second
		c.layoutMax = layout
		return c
	}
	cfg := conf("b")
	b := open(t, cli, cfg)
	c := open(t, dial(t, e.Endpoints()), conf("c"))
	waitLayout(t, b, layout)
	waitLayout(t, c, layout)
	const n = 1000
	putDeadOwned(t, cli, cfg, 1<<40, n)
	ctx := tctx(t, 60*time.Second)
	var wins [2]atomic.Int64
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		spi := uint64(1<<40 + i)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var errs [2]error
			var recs [2]*SARecord
			var inner sync.WaitGroup
			start := make(chan struct{})
			for j, s := range []*Store{b, c} {
				inner.Add(1)
				go func() {
					defer inner.Done()
					<-start
					recs[j], errs[j] = s.TakeOver(ctx, spi)
				}()
			}
			close(start)
			inner.Wait()
			won := 0
			for j := range errs {
				var oe *OwnerError
				switch {
				case errs[j] == nil:
					won++
					wins[j].Add(1)
					if recs[j] == nil || recs[j].LocalSPI() != spi {
						t.Errorf("SA %x: winner got record %v", spi, recs[j])
					}
				case errors.As(errs[j], &oe):
					if oe.Owner.Node == "dead" {
						t.Errorf("SA %x: loser sees the dead owner", spi)
					}
				default:
					t.Errorf("SA %x: %v", spi, errs[j])
				}
			}
			if won != 1 {
				t.Errorf("SA %x: %d winners", spi, won)
			}
		}()
	}
	wg.Wait()
	t.Logf("wins: b %d, c %d", wins[0].Load(), wins[1].Load())
	ob, _ := b.Registration()
	counts, err := b.OwnedCounts(ctx)
	if err != nil || counts["b"] != wins[0].Load() || counts["c"] != wins[1].Load() {
		t.Fatalf("owned counts %v (%v), won b %d, c %d (%v)", counts, err, wins[0].Load(), wins[1].Load(), ob)
	}
	indexed := func(node string) int64 {
		resp, err := cli.Get(ctx, keys{DefaultPrefix}.ownedBy(node), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	// putDeadOwned indexed the dead node's SAs as a release of layout 3
	// would have (at layout 4 the sweep may have deleted them since).
	want := map[string]int64{"b": wins[0].Load(), "c": wins[1].Load(), "dead": 0}
	if layout >= ownedGone {
		want = map[string]int64{"b": 0, "c": 0}
	}
	for node, w := range want {
		if got := indexed(node); got != w {
			t.Errorf("owned/%s/ holds %d entries at store layout %d, want %d", node, got, layout, w)
		}
	}
}

// A node killed (its client gone, lease not revoked) and restarted under
// the same id: the new life replaces the stale registration (new epoch)
// and its SAs come back from etcd.
func TestKilledNodeRestarts(t *testing.T) {
	e := startEtcd(t, false)
	cfg := testConfig(t, "a")
	cli1 := dial(t, e.Endpoints())
	a1, err := Open(tctx(t, 10*time.Second), cli1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := tctx(t, 30*time.Second)
	want := map[uint64]*SARecord{}
	for i := 0; i < 50; i++ {
		r := sampleRecord(uint64(500 + i))
		r.NextIn = uint32(i)
		want[r.LocalSPI()] = r
		if err := a1.Submit(Change{Kind: Established, Record: r}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := a1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	o1, slot1 := a1.Registration()
	a1.Abandon() // kill -9: nothing revoked
	cli1.Close()

	a2 := open(t, dial(t, e.Endpoints()), cfg)
	o2, slot2 := a2.Registration()
	if o2.Epoch <= o1.Epoch || slot2 != slot1 || !a2.CanSend() {
		t.Fatalf("restart: %v slot %d after %v slot %d", o2, slot2, o1, slot1)
	}
	recs, err := a2.LoadOwned(ctx)
	if err != nil || len(recs) != len(want) {
		t.Fatalf("restored %d of %d: %v", len(recs), len(want), err)
	}
	for _, r := range recs {
		w := want[r.LocalSPI()]
		if w == nil || r.NextIn != w.NextIn || string(r.SKd) != string(w.SKd) || r.Children[0].InSPI != w.Children[0].InSPI {
			t.Fatalf("restored %+v, want %+v", r, w)
		}
		if _, o, _ := a2.Load(ctx, r.LocalSPI()); o != o2 {
			t.Fatalf("owner after restart %v, want %v", o, o2)
		}
	}
}

// proxy forwards TCP to etcd until cut: a node-local network partition.
type proxy struct {
	l     net.Listener
	to    string
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func newProxy(t *testing.T, to string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, to: to}
	t.Cleanup(func() { l.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// Lease expiry: a node cut off from etcd stops sending (CanSend false,
// Fenced closed) before etcd expires its lease, then comes back under a
// new epoch and reclaims its SAs.
func TestLeaseExpiryFencesBeforeTTL(t *testing.T) {
	e := startEtcd(t, false)
	host := e.Endpoints()[0][len("http://"):]
	p := newProxy(t, host)
	obs := dial(t, e.Endpoints())
	cfg := testConfig(t, "a")
	cfg.LeaseTTL = 3 * time.Second
	cfg.FenceMargin = time.Second
	cfg.KeepAliveInterval = 300 * time.Millisecond
	cfg.RequestTimeout = 500 * time.Millisecond
	reclaimed := make(chan []uint64, 1)
	var a *Store
	var sendDuringReclaim atomic.Bool
	cfg.OnReclaimed = func(_ Owner, owned []uint64, err error) {
		if err != nil {
			t.Error(err)
		}
		// The node drops the SAs others took over here: it must not send
		// for any of them before this returns.
		sendDuringReclaim.Store(a.CanSend())
		reclaimed <- owned
	}
	a = open(t, dial(t, []string{"http://" + p.l.Addr().String()}), cfg)
	ctx := tctx(t, 30*time.Second)
	if err := a.Persist(ctx, Change{Kind: Established, Record: sampleRecord(5)}); err != nil {
		t.Fatal(err)
	}
	o1, _ := a.Registration()
	fenced, registered := a.Fenced(), a.Registered()
	w := obs.Watch(ctx, keys{DefaultPrefix}.node("a"))
	p.setCut(true)
	cutAt := time.Now()
	var fencedAt time.Time
	select {
	case <-fenced:
		fencedAt = time.Now()
		if a.CanSend() {
			t.Fatal("fenced but CanSend")
		}
	case <-ctx.Done():
		t.Fatal("never fenced")
	}
	var expiredAt time.Time
	for resp := range w {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				expiredAt = time.Now()
			}
		}
		if !expiredAt.IsZero() {
			break
		}
	}
	if !fencedAt.Before(expiredAt) {
		t.Fatalf("fenced %v after the cut, lease expired %v after", fencedAt.Sub(cutAt), expiredAt.Sub(cutAt))
	}
	t.Logf("cut → fenced %v, cut → lease expired in etcd %v", fencedAt.Sub(cutAt), expiredAt.Sub(cutAt))
	if err := a.Persist(ctx, Change{Kind: Updated, Record: sampleRecord(5)}); !errors.Is(err, ErrFenced) {
		t.Fatalf("persist while fenced: %v", err)
	}
	// A change made while fenced waits, and lands once the SA is reclaimed.
	upd := sampleRecord(5)
	upd.NextIn = 42
	landed := make(chan error, 1)
	if err := a.Submit(Change{Kind: Updated, Record: upd}, func(err error) { landed <- err }); err != nil {
		t.Fatal(err)
	}
	p.setCut(false)
	select {
	case owned := <-reclaimed:
		if len(owned) != 1 || owned[0] != 5 {
			t.Fatalf("reclaimed %v", owned)
		}
	case <-ctx.Done():
		t.Fatal("never re-registered")
	}
	if sendDuringReclaim.Load() {
		t.Fatal("CanSend while the node was still dropping the SAs others took over")
	}
	select {
	case <-registered:
	case <-ctx.Done():
		t.Fatal("Registered not signalled after the reclaim")
	}
	o2, _ := a.Registration()
	if o2.Epoch <= o1.Epoch || !a.CanSend() {
		t.Fatalf("after re-registration %v (was %v), CanSend %v", o2, o1, a.CanSend())
	}
	if err := <-landed; err != nil {
		t.Fatalf("change queued while fenced: %v", err)
	}
	if got, o, _ := a.Load(ctx, 5); o != o2 || got.NextIn != 42 {
		t.Fatalf("owner %v (want %v), next-in %d", o, o2, got.NextIn)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{NodeID: "", Keys: &Keyring{}},
		{NodeID: "a/b", Keys: &Keyring{}},
		{NodeID: "a"},
		{NodeID: "a", Keys: &Keyring{}, LeaseTTL: 1500 * time.Millisecond},
	} {
		c.setDefaults()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if _, err := Dial(ClientConfig{}); err == nil {
		t.Error("no endpoints accepted")
	}
	if _, err := Dial(ClientConfig{Endpoints: []string{"x"}, CertFile: "c"}); err == nil {
		t.Error("cert without key accepted")
	}
}

// A burst with two changes to one SA keeps their order (the second waits
// for the next batch), and a batch that etcd refuses as a whole (here: two
// SAs claiming one inbound ESP SPI, a duplicate key in one transaction)
// is committed change by change.
func TestBatchOrderingAndRefusedBatch(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "a")
	cfg.Batch.Inflight = 1
	a := open(t, cli, cfg)
	ctx := tctx(t, 20*time.Second)
	r := sampleRecord(1)
	errs := make(chan error, 4)
	done := func(err error) { errs <- err }
	if err := a.Submit(Change{Kind: Established, Record: r}, done); err != nil {
		t.Fatal(err)
	}
	r2 := *r
	r2.NextIn = 3
	if err := a.Submit(Change{Kind: Updated, Record: &r2}, done); err != nil {
		t.Fatal(err)
	}
	x, y := sampleRecord(2), sampleRecord(3)
	y.Children[0].InSPI = x.Children[0].InSPI
	a.Submit(Change{Kind: Established, Record: x}, done)
	a.Submit(Change{Kind: Established, Record: y}, done)
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got, _, err := a.Load(ctx, 1); err != nil || got.NextIn != 3 {
		t.Fatalf("after burst: %v %v", got, err)
	}
	if h := a.Health(); h.Txns == 0 || !h.Reachable {
		t.Fatalf("health %+v", h)
	}
	if SlotOf(SlotSPI(5, 8, ^uint64(0)), 8) != 5 || SlotSPI(5, 8, 0) != 5<<56 {
		t.Fatal("SlotSPI")
	}
}
