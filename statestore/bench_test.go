package statestore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkPersistEstablishments persists SA establishments to embedded
// etcd (fsync on) three ways in one run and reports each rate and the
// batching gain: Submit (batched), Persist one transaction per SA in
// sequence, and Persist from 64 goroutines (etcd's own raft batching).
func BenchmarkPersistEstablishments(b *testing.B) {
	e := startEtcd(b, true)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "bench"))
	ctx := context.Background()
	n := max(b.N, 3000)
	next := uint64(1)
	rec := func() *SARecord { next++; return sampleRecord(next) }

	b.ResetTimer()
	// submit establishes recs through the batcher, returning SAs/s and
	// etcd transactions per SA.
	submit := func(recs []*SARecord) (rate, txnPerSA float64) {
		tx0, t0 := s.Health().Txns, time.Now()
		var wg sync.WaitGroup
		wg.Add(len(recs))
		for _, r := range recs {
			submitQueued(b, s, Change{Kind: Established, Record: r}, wg.Done)
		}
		wg.Wait()
		return float64(len(recs)) / time.Since(t0).Seconds(), float64(s.Health().Txns-tx0) / float64(len(recs))
	}
	recs := make([]*SARecord, n)
	for i := range recs {
		recs[i] = rec()
	}
	batched, batchedTxn := submit(recs)
	// As a node does: IKE SPIs reserved ahead (outside the timing), then
	// established.
	spis := make([]uint64, n)
	for i := range recs {
		recs[i] = rec()
		spis[i] = recs[i].LocalSPI()
	}
	b.StopTimer()
	if _, err := s.ReserveIKESPIs(ctx, spis); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	reserved, reservedTxn := submit(recs)

	single := func(workers int) float64 {
		t0 := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < n/workers; i++ {
					mu.Lock()
					r := rec()
					mu.Unlock()
					if err := s.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		return float64(n/workers*workers) / time.Since(t0).Seconds()
	}
	seq := single(1)
	par := single(64)
	b.StopTimer()
	b.ReportMetric(batched, "batched-SA/s")
	b.ReportMetric(batchedTxn, "batched-txn/SA")
	b.ReportMetric(reserved, "reserved-batched-SA/s")
	b.ReportMetric(reservedTxn, "reserved-batched-txn/SA")
	b.ReportMetric(seq, "single-txn-SA/s")
	b.ReportMetric(par, "single-txn-64par-SA/s")
	b.ReportMetric(batched/seq, "batched/single")
	b.ReportMetric(batched/par, "batched/64par")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkBytesPerSA stores typical SAs (AES-GCM-256, one CHILD SA,
// virtual IP, NAT) and reports the bytes of their keys and values in
// etcd, and the growth of etcd's database in use.
func BenchmarkBytesPerSA(b *testing.B) {
	e := startEtcd(b, false)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "bench"))
	ctx := context.Background()
	const n = 2000
	st0, err := cli.Status(ctx, e.Endpoints()[0])
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < n; i++ {
		if err := s.Submit(Change{Kind: Established, Record: sampleRecord(uint64(i+1)<<32 | uint64(i+1))}, nil); err != nil {
			b.Fatal(err, s.Health())
		}
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	var total, record int
	for _, p := range []string{"sa/", "owner/", "owned/", "spi/"} {
		resp, err := cli.Get(ctx, DefaultPrefix+p, clientv3.WithPrefix())
		if err != nil {
			b.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			total += len(kv.Key) + len(kv.Value)
			if p == "sa/" {
				record += len(kv.Value)
			}
		}
	}
	st1, _ := cli.Status(ctx, e.Endpoints()[0])
	b.ReportMetric(float64(total)/n, "B/SA")
	b.ReportMetric(float64(record)/n, "record-B/SA")
	b.ReportMetric(float64(st1.DbSizeInUse-st0.DbSizeInUse)/n, "db-B/SA")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkWritesPerSAHour simulates an hour of a fleet on a fake clock:
// DPD every 5 s for every SA (which writes nothing: it is not a state
// change) and one jittered CHILD rekey per SA per hour (a state change,
// plus the new inbound ESP SPI, reserved from a pool filled 128 at a
// time). Every etcd write in the hour is counted by revision.
func BenchmarkWritesPerSAHour(b *testing.B) {
	e := startEtcd(b, true)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "bench"))
	ctx := context.Background()
	const n = 1000
	const step = 5 * time.Second
	rng := rand.New(rand.NewPCG(1, 2))
	recs := make([]*SARecord, n)
	rekeyAt := make([]time.Duration, n)
	for i := range recs {
		recs[i] = sampleRecord(uint64(i+1) << 20)
		rekeyAt[i] = time.Duration(rng.Int64N(int64(time.Hour)))
		if err := s.Submit(Change{Kind: Established, Record: recs[i]}, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	rev := func() int64 {
		r, err := cli.Get(ctx, "x")
		if err != nil {
			b.Fatal(err)
		}
		return r.Header.Revision
	}
	var pool []uint32
	nextSPI := uint32(0x10000000)
	b.ResetTimer()
	r0 := rev()
	var dpd, changes int
	for now := time.Duration(0); now < time.Hour; now += step {
		for i := range recs {
			dpd++ // a DPD exchange: answered, nothing persisted
			if rekeyAt[i] < now || rekeyAt[i] >= now+step {
				continue
			}
			if len(pool) == 0 {
				cand := make([]uint32, 128)
				for j := range cand {
					nextSPI++
					cand[j] = nextSPI
				}
				ok, err := s.ReserveESPSPIs(ctx, cand)
				if err != nil {
					b.Fatal(err)
				}
				for j, c := range cand {
					if ok[j] {
						pool = append(pool, c)
					}
				}
			}
			old := recs[i].Children[0].InSPI
			recs[i].Children[0].InSPI, pool = pool[0], pool[1:]
			recs[i].Children[0].OutSeqReserved = 0
			if err := s.Submit(Change{Kind: ChildRekeyed, Record: recs[i], Released: []uint32{old}}, nil); err != nil {
				b.Fatal(err)
			}
			changes++
		}
		// Steps are 5 s apart; nothing batches across them.
		if err := s.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	writes := rev() - r0
	b.StopTimer()
	b.ReportMetric(float64(writes)/n, "etcd-writes/SA-h")
	b.ReportMetric(float64(changes)/n, "changes/SA-h")
	b.ReportMetric(float64(dpd)/n, "DPD/SA-h")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkIdentityIndex submits SA establishments without and with the
// identity index (Identity, UniqueReplace: the index entry written and
// the identity's other SAs read in the SA's own transaction) and reports
// etcd transactions per SA and the rate of each: the index must add no
// transaction.
func BenchmarkIdentityIndex(b *testing.B) {
	e := startEtcd(b, true)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "bench"))
	n := max(b.N, 3000)
	next := uint64(1)
	run := func(index bool) (txnPerSA, rate float64) {
		h0 := s.Health()
		t0 := time.Now()
		var wg sync.WaitGroup
		wg.Add(n)
		for i := 0; i < n; i++ {
			next++
			c := Change{Kind: Established, Record: sampleRecord(next)}
			if index {
				var others []IdentitySA
				c.Identity, c.Unique, c.Others = fmt.Sprintf("gw-%06d.fleet.example", next), UniqueReplace, &others
			}
			submitQueued(b, s, c, wg.Done)
		}
		wg.Wait()
		rate = float64(n) / time.Since(t0).Seconds()
		h1 := s.Health()
		return float64(h1.Batches-h0.Batches) / float64(h1.Changes-h0.Changes), rate
	}
	b.ResetTimer()
	tOff, rOff := run(false)
	tOn, rOn := run(true)
	b.StopTimer()
	b.ReportMetric(tOff, "txn/SA-without")
	b.ReportMetric(tOn, "txn/SA-with-index")
	b.ReportMetric(rOff, "SA/s-without")
	b.ReportMetric(rOn, "SA/s-with-index")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSubmitCPU sets up SAs through Submit at a steady rate (as the
// node does: Established, later Deleted) against an embedded member with
// fsync on, through the member's local client, and reports the process's
// CPU time per SA (setup + delete, embedded etcd included), the
// transactions per SA and the commit latency, for several Inflight
// settings.
func BenchmarkSubmitCPU(b *testing.B) {
	for _, inflight := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			e := startEtcd(b, true)
			cli := e.LocalClient()
			b.Cleanup(func() { cli.Close() })
			cfg := testConfig(b, "bench")
			cfg.Batch.Inflight = inflight
			s := open(b, cli, cfg)
			const n, rate = 3000, 1000.0
			next := uint64(1 << 40)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var lat []time.Duration
			submit := func(c Change) {
				t0 := time.Now()
				wg.Add(1)
				submitQueued(b, s, c, func() {
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
					wg.Done()
				})
			}
			time.Sleep(200 * time.Millisecond)
			b.ResetTimer()
			txns0, cpu0 := s.Health().Txns, processCPU()
			start := time.Now()
			spis := make([]uint64, 0, n)
			for i := 0; i < n; i++ {
				if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
				if i%128 == 0 { // as a node does: IKE SPIs reserved ahead, in blocks
					block := make([]uint64, 128)
					for j := range block {
						block[j] = next + 1 + uint64(j)
					}
					if _, err := s.ReserveIKESPIs(b.Context(), block); err != nil {
						b.Fatal(err)
					}
				}
				next++
				spis = append(spis, next)
				submit(Change{Kind: Established, Record: sampleRecord(next)})
				if i >= 500 { // SAs live half a second
					submit(Change{Kind: Deleted, SPI: spis[i-500]})
				}
			}
			for _, spi := range spis[n-500:] {
				submit(Change{Kind: Deleted, SPI: spi})
			}
			wg.Wait()
			cpu := processCPU() - cpu0
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(cpu.Microseconds())/n/1000, "CPU-ms/SA")
			b.ReportMetric(float64(s.Health().Txns-txns0)/n, "txns/SA")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// submitQueued submits c, waiting while the batcher's queue is full; a
// failed change fails the benchmark, and done runs with every outcome.
func submitQueued(b *testing.B, s *Store, c Change, done func()) {
	for s.Submit(c, func(err error) {
		if err != nil {
			b.Error(err)
		}
		done()
	}) != nil {
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkEtcdKeysPerSA: what the embedded member spends per SA as a
// function of the keys an SA writes, to size a layout with fewer keys
// (docs/architecture.md, "Cost per SA and memory"). Each SA puts keys
// (one record of 700 bytes, the rest 24 bytes) in a transaction shared
// by 24 SAs, each SA's puts behind one create-if-absent compare as an
// Established change has, and later deletes them the same way; fsync
// on. Reported: the process's CPU per SA (setup and delete; etcd's
// raft, WAL, apply and backend, and the client), and the Go heap the
// held keys take per SA (etcd's key index and its backend's buffers;
// history compacted).
func BenchmarkEtcdKeysPerSA(b *testing.B) {
	for _, keys := range []int{1, 2, 4, 8, 12, 20} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			e := startEtcd(b, true)
			cli := e.LocalClient()
			b.Cleanup(func() { cli.Close() })
			const n, perTxn = 6000, 24
			record, small := string(make([]byte, 700)), string(make([]byte, 24))
			key := func(sa, k int) string { return fmt.Sprintf("bench/k%02d/%016x", k, sa) }
			run := func(lo, hi int, put bool) {
				ops := make([]clientv3.Op, 0, perTxn)
				for sa := lo; sa < hi; sa++ {
					var then []clientv3.Op
					for k := range keys {
						switch {
						case !put:
							then = append(then, clientv3.OpDelete(key(sa, k)))
						case k == 0:
							then = append(then, clientv3.OpPut(key(sa, k), record))
						default:
							then = append(then, clientv3.OpPut(key(sa, k), small))
						}
					}
					cmp := clientv3.Compare(clientv3.CreateRevision(key(sa, 0)), "=", 0)
					if !put {
						cmp = clientv3.Compare(clientv3.CreateRevision(key(sa, 0)), ">", 0)
					}
					ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{cmp}, then, nil))
				}
				resp, err := cli.Txn(b.Context()).Then(ops...).Commit()
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range resp.Responses {
					if !r.GetResponseTxn().Succeeded {
						b.Fatal("a compare failed")
					}
				}
			}
			compact := func() {
				resp, err := cli.Get(b.Context(), "bench/none")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cli.Compact(b.Context(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
					b.Fatal(err)
				}
			}
			heap := func() uint64 {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapAlloc
			}
			b.ResetTimer()
			heap0, cpu0 := heap(), processCPU()
			for lo := 0; lo < n; lo += perTxn {
				run(lo, min(lo+perTxn, n), true)
			}
			cpuSetup := processCPU() - cpu0
			compact()
			held := heap()
			cpu1 := processCPU()
			for lo := 0; lo < n; lo += perTxn {
				run(lo, min(lo+perTxn, n), false)
			}
			cpu := cpuSetup + processCPU() - cpu1
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/n/1000, "CPU-ms/SA")
			b.ReportMetric(float64(int64(held)-int64(heap0))/n, "heap-B/SA")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkEtcdTxnCost: what the embedded member spends on a transaction
// itself and on each change in it, to weigh fewer transactions against
// fewer keys (docs/architecture.md, "What one SA writes"). Each
// transaction carries n changes, each a nested create-if-absent compare
// and a put of one 24-byte key, and is committed before the next one
// starts (fsync on). Reported: the process's CPU per transaction and per
// change; between n = 1 and n = 32 the first is a + b·n.
func BenchmarkEtcdTxnCost(b *testing.B) {
	for _, perTxn := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("changes=%d", perTxn), func(b *testing.B) {
			e := startEtcd(b, true)
			cli := e.LocalClient()
			b.Cleanup(func() { cli.Close() })
			const n = 4000
			small := string(make([]byte, 24))
			b.ResetTimer()
			cpu0, txns := processCPU(), 0
			for lo := 0; lo < n; lo += perTxn {
				ops := make([]clientv3.Op, 0, perTxn)
				for i := lo; i < min(lo+perTxn, n); i++ {
					k := fmt.Sprintf("bench/%016x", i)
					ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)},
						[]clientv3.Op{clientv3.OpPut(k, small)}, nil))
				}
				if _, err := cli.Txn(b.Context()).Then(ops...).Commit(); err != nil {
					b.Fatal(err)
				}
				txns++
			}
			cpu := processCPU() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(txns), "CPU-µs/txn")
			b.ReportMetric(float64(cpu.Microseconds())/n, "CPU-µs/change")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkListOwners lists one node's SAs among a cluster's owner keys
// (STATESTORE_BENCH_OWNERS of them, default 100,000; a tenth the node's):
// what a start's reclaim and concentratorctl nodes read since store
// layout 4 (ownersOf, OwnedCounts). It reports the time per listing and
// per owner key read.
func BenchmarkListOwners(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("STATESTORE_BENCH_OWNERS")); err == nil && v > 0 {
		n = v
	}
	e := startEtcd(b, false)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "bench"))
	ctx := context.Background()
	const per = 100 // within etcd's default --max-txn-ops
	for lo := 0; lo < n; lo += per {
		ops := make([]clientv3.Op, 0, per)
		for i := lo; i < min(lo+per, n); i++ {
			o := Owner{Node: fmt.Sprintf("node-%d", i%10), Epoch: 7}
			ops = append(ops, clientv3.OpPut(s.k.owner(uint64(i+1)<<20), o.value()))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		got, err := s.ownersOf(ctx, "node-3")
		if err != nil || len(got) != n/10 {
			b.Fatalf("listed %d of node-3's %d SAs: %v", len(got), n/10, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/key")
	t0 := time.Now()
	counts, err := s.OwnedCounts(ctx)
	if err != nil || counts["node-3"] != int64(n/10) {
		b.Fatalf("counts %v: %v", counts, err)
	}
	b.ReportMetric(float64(time.Since(t0).Milliseconds()), "counts-ms")
}
