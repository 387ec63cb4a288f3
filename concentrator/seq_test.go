package concentrator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/internal/etcdmetric"
)

// recDP is the memory data plane, recording every installation.
type recDP struct {
	*memory.DataPlane
	mu       sync.Mutex
	installs []dataplane.ChildSA
}

func (d *recDP) Install(ctx context.Context, sa *dataplane.ChildSA) error {
	d.mu.Lock()
	d.installs = append(d.installs, *sa)
	d.mu.Unlock()
	return d.DataPlane.Install(ctx, sa)
}

func (d *recDP) lastInstall() dataplane.ChildSA {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.installs[len(d.installs)-1]
}

// seqRig is one node with embedded etcd in dir on an in-memory network,
// a fake clock, and a gateway.
type seqRig struct {
	tb   testing.TB
	ctx  context.Context
	dir  string
	netw *transport.Network
	clk  *clock.Fake
	gw   *memGateway
	n    *Node
	dp   *recDP
	stop func()
}

var seqNodeAddr = netip.MustParseAddr("10.0.0.1")

func newSeqRig(tb testing.TB, ctx context.Context) *seqRig {
	r := &seqRig{tb: tb, ctx: ctx, dir: tb.TempDir(), netw: transport.NewNetwork(),
		clk: clock.NewFake(time.Now().Truncate(time.Millisecond))}
	r.start()
	r.gw = startMemGateway(tb, ctx, r.netw, r.clk, netip.MustParseAddr("192.0.2.10"))
	r.gw.connect(ctx, seqNodeAddr, 1)
	r.settle()
	return r
}

// start starts the node (again) on the same data directory.
func (r *seqRig) start() {
	tb := r.tb
	tb.Helper()
	text := nodeConfig(1, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", r.dir, r.dir))
	text = replaceOnce(tb, text, "listen: [127.0.0.1]\n  port: 0\n  natt_port: 0", "listen: [10.0.0.1]\n  port: 500\n  natt_port: 4500")
	cfg, err := ParseConfig([]byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	r.dp = &recDP{DataPlane: memory.New()}
	r.n, err = New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), r.dp, WithTransport(r.netw), WithClock(r.clk))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	done := make(chan error, 1)
	go func() { done <- r.n.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("Run: %v", err)
			}
		})
	}
	tb.Cleanup(r.stop)
	select {
	case <-r.n.Ready():
	case err := <-done:
		tb.Fatalf("node did not start: %v", err)
	}
}

// settle waits until nothing moves: no datagram in flight, no packet or
// batch waiting in a shard, no write waiting in the state store.
func (r *seqRig) settle() {
	n := r.n
	for stable := 0; stable < 2; {
		before, _ := r.netw.Stats()
		busy := r.netw.Queued() > 0 || len(r.gw.pkts) > 0
		for _, s := range n.shards {
			if err := n.do(r.ctx, s, func() {
				n.commitResults(r.ctx, s)
				busy = busy || len(s.q.prio) > 0 || len(s.q.init) > 0 || len(s.held) > 0
			}); err != nil {
				r.tb.Fatal(err)
			}
		}
		sync := make(chan struct{})
		r.gw.calls <- func() { close(sync) }
		<-sync
		if err := n.persist.store.Flush(r.ctx); err != nil {
			r.tb.Fatal(err)
		}
		if after, _ := r.netw.Stats(); after == before && !busy {
			stable++
		} else {
			stable = 0
		}
	}
}

// child is the installed CHILD SA with inbound SPI in.
func (r *seqRig) child(in uint32) *dataplane.ChildSA {
	c, ok := r.dp.Get(in)
	if !ok {
		r.tb.Fatalf("CHILD SA %08x not installed", in)
	}
	return c
}

// report reports progress as the data plane would and waits until the
// renewed reservation is committed and the limit raised.
func (r *seqRig) report(in uint32, out, inSeq uint64) *dataplane.ChildSA {
	old := r.child(in).OutSeqLimit
	if !r.dp.InjectProgress(dataplane.SeqProgress{InSPI: in, OutSeq: out, InSeq: inSeq}) {
		r.tb.Fatal("progress channel full")
	}
	waitFor(r.tb, r.ctx, "the sequence number limit raised", func() bool {
		c, _ := r.dp.Get(in)
		return c != nil && c.OutSeqLimit > old
	})
	return r.child(in)
}

