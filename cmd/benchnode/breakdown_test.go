package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// cpuProfile builds a CPU profile of one sample per stack (leaf first),
// each worth its ms.
func cpuProfile(stacks [][]string, ms []int64) *profile.Profile {
	p := &profile.Profile{SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"}, Period: 10_000_000}
	fns := map[string]*profile.Location{}
	for i, stack := range stacks {
		var locs []*profile.Location
		for _, name := range stack {
			loc, ok := fns[name]
			if !ok {
				fn := &profile.Function{ID: uint64(len(p.Function) + 1), Name: name}
				p.Function = append(p.Function, fn)
				loc = &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: fn}}}
				p.Location = append(p.Location, loc)
				fns[name] = loc
			}
			locs = append(locs, loc)
		}
		p.Sample = append(p.Sample, &profile.Sample{Location: locs, Value: []int64{1, ms[i] * 1e6}})
	}
	return p
}

// Each sample goes to the first part, in parts' order, with a frame of
// its stack: the collector's assists inside the engine are the engine's,
// a send from the node's actions is socket I/O, etcd's request path
// before etcd's server.
func TestBreakdownParts(t *testing.T) {
	const (
		shard  = "github.com/ikefleet/ikefleet/concentrator.(*Node).runShard"
		handle = "github.com/ikefleet/ikefleet/concentrator/ike.(*Engine).Handle"
	)
	stacks := [][]string{
		{"filippo.io/edwards25519/field.feMul", handle, shard},
		{"runtime.gcAssistAlloc", "runtime.mallocgc", handle, shard},
		{"go.etcd.io/etcd/server/v3/storage/mvcc.(*storeTxnWrite).put", "go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).applyAll"},
		{"syscall.Fdatasync", "go.etcd.io/etcd/server/v3/storage/wal.(*WAL).sync", "go.etcd.io/etcd/server/v3/etcdserver.(*raftNode).start.func1"},
		{"go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).Txn", "go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*kvServer).Txn",
			"go.etcd.io/etcd/client/v3.(*txn).Commit", "github.com/ikefleet/ikefleet/statestore.(*batcher).commit"},
		{"go.etcd.io/bbolt.(*Tx).Commit", "go.etcd.io/etcd/server/v3/storage/backend.(*backend).run"},
		{"runtime.scanObject", "runtime.gcBgMarkWorker"},
		{"github.com/ikefleet/ikefleet/concentrator/dataplane/userspace.(*DataPlane).install", "github.com/ikefleet/ikefleet/concentrator.(*Node).apply", shard},
		{"syscall.RawSyscall6", "github.com/ikefleet/ikefleet/concentrator/transport.(*sender).sendto", "github.com/ikefleet/ikefleet/concentrator.(*Node).send", shard},
		{"log/slog.(*JSONHandler).Handle", "github.com/ikefleet/ikefleet/internal/evlog.Attrs", "github.com/ikefleet/ikefleet/concentrator.(*Node).logEvent", shard},
		{"github.com/prometheus/client_golang/prometheus.(*counter).Add", "github.com/ikefleet/ikefleet/concentrator.(*Node).perform", shard},
		{"github.com/ikefleet/ikefleet/concentrator.(*shardQueue).take", shard},
		{"runtime.netpoll", "runtime.findRunnable", "runtime.schedule"},
		{"runtime.sigtramp"},
	}
	ms := []int64{30, 10, 20, 5, 12, 2, 8, 1, 6, 3, 1, 4, 2, 1}
	shares, total, err := breakdown(cpuProfile(stacks, ms))
	if err != nil {
		t.Fatal(err)
	}
	if total != 105*time.Millisecond {
		t.Errorf("total %v, want 105ms", total)
	}
	want := []int64{40, 20, 5, 12, 2, 8, 1, 6, 3, 1, 4, 2, 1} // parts' order, other last
	if len(shares) != len(want) || len(shares) != len(parts)+1 {
		t.Fatalf("%d shares, want %d: %v", len(shares), len(want), shares)
	}
	for i, s := range shares {
		if s.cpu != time.Duration(want[i])*time.Millisecond {
			t.Errorf("%s: %v, want %dms", s.name, s.cpu, want[i])
		}
	}
	if shares[len(shares)-1].name != otherPart {
		t.Errorf("last share %q, want %q", shares[len(shares)-1].name, otherPart)
	}
}

func TestBreakdownNeedsACPUProfile(t *testing.T) {
	p := cpuProfile([][]string{{"main.main"}}, []int64{1})
	p.SampleType = []*profile.ValueType{{Type: "alloc_space", Unit: "bytes"}, {Type: "inuse_space", Unit: "bytes"}}
	if _, _, err := breakdown(p); err == nil {
		t.Fatal("a heap profile read as a CPU profile")
	}
}

// The printed breakdown: each part's share of the samples and that share
// of the CPU measured per SA; the pair, each probe's parts in ms and their
// ratio; a missing profile said in one line.
func TestPrintBreakdown(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, p *profile.Profile) string {
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := p.Write(f); err != nil {
			t.Fatal(err)
		}
		return path
	}
	engine := []string{"github.com/ikefleet/ikefleet/concentrator/ike.(*Engine).Handle"}
	apply := []string{"go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).applyAll"}
	a := write("a", cpuProfile([][]string{engine, apply}, []int64{75, 25}))
	b := write("b", cpuProfile([][]string{engine, apply}, []int64{50, 50}))
	var out bytes.Buffer
	printBreakdown(&out, a, 2*time.Millisecond, "SA")
	got := out.String()
	for _, want := range []string{"0.10 s sampled", "the 2.000 ms measured per SA", "the IKE engine", " 75.0%   1.500 ms", " 25.0%   0.500 ms"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, "socket I/O") {
		t.Errorf("a part without samples printed:\n%s", got)
	}
	out.Reset()
	printBreakdownPair(&out, "in the probes", "at 1,000", a, 2*time.Millisecond, "at 100000", b, 3*time.Millisecond)
	got = out.String()
	for _, want := range []string{"at 1,000", "at 100000", "1.500 ms      1.500 ms   1.00", "0.500 ms      1.500 ms   3.00"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
	out.Reset()
	printBreakdown(&out, filepath.Join(dir, "none"), time.Millisecond, "SA")
	if got := out.String(); !strings.Contains(got, "no such file") || strings.Count(got, "\n") != 1 {
		t.Errorf("missing profile: %q", got)
	}
}
