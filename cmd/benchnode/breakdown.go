package main

// Where a row's CPU went: the node's CPU profile (--cpuprofile) summed
// into the parts an SA's cost is made of, so that each run prints its
// own breakdown instead of one read by hand off go tool pprof.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// part is one share of the node's CPU: a sample belongs to the first part
// (in parts' order) that one of its stack's frames matches.
type part struct {
	name  string
	match []string // prefixes of function names
}

// parts: the engine first, so that the collector's assists and the
// allocations inside it count as its own (as they do in "the engine in
// the node"); etcd's request path (the client, its gRPC layer, the
// proposal) before the rest of etcd's server (its backend, compactor and
// lessor); etcd's apply loop and raft goroutines never run the node's
// code.
var parts = []part{
	{"the IKE engine", []string{"github.com/ikefleet/ikefleet/concentrator/ike.(*Engine)."}},
	{"etcd applying transactions", []string{"go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).applyAll"}},
	{"etcd's raft, WAL and snapshots", []string{"go.etcd.io/raft/", "go.etcd.io/etcd/server/v3/storage/wal.",
		"go.etcd.io/etcd/server/v3/etcdserver.(*raftNode)", "go.etcd.io/etcd/server/v3/etcdserver/api/snap.",
		"go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).snapshot"}},
	{"the store's requests (batcher, reservations, etcd's client and gRPC layer)", []string{
		"github.com/ikefleet/ikefleet/statestore.", "go.etcd.io/etcd/client/v3.", "go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.",
		"go.etcd.io/etcd/server/v3/etcdserver/api/v3client.", "go.etcd.io/etcd/server/v3/proxy/grpcproxy/adapter.",
		"google.golang.org/grpc"}},
	{"etcd's backend commits, compaction and leases", []string{"go.etcd.io/etcd/", "go.etcd.io/bbolt."}},
	{"the collector (background)", []string{"runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"}},
	{"the data plane", []string{"github.com/ikefleet/ikefleet/concentrator/dataplane/"}},
	{"socket I/O", []string{"github.com/ikefleet/ikefleet/concentrator/transport."}},
	{"logs", []string{"github.com/ikefleet/ikefleet/internal/evlog.", "github.com/ikefleet/ikefleet/internal/ratelog.",
		"log/slog.", "main.(*bufferedLog)"}},
	{"metrics", []string{"github.com/prometheus/", "github.com/ikefleet/ikefleet/concentrator/metrics."}},
	{"the node's own work (queues, actions, timers)", []string{"github.com/ikefleet/ikefleet/", "main."}},
	{"the Go scheduler (waits and wakeups)", []string{"runtime.schedule", "runtime.findRunnable", "runtime.park_m",
		"runtime.netpoll", "runtime.mcall", "runtime.goexit0", "runtime.notesleep", "runtime.stopm"}},
}

// otherPart is the name of what no part matches.
const otherPart = "other"

// matches reports whether the function name fn is one of p's.
func (p part) matches(fn string) bool {
	for _, m := range p.match {
		if strings.HasPrefix(fn, m) {
			return true
		}
	}
	return false
}

// share is one part's CPU in a profile.
type share struct {
	name string
	cpu  time.Duration
}

// breakdown sums a CPU profile's samples by part, in parts' order (other
// last); total is all of its samples.
func breakdown(p *profile.Profile) (shares []share, total time.Duration, err error) {
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			idx = i
		}
	}
	if idx < 0 {
		return nil, 0, fmt.Errorf("not a CPU profile (no cpu/nanoseconds samples)")
	}
	sums := make([]time.Duration, len(parts)+1)
	for _, s := range p.Sample {
		v := time.Duration(s.Value[idx])
		sums[partOf(s)] += v
		total += v
	}
	for i, d := range sums {
		name := otherPart
		if i < len(parts) {
			name = parts[i].name
		}
		shares = append(shares, share{name, d})
	}
	return shares, total, nil
}

// partOf is the index in parts of the part sample s belongs to, or
// len(parts) for none.
func partOf(s *profile.Sample) int {
	for i, p := range parts {
		for _, loc := range s.Location {
			for _, l := range loc.Line {
				if l.Function != nil && p.matches(l.Function.Name) {
					return i
				}
			}
		}
	}
	return len(parts)
}

// readBreakdown reads the CPU profile at path and sums it by part.
func readBreakdown(path string) (shares []share, total time.Duration, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	shares, total, err = breakdown(p)
	if err == nil && total == 0 {
		err = fmt.Errorf("%s: no samples", path)
	}
	return shares, total, err
}

// minShare: parts below it (of every profile printed) are left out.
const minShare = 0.005

// printBreakdown prints where the CPU of the profile at path went: each
// part's share of the samples, and that share of perSA (the CPU the run
// measured per SA, or per handshake: unit). A missing or unreadable
// profile is said so in one line.
func printBreakdown(out io.Writer, path string, perSA time.Duration, unit string) {
	shares, total, err := readBreakdown(path)
	if err != nil {
		fmt.Fprintf(out, "  where the node's CPU went: %v\n", err)
		return
	}
	fmt.Fprintf(out, "  where the node's CPU went (its CPU profile: %.2f s sampled; each part's share, and that share of the %.3f ms measured per %s):\n",
		total.Seconds(), ms(perSA), unit)
	for _, s := range shares {
		if frac := float64(s.cpu) / float64(total); frac >= minShare {
			fmt.Fprintf(out, "    %-74s %5.1f%% %7.3f ms\n", s.name, 100*frac, frac*ms(perSA))
		}
	}
}

// printBreakdownPair prints two profiles' breakdowns side by side under
// heading (the scale run's probes at 1,000 SAs held and at --scale; an
// A/B's last round of each build): each part in ms of the CPU measured
// per SA with the profile, and their ratio, which shows what grew.
func printBreakdownPair(out io.Writer, heading, labelA, pathA string, perA time.Duration, labelB, pathB string, perB time.Duration) {
	a, ta, errA := readBreakdown(pathA)
	b, tb, errB := readBreakdown(pathB)
	if err := errors.Join(errA, errB); err != nil {
		fmt.Fprintf(out, "  %s: %v\n", heading, err)
		return
	}
	fmt.Fprintf(out, "  %s (their CPU profiles, %.2f s and %.2f s sampled; each part's share of the CPU measured per SA):\n",
		heading, ta.Seconds(), tb.Seconds())
	fmt.Fprintf(out, "    %-74s %13s %13s %6s\n", "", labelA, labelB, "ratio")
	for i := range a {
		fa, fb := float64(a[i].cpu)/float64(ta), float64(b[i].cpu)/float64(tb)
		if fa < minShare && fb < minShare {
			continue
		}
		ma, mb := fa*ms(perA), fb*ms(perB)
		ratio := "-"
		if ma > 0 {
			ratio = strconv.FormatFloat(mb/ma, 'f', 2, 64)
		}
		fmt.Fprintf(out, "    %-74s %10.3f ms %10.3f ms %6s\n", a[i].name, ma, mb, ratio)
	}
}