// A CHILD SA's outbound sequence numbers are limited to a committed
// reservation; progress from the data plane renews it (a small write)
// and raises the limit once committed. Restarted, the node installs the
// CHILD SA to send from that reservation and no further until its fresh
// reservation is committed, then raises the limit again.
func TestSeqReservationsAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := newSeqRig(t, ctx)
	first := r.dp.lastInstall()
	in := first.InSPI
	if first.OutSeq != 0 || first.OutSeqLimit == 0 || first.OutSeqMargin == 0 || first.OutSeqMargin >= first.OutSeqLimit {
		t.Fatalf("new CHILD SA installed with OutSeq %d, limit %d, margin %d", first.OutSeq, first.OutSeqLimit, first.OutSeqMargin)
	}
	rec, _, err := r.n.persist.store.Load(ctx, r.gw.serverSPI(t))
	if err != nil || rec.Children[0].OutSeqReserved != first.OutSeqLimit {
		t.Fatalf("stored reservation %+v (%v), installed limit %d", rec, err, first.OutSeqLimit)
	}

	// Outbound crosses limit-margin: renewed to outSeq+block.
	_, thr := dataplane.SeqMargin(first.OutSeqMargin, 0, first.OutSeqLimit)
	c := r.report(in, thr, 100)
	if c.OutSeqLimit <= thr {
		t.Fatalf("limit %d after progress to %d", c.OutSeqLimit, thr)
	}
	r.settle()
	rec, _, err = r.n.persist.store.Load(ctx, rec.LocalSPI())
	if err != nil || rec.Children[0].OutSeqReserved != c.OutSeqLimit || rec.Children[0].InSeqLow != 100 {
		t.Fatalf("stored after renewal: %+v (%v), limit %d", rec.Children[0], err, c.OutSeqLimit)
	}
	reserved := c.OutSeqLimit

	// Killed and restarted (the node stops without a word to the peer).
	r.stop()
	r.start()
	inst := r.dp.lastInstall()
	if inst.InSPI != in || inst.OutSeq != reserved || inst.OutSeqLimit != reserved || inst.InSeqLow != 100 {
		t.Fatalf("restored CHILD SA installed with OutSeq %d, limit %d, InSeqLow %d; reservation was %d",
			inst.OutSeq, inst.OutSeqLimit, inst.InSeqLow, reserved)
	}
	waitFor(t, ctx, "the fresh reservation committed and the limit raised", func() bool {
		c, ok := r.dp.Get(in)
		return ok && c.OutSeqLimit > reserved
	})
	r.settle()
	rec, _, err = r.n.persist.store.Load(ctx, rec.LocalSPI())
	if c := r.child(in); err != nil || rec.Children[0].OutSeqReserved != c.OutSeqLimit {
		t.Fatalf("stored after restart: %+v (%v), limit %d", rec.Children[0], err, c.OutSeqLimit)
	}
	if st, _ := r.n.Stats(ctx); st.ChildRekeys != 0 {
		t.Fatalf("%d CHILD SAs rekeyed after the restart", st.ChildRekeys)
	}
}

// serverSPI is the node's IKE SPI of the gateway's SA.
func (g *memGateway) serverSPI(tb testing.TB) uint64 {
	var spi uint64
	done := make(chan struct{})
	g.calls <- func() {
		g.eng.Each(func(sa *ike.IKESA) bool { spi = sa.SPIr; return false })
		close(done)
	}
	<-done
	if spi == 0 {
		tb.Fatal("the gateway has no SA")
	}
	return spi
}

// etcdMetric reads one of the embedded etcd's own metrics.
func etcdMetric(tb testing.TB, name string) float64 {
	v, err := etcdmetric.Value(name)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// BenchmarkStateStoreBytesPerSAHour drives a real node (embedded etcd,
// the memory data plane reporting sequence progress as a data plane
// carrying rate packets per second each way would, a fake clock) through
// one hour of one SA, and reports what etcd counted: bytes of keys and
// values put and keys put. Liveness checks, our CHILD rekey and
// message-ID reservations happen as they would; the clock stops while a
// renewal is committed, as if etcd answered at once.
func BenchmarkStateStoreBytesPerSAHour(b *testing.B) {
	for _, rate := range []uint64{1000, 0} {
		name := "idle"
		if rate > 0 {
			name = fmt.Sprintf("busy-%dpps", rate)
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				r := newSeqRig(b, ctx)
				bytes0 := etcdMetric(b, "etcd_debugging_mvcc_total_put_size_in_bytes")
				puts0 := etcdMetric(b, "etcd_mvcc_put_total")
				st0, _ := r.n.Stats(ctx)
				type flow struct{ out, in, base uint64 }
				flows := map[uint32]*flow{}
				for sec := 0; sec < 3600; sec++ {
					r.clk.Advance(time.Second)
					r.settle()
					if rate == 0 {
						continue
					}
					// Traffic goes through the newest CHILD SA.
					c := r.dp.lastInstall()
					cur, ok := r.dp.Get(c.InSPI)
					if !ok {
						continue
					}
					f := flows[c.InSPI]
					if f == nil {
						f = &flow{out: cur.OutSeq, base: cur.OutSeq, in: cur.InSeqLow}
						flows[c.InSPI] = f
					}
					f.out = min(f.out+rate, cur.OutSeqLimit) // user space refuses beyond the limit
					f.in += rate
					if _, thr := dataplane.SeqMargin(cur.OutSeqMargin, f.base, cur.OutSeqLimit); thr != 0 && f.out >= thr {
						r.report(c.InSPI, f.out, f.in)
						f.base = f.out
						r.settle()
					}
				}
				st, _ := r.n.Stats(ctx)
				b.ReportMetric(etcdMetric(b, "etcd_debugging_mvcc_total_put_size_in_bytes")-bytes0, "etcd-bytes/SA-h")
				b.ReportMetric(etcdMetric(b, "etcd_mvcc_put_total")-puts0, "etcd-puts/SA-h")
				b.ReportMetric(float64(st.SeqReservations-st0.SeqReservations), "seq-renewals/SA-h")
				b.ReportMetric(float64(st.MsgIDReservations-st0.MsgIDReservations), "msgid-renewals/SA-h")
				b.ReportMetric(float64(st.ChildRekeys-st0.ChildRekeys), "child-rekeys/SA-h")
				b.ReportMetric(float64(st.DPDSent-st0.DPDSent), "liveness-checks/SA-h")
				b.ReportMetric(0, "ns/op")
				r.stop()
				cancel()
			}
		})
	}
}
