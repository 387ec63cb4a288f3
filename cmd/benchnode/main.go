// Command benchnode measures what a concentrator node costs per SA: it runs
// concentratord as a child process in each configuration (data plane ×
// state store), drives it over loopback with simulated gateways built on
// the engine's initiator, and reads the node's CPU time and memory from
// /proc. It prints one row per configuration, a row for strongSwan's
// charon under the same load when it is installed (strongswan.go), a
// burst row (N gateways at once) and, with --scale, the cost of a setup at
// 1,000 vs N established SAs (and at 1,000 again, on a fresh node).
//
//	benchnode --concentratord bin/concentratord            # make bench-node
//	benchnode --rows memory+none --count 5000 --rate 1000
//	benchnode --rows '' --burst 10000                      # only the burst
//	benchnode --rows '' --burst 0 --scale 100000 --rate 400  # only the scale run
//	benchnode --rows memory+embedded --against /tmp/old/concentratord  # A/B two builds (ab.go)
//
// The node is pinned to CPU 0 and the driver to CPU 1 (--pin), so "CPU
// per SA" is the node's alone: user+system time of the whole process
// (embedded etcd included) from the first IKE_SA_INIT to the last DELETE
// answered, divided by the SAs. The engine's own cost per handshake is
// measured in this process in the same run, and every row is given as a
// ratio to it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchnode:", err)
		os.Exit(1)
	}
}

type options struct {
	bin         string
	rows        []nodeSpec
	count       int
	rate        float64
	burst       int
	burstSpec   nodeSpec
	scale       int
	scaleRate   float64
	scaleSettle time.Duration
	scaleDPD    string
	scaleMem    string
	commitDelay string // statestore.commit_delay of every node with a store, if not the default
	leaseTTL    string // statestore.lease_ttl of every node with a store, if not the default
	scaleProbe  int
	scaleAgain  bool // probe a fresh node at 1,000 held again after the probe at scale
	groups      int
	pin         bool
	cpuprofile  string
	heapprofile string
	timeout     time.Duration
	prop, esp   ike.ProposalSpec
	charon      string        // strongSwan's charon for the strongswan row
	engineCPU   time.Duration // given: the engine's cost is not measured again (the strongswan row's child)
	rowJSON     bool          // print the one row's result as JSON (the strongswan row's child)
	against     string        // a baseline concentratord: the rows run A/B against it (ab.go)
	rounds      int           // with against: rounds per row
	rateTag     string        // with several --rates: the rate, in the rows' profile names
	check       bool          // fail unless every row and the burst established all their gateways
	short       []string      // with check: the rows (and burst) that did not
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("benchnode", flag.ContinueOnError)
	bin := fs.String("concentratord", "bin/concentratord", "concentratord binary")
	rows := fs.String("rows", "memory+none,userspace+none,memory+embedded,userspace+embedded,strongswan",
		"configurations (dataplane+statestore, or strongswan: charon with kernel-libipsec), comma-separated; dataplane memory, userspace or xfrm (kernel ESP: a kernel with esp4 and GCM, e.g. make bench-node-vm); userspace, xfrm and strongswan need root; strongswan is skipped without charon")
	charon := fs.String("charon", "/usr/lib/ipsec/charon", "strongSwan's charon, for the strongswan row")
	engineCPU := fs.Duration("engine-cpu", 0, "the engine's CPU per SA (setup + delete), if measured already (the strongswan row runs benchnode again in a network namespace); the burst's bound then takes it for a handshake's")
	rowJSON := fs.Bool("row-json", false, "run the one row of --rows and print its result as JSON (the strongswan row's child)")
	count := fs.Int("count", 2000, "gateways per row: set up at --rate, then all deleted")
	rate := fs.Float64("rate", 1000, "new SAs per second in the rows, and in the probes of --scale")
	rates := fs.String("rates", "", "the rows' table once per rate, comma-separated (e.g. 1000,400: at 400/s the setups come too far apart to share an etcd transaction); profiles of the rows then go to FILE.<row>.<rate>; default: --rate")
	burst := fs.Int("burst", 10000, "gateways at once in the burst row (0: no burst row)")
	burstCfg := fs.String("burst-config", "userspace+embedded", "configuration of the burst row")
	scale := fs.Int("scale", 0, "also establish this many SAs and compare the cost of a setup at 1,000 and at this many (0: skip)")
	scaleRate := fs.Float64("scale-rate", 800, "new SAs per second while growing to --scale")
	scaleProbe := fs.Int("scale-probe", 20000, "with --scale: gateways in each probe, each deleted as soon as it is established (so the SAs held stay at 1,000 and at --scale); at 100,000 SAs the node's heap is near 1 GB and one garbage collection cycle costs it about half a second of CPU, which a probe of 1,000 takes whole or not at all")
	scaleMem := fs.String("scale-memory-limit", "", "with --scale: the node's node.memory_limit (e.g. 1GiB): the Go heap's soft limit, which trades CPU (more collections) for memory; default: none (no cgroup limit here)")
	scaleDPD := fs.String("scale-dpd-delay", "", "with --scale: the node's ike.dpd_delay (e.g. 0s: no liveness checks, so that the probes measure setups alone); default: the node's default (60s)")
	scaleAgain := fs.Bool("scale-again", true, "with --scale: after the probe at --scale, grow a fresh node to 1,000 held and probe it again; the probe at --scale is also given against the mean of the probes at 1,000 before and after, so that a drift of the machine's speed over the run's minutes (a shared VM) does not read as growth, or hide it")
	scaleSettle := fs.Duration("scale-settle", 70*time.Second, "with --scale: quiet time before each probe of setups, so that both start from a compacted store (the embedded etcd keeps a minute of history), and the node's idle CPU over its last minute; 0: probe at once")
	leaseTTL := fs.String("lease-ttl", "", "the nodes' statestore.lease_ttl (e.g. 10s): a node that cannot renew its lease in time fences itself, and one that cannot at its start exits, which a CPU emulated in a VM (make bench-node-vm) or a starved one can cause; default: the node's default (3s)")
	commitDelay := fs.String("commit-delay", "", "the nodes' statestore.commit_delay (e.g. 8ms): how long a change waits for others to share its etcd transaction, which trades setup latency for CPU; default: the node's default (2ms)")
	groups := fs.Int("groups", 64, "gateway groups, each with its own loopback source address (127.1.x.y) and ports")
	pin := fs.Bool("pin", true, "pin the node to CPU 0 and this driver to CPU 1")
	cpuprofile := fs.String("cpuprofile", "", "write the node's CPU profile of each row to FILE.<row>, and with --scale of each probe to FILE.probe-<SAs held> and of the quiet minute before it to FILE.idle-<SAs held>; with --against the baseline's to FILE.base.<row> (each build's last round) (go tool pprof); each row, the burst and the probes then print where the node's CPU went, its profile summed by part")
	heapprofile := fs.String("heapprofile", "", "save the node's heap profile of each row to FILE.<row> after its deletes and to FILE.<row>.base before its setups, so that what the row allocated is go tool pprof -sample_index=alloc_space -base FILE.<row>.base FILE.<row>; with --scale instead, the heap profile at the peak to FILE (go tool pprof)")
	timeout := fs.Duration("timeout", 120*time.Second, "per phase")
	against := fs.String("against", "", "a baseline concentratord (another build): run each row of --rows --rounds times with both, alternating, and print the median of the rounds' ratios (this build over the baseline); no burst or scale run")
	rounds := fs.Int("rounds", 6, "with --against: rounds per row")
	check := fs.Bool("check", false, "exit with an error unless every row of --rows ran (none skipped) and it and the burst established all their gateways (a smoke test of the harness and the node)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *scaleProbe < 1 {
		return fmt.Errorf("--scale-probe: %d: at least 1", *scaleProbe)
	}
	if *rounds < 1 {
		return fmt.Errorf("--rounds: %d: at least 1", *rounds)
	}
	if *groups < 1 || *groups > maxGroups {
		return fmt.Errorf("--groups: %d: from 1 to %d", *groups, maxGroups)
	}
	rowRates, err := parseRates(*rates, *rate)
	if err != nil {
		return err
	}
	if len(rowRates) > 1 && *against != "" {
		return errors.New("--rates: one rate with --against (use --rate)")
	}
	o := options{bin: *bin, count: *count, rate: *rate, burst: *burst, scale: *scale, scaleRate: *scaleRate, scaleSettle: *scaleSettle, scaleDPD: *scaleDPD, scaleMem: *scaleMem, scaleProbe: *scaleProbe, scaleAgain: *scaleAgain, commitDelay: *commitDelay, leaseTTL: *leaseTTL,
		groups: *groups, pin: *pin, cpuprofile: *cpuprofile, heapprofile: *heapprofile, timeout: *timeout,
		charon: *charon, engineCPU: *engineCPU, rowJSON: *rowJSON, against: *against, rounds: *rounds, check: *check}
	if o.prop, err = ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false); err != nil {
		return err
	}
	if o.esp, err = ike.ParseProposal("aes256gcm16", true, false); err != nil {
		return err
	}
	for _, r := range strings.Split(*rows, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		s, err := parseSpec(r)
		if err != nil {
			return fmt.Errorf("--rows: %w", err)
		}
		o.rows = append(o.rows, s)
	}
	if o.burstSpec, err = parseSpec(*burstCfg); err != nil {
		return fmt.Errorf("--burst-config: %w", err)
	}
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("--concentratord: %w (make build)", err)
	}
	if o.against != "" {
		if _, err := os.Stat(o.against); err != nil {
			return fmt.Errorf("--against: %w", err)
		}
	}
	nodeCPU := -1
	if o.pin {
		if err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).Run(); err != nil {
			return fmt.Errorf("--pin: taskset: %w", err)
		}
		nodeCPU = 0
	}

	if o.rowJSON {
		return o.printRowJSON(ctx, os.Stdout, nodeCPU)
	}
	cost := engineCost{handshake: o.engineCPU}
	if o.engineCPU <= 0 {
		if cost, err = measureEngine(2000, o.prop, o.esp); err != nil {
			return err
		}
	}
	// The rows' CPU per SA counts a setup and a delete, and so does their
	// ×engine; a burst's counts a handshake.
	eng, hs := cost.perSA(), cost.handshake
	host, _ := os.Hostname()
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		host += ", load average " + strings.Join(strings.Fields(string(la))[:3], " ")
	}
	fmt.Fprintf(out, "benchnode: %s, PSK, x25519, aes256gcm16, virtual IPs; node on CPU 0, driver on CPU 1 (pin=%v), %d source addresses\n",
		host, o.pin, o.groups)
	if o.engineCPU > 0 {
		fmt.Fprintf(out, "engine alone: %.3f ms CPU per SA (given)\n", ms(eng))
	} else {
		fmt.Fprintf(out, "engine alone: %.3f ms CPU per SA: %.3f ms per responder handshake + %.3f ms per delete (in-process, same run)\n",
			ms(eng), ms(cost.handshake), ms(cost.delete))
	}
	fmt.Fprintf(out, "CPU/SA: node user+system time, setup + delete; cpu-wait: thread time runnable but waiting for the node's CPU (behind other processes or the node's own threads: charon runs 16)\n\n")
	if o.against != "" {
		return o.abRows(ctx, out, nodeCPU)
	}

	if len(o.rows) > 0 {
		for _, r := range rowRates {
			o.rate = r
			if len(rowRates) > 1 {
				o.rateTag = "." + strconv.FormatFloat(r, 'f', -1, 64)
			}
			o.rowsTable(ctx, out, eng, nodeCPU)
		}
		o.rate, o.rateTag = *rate, ""
	}
	if o.burst > 0 {
		if err := o.burstRow(ctx, out, hs, nodeCPU); err != nil {
			fmt.Fprintf(out, "burst: error: %v\n", err)
			o.short = append(o.short, "burst: "+firstLine(err))
		}
		fmt.Fprintln(out)
	}
	if o.scale > 0 {
		if err := o.scaleRun(ctx, out, eng, nodeCPU); err != nil {
			fmt.Fprintf(out, "scale: error: %v\n", err)
			o.short = append(o.short, "scale: "+firstLine(err))
		}
	}
	if o.check && len(o.short) > 0 {
		return fmt.Errorf("--check: %s", strings.Join(o.short, "; "))
	}
	return nil
}

// rowsTable runs each row of o.rows at o.rate and prints their table.
func (o *options) rowsTable(ctx context.Context, out io.Writer, eng time.Duration, nodeCPU int) {
	fmt.Fprintf(out, "rows: %d gateways at %.0f/s, all established, then all deleted", o.count, o.rate)
	if o.commitDelay != "" {
		fmt.Fprintf(out, "; statestore.commit_delay %s", o.commitDelay)
	}
	fmt.Fprintln(out)
	const rowFmt = "%-20s %10s %8s %8s %8s %11s %10s %10s %11s %12s %7s %12s %11s\n"
	fmt.Fprintf(out, rowFmt, "config", "CPU/SA ms", "×engine", "p50 ms", "p99 ms", "RSS/SA KiB", "etcd txn/SA", "etcd wr/SA", "etcd rd/SA", "established", "failed", "retransmits", "cpu-wait s")
	for _, spec := range o.rows {
		spec.gateways = o.count
		var r rowResult
		var err error
		if spec.strongswan {
			r, err = o.strongswanRow(ctx, spec, eng)
		} else {
			r, err = o.row(ctx, spec, nodeCPU)
		}
		var skip errSkipped
		if errors.As(err, &skip) {
			fmt.Fprintf(out, "%-20s skipped: %s\n", spec, skip.why)
			o.short = append(o.short, spec.String()+": skipped")
			continue
		}
		if err != nil {
			fmt.Fprintf(out, "%-20s error: %s\n", spec, firstLine(err))
			o.short = append(o.short, spec.String()+": "+firstLine(err))
			continue
		}
		if r.Established < o.count || r.Failed > 0 {
			o.short = append(o.short, fmt.Sprintf("%s: %d of %d established, %d failed", spec, r.Established, o.count, r.Failed))
		}
		f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
		fmt.Fprintf(out, rowFmt, spec, f(ms(r.CPUPerSA), 3), f(float64(r.CPUPerSA)/float64(eng), 1),
			f(ms(r.P50), 1), f(ms(r.P99), 1), f(float64(r.RSSPerSA)/1024, 2), f(r.TxnsPerSA, 2), f(r.WritesPerSA, 1), f(r.ReadsPerSA, 2), strconv.Itoa(r.Established), strconv.Itoa(r.Failed),
			strconv.FormatUint(r.Retransmits, 10), f(r.Waited.Seconds(), 2))
		if len(r.Failures) > 0 {
			fmt.Fprintf(out, "  failures: %v\n", r.Failures)
		}
		if e := r.Engine; e.Total > 0 && r.Established > 0 {
			inNode := e.Total / time.Duration(r.Established)
			fmt.Fprintf(out, "  the engine in the node: %.3f ms per SA (%.1f× the engine alone), the rest of the node %.3f ms; per message: IKE_SA_INIT %.0f µs, IKE_AUTH %.0f µs, INFORMATIONAL %.0f µs; timers %.2f s in all; %.0f of about %.0f readings counted at their mean\n",
				ms(inNode), float64(inNode)/float64(eng), ms(r.CPUPerSA-inNode), us(e.PerCall[0]), us(e.PerCall[1]), us(e.PerCall[2]), e.Timers.Seconds(), e.Outliers, e.Calls/metrics.EngineSample)
		}
		if r.AllocPerSA > 0 {
			fmt.Fprintf(out, "  the node's Go heap allocated %.1f KB in %.0f objects per SA (setup + delete: the garbage its collector marks for and sweeps)\n",
				r.AllocPerSA/1000, r.ObjectsPerSA)
		}
		if r.CommitP99 > 0 {
			fmt.Fprintf(out, "  the store's commit wait of the established SAs (the node's histogram): p50 %.1f ms, p99 %.1f ms\n",
				ms(r.CommitP50), ms(r.CommitP99))
		}
		if !r.NodeSetup.quiet() {
			fmt.Fprintf(out, "  node during the setups: %s\n", r.NodeSetup)
		}
		if !r.NodeDelete.quiet() {
			fmt.Fprintf(out, "  node during the deletes: %s\n", r.NodeDelete)
		}
		if path := o.profileFor(spec.String()); path != "" && !spec.strongswan {
			// Written by the node as it exited, at the end of o.row.
			printBreakdown(out, path, r.CPUPerSA, "SA")
		}
	}
	fmt.Fprintln(out)
}

// parseRates reads --rates: positive rates, comma-separated; "" is def
// alone.
func parseRates(list string, def float64) ([]float64, error) {
	if strings.TrimSpace(list) == "" {
		return []float64{def}, nil
	}
	var out []float64
	for _, f := range strings.Split(list, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || !(r > 0) || math.IsInf(r, 0) { // NaN too
			return nil, fmt.Errorf("--rates: %q: want positive rates, comma-separated", list)
		}
		out = append(out, r)
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func us(d time.Duration) float64 { return float64(d) / 1e3 }

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func parseSpec(s string) (nodeSpec, error) {
	if s == "strongswan" {
		return nodeSpec{strongswan: true}, nil
	}
	dp, st, ok := strings.Cut(s, "+")
	if !ok {
		return nodeSpec{}, fmt.Errorf("%q: want dataplane+statestore, e.g. memory+none", s)
	}
	switch dp {
	case "memory", "userspace", "xfrm":
	default:
		return nodeSpec{}, fmt.Errorf("%q: data plane must be memory, userspace or xfrm", s)
	}
	switch st {
	case "none", "embedded":
	default:
		return nodeSpec{}, fmt.Errorf("%q: state store must be none or embedded", s)
	}
	return nodeSpec{dataplane: dp, statestore: st}, nil
}

// The node's counts of etcd transactions, of the puts and deletes in
// them, and of etcd Range requests (each a read on the path that asked
// for it).
const (
	storeTxns    = "ikefleet_statestore_txns_total"
	storePuts    = `ikefleet_statestore_writes_total{op="put"}`
	storeDeletes = `ikefleet_statestore_writes_total{op="delete"}`
	etcdReads    = `ikefleet_etcd_request_duration_seconds_count{method="Range"}`
	// commitWait: how long the node's SA changes waited for their commit;
	// its series of the established changes is what an IKE_AUTH waits.
	commitWait  = "ikefleet_statestore_commit_wait_seconds"
	established = `change="established"`
)

// rowResult is one row's figures (exported: the strongswan row's child
// sends them as JSON, strongswan.go).
type rowResult struct {
	CPUPerSA, P50, P99 time.Duration
	Waited             time.Duration // node runnable, waiting for a CPU
	RSSPerSA           int64
	TxnsPerSA          float64 // etcd transactions (setup + delete, reservations included)
	WritesPerSA        float64 // puts and deletes in them
	ReadsPerSA         float64 // etcd reads (Range requests) outside transactions
	Established        int
	Failed             int
	Retransmits        uint64
	// CommitP50, CommitP99: the store's commit wait of the SAs'
	// established changes (from the node's histogram; 0 without a store).
	CommitP50, CommitP99 time.Duration
	Failures             map[string]int
	// The node's drops, cookies and failures over the setups and over the
	// deletes (all at once) (probeCounters).
	NodeSetup, NodeDelete nodeCounters
	// The node's engine over the row (its engine_cpu_seconds_total).
	Engine engineInNode
	// AllocPerSA, ObjectsPerSA: what the node's Go heap allocated over
	// the row (go_memstats_alloc_bytes_total, go_memstats_mallocs_total),
	// per SA: the garbage its collector marks for and sweeps. Unlike the
	// CPU, it hardly moves with the machine's speed, so a change of a few
	// percent in it shows in one run.
	AllocPerSA, ObjectsPerSA float64
}

// allocSeries are the node's counters of AllocPerSA and ObjectsPerSA.
var allocSeries = []string{"go_memstats_alloc_bytes_total", "go_memstats_mallocs_total"}

// engineInNode is what a node's engine spent over a row, from its
// engine_cpu_seconds_total and engine_calls_total: in all, and per message
// of the exchanges a row's SAs make.
type engineInNode struct {
	Total   time.Duration
	Timers  time.Duration // the timers' runs, in all
	PerCall [3]time.Duration
	// Calls in all, and the timed ones counted at their work's mean
	// (engine_cpu_outliers_total).
	Calls, Outliers float64
}

// engineWork are the exchanges of engineInNode.PerCall.
var engineWork = [3]string{"IKE_SA_INIT", "IKE_AUTH", "INFORMATIONAL"}

// engineSeries returns the node's engine series: the time summed over
// every work, the timers' time, the calls and outliers summed, then each
// of engineWork's time and calls.
func engineSeries() []string {
	names := []string{"ikefleet_engine_cpu_seconds_total", `ikefleet_engine_cpu_seconds_total{work="timers"}`,
		"ikefleet_engine_calls_total", "ikefleet_engine_cpu_outliers_total"}
	for _, w := range engineWork {
		names = append(names, `ikefleet_engine_cpu_seconds_total{work="`+w+`"}`, `ikefleet_engine_calls_total{work="`+w+`"}`)
	}
	return names
}

// engineOver reads engineInNode from engineSeries' values at a row's
// start and end.
func engineOver(a, b []float64) engineInNode {
	d := func(i int) float64 { return b[i] - a[i] }
	sec := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	e := engineInNode{Total: sec(d(0)), Timers: sec(d(1)), Calls: d(2), Outliers: d(3)}
	for i := range engineWork {
		if calls := d(5 + 2*i); calls > 0 {
			e.PerCall[i] = sec(d(4+2*i) / calls)
		}
	}
	return e
}

func (o *options) start(spec nodeSpec, nodeCPU int, profile string, pprof bool) (*nodeProc, *fleet, context.CancelFunc, error) {
	if spec.dataplane == "userspace" && os.Geteuid() != 0 {
		return nil, nil, nil, errors.New("needs root (TUN device)")
	}
	if spec.dataplane == "xfrm" {
		if err := kernelESPReady(); err != nil {
			return nil, nil, nil, err
		}
	}
	var p *nodeProc
	var err error
	spec.commitDelay, spec.leaseTTL = o.commitDelay, o.leaseTTL
	if spec.strongswan {
		p, err = o.startCharon(spec, nodeCPU)
	} else {
		p, err = startNode(o.bin, spec, nodeCPU, profile, pprof)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	fctx, cancel := context.WithCancel(context.Background())
	f, err := newFleet(fctx, fleetOptions{server: p.ike, serverNATT: p.nattPort, groups: o.groups, proposal: o.prop, esp: o.esp,
		remoteTS: []ike.TrafficSelector{ike.SelectorFromPrefix(mustPrefix("10.30.0.0/24"))}})
	if err != nil {
		cancel()
		p.stop()
		return nil, nil, nil, err
	}
	return p, f, func() { f.close(); cancel(); p.stop() }, nil
}

func (o *options) profileFor(name string) string { return o.rowPath(o.cpuprofile, name) }

// heapFor is where a row's heap profiles go (rows only: --scale saves one
// of its own).
func (o *options) heapFor(name string) string {
	if o.scale > 0 {
		return ""
	}
	return o.rowPath(o.heapprofile, name)
}

// rowPath is a row's (or the burst's, the probe's) file beside base,
// named for it and for the rate; "" without a base.
func (o *options) rowPath(base, name string) string {
	if base == "" {
		return ""
	}
	return base + "." + strings.ReplaceAll(name, "+", "-") + o.rateTag
}

// row sets up spec.gateways SAs at o.rate, deletes them all, and reports
// the node's CPU time per SA (setup + delete), setup latency, and memory
// per established SA.
func (o *options) row(ctx context.Context, spec nodeSpec, nodeCPU int) (rowResult, error) {
	var r rowResult
	heap := o.heapFor(spec.String())
	p, f, stop, err := o.start(spec, nodeCPU, o.profileFor(spec.String()), heap != "")
	if err != nil {
		return r, err
	}
	defer stop()
	time.Sleep(500 * time.Millisecond) // let start-up work settle
	if heap != "" {
		if err := p.heapProfile(heap + ".base"); err != nil {
			return r, err
		}
	}
	// One scrape of the node's metrics before its CPU is read, one
	// between the setups and the deletes (the only one the row counts),
	// one after: each costs the node a few milliseconds.
	e0 := p.exposition()
	store0 := e0.metrics(storeTxns, etcdReads, storePuts, storeDeletes)
	engine0 := e0.metrics(engineSeries()...)
	alloc0 := e0.metrics(allocSeries...)
	commit0 := e0.buckets(commitWait, established)
	node0 := probeCounters(e0)
	rss0, _ := p.rss()
	wait0 := p.waited()
	cpu0, _ := p.cpu()
	setupErr := f.runSetups(ctx, 1, spec.gateways, o.rate, o.timeout)
	rss1, _ := p.rss()
	e1 := p.exposition()
	commit1 := e1.buckets(commitWait, established)
	r.CommitP50, _ = histQuantile(commit0, commit1, 0.50)
	r.CommitP99, _ = histQuantile(commit0, commit1, 0.99)
	node1 := probeCounters(e1)
	r.NodeSetup = node1.sub(node0)
	lat, _, failures := f.phase()
	r.Established, r.Failed = int(f.up.Load()), int(f.fail.Load())
	r.Failures = failures
	p.keep = r.Failed > 0
	if setupErr != nil {
		return r, setupErr
	}
	if err := f.deleteAll(ctx, o.timeout); err != nil {
		return r, err
	}
	cpu1, err := p.cpu()
	if err != nil {
		return r, err
	}
	if heap != "" {
		if err := p.heapProfile(heap); err != nil {
			return r, err
		}
	}
	r.Retransmits = f.stats()
	r.Waited = p.waited() - wait0
	r.CPUPerSA = (cpu1 - cpu0) / time.Duration(max(1, r.Established))
	e2 := p.exposition()
	store1 := e2.metrics(storeTxns, etcdReads, storePuts, storeDeletes)
	r.Engine = engineOver(engine0, e2.metrics(engineSeries()...))
	if alloc1 := e2.metrics(allocSeries...); alloc1[0] > alloc0[0] {
		r.AllocPerSA = (alloc1[0] - alloc0[0]) / float64(max(1, r.Established))
		r.ObjectsPerSA = (alloc1[1] - alloc0[1]) / float64(max(1, r.Established))
	}
	r.NodeDelete = probeCounters(e2).sub(node1)
	r.TxnsPerSA = (store1[0] - store0[0]) / float64(max(1, r.Established))
	r.ReadsPerSA = (store1[1] - store0[1]) / float64(max(1, r.Established))
	r.WritesPerSA = (store1[2] + store1[3] - store0[2] - store0[3]) / float64(max(1, r.Established))
	r.P50, r.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	r.RSSPerSA = (rss1 - rss0) / int64(max(1, r.Established))
	return r, nil
}

// burstRow starts o.burst gateways at once against the burst
// configuration and reports how many established and when the last did,
// against 1.5 × (N × CPU per handshake ÷ cores).
func (o *options) burstRow(ctx context.Context, out io.Writer, eng time.Duration, nodeCPU int) error {
	spec := o.burstSpec
	spec.gateways = o.burst
	profile := o.profileFor("burst")
	p, f, stop, err := o.start(spec, nodeCPU, profile, false)
	if err != nil {
		return err
	}
	stop = sync.OnceFunc(stop)
	defer stop()
	cores := 1
	if nodeCPU < 0 {
		cores = numCPU()
	}
	time.Sleep(500 * time.Millisecond)
	drops0 := udpRcvbufErrors()
	node0 := burstCounters(p)
	cpu0, _ := p.cpu()
	wait0 := p.waited()
	self0 := selfCPU()
	start := time.Now()
	setupErr := f.runSetups(ctx, 1, o.burst, 0, o.timeout)
	self1 := selfCPU()
	cpu1, _ := p.cpu()
	wait1 := p.waited()
	lat, last, failures := f.phase()
	drops := udpRcvbufErrors() - drops0
	up := f.up.Load()
	toLast := last.Sub(start)
	if up == 0 {
		toLast = 0
	}
	perHS := (cpu1 - cpu0) / time.Duration(max(1, up))
	if int(up) < o.burst {
		o.short = append(o.short, fmt.Sprintf("burst: %d of %d established", up, o.burst))
	}
	bound := time.Duration(1.5 * float64(o.burst) * float64(eng) / float64(cores))
	fmt.Fprintf(out, "burst: %d gateways at once against %s (node on %d core)\n", o.burst, spec, cores)
	fmt.Fprintf(out, "  established %d/%d (%.1f%%), failed %d, time to last %.2f s, p50 %.0f ms, p99 %.0f ms, UdpRcvbufErrors +%d, retransmits %d\n",
		up, o.burst, 100*float64(up)/float64(o.burst), f.fail.Load(), toLast.Seconds(), ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)),
		drops, f.stats())
	fmt.Fprintf(out, "  the gateways (this driver) used %.2f s of CPU meanwhile\n", (self1 - self0).Seconds())
	node := burstCounters(p)
	fmt.Fprintf(out, "  node: %.0f cookie demands sent, %.0f datagrams dropped in its shard queues (%.0f IKE_AUTH and established SAs', %.0f cookie-proven new SAs', %.0f other new SAs'), %.0f IKE messages dropped, %.0f new IKE_SA_INITs refused by admission limits, %.0f reserved SPIs handed back unused\n",
		node[0]-node0[0], node[1]-node0[1], node[5]-node0[5], node[6]-node0[6], node[7]-node0[7], node[2]-node0[2], node[3]-node0[3], node[4]-node0[4])
	fmt.Fprintf(out, "  node CPU per handshake in the burst %.3f ms (%.1f× engine); node threads runnable but waiting for a CPU: %.2f s (other processes)\n",
		ms(perHS), float64(perHS)/float64(eng), (wait1 - wait0).Seconds())
	fmt.Fprintf(out, "  bound 1.5 × N × engine CPU/handshake ÷ cores = %.2f s: time to last is %.2f× the bound\n",
		bound.Seconds(), toLast.Seconds()/bound.Seconds())
	nodeBound := time.Duration(1.5 * float64(cpu1-cpu0) / float64(cores))
	fmt.Fprintf(out, "  bound 1.5 × node CPU spent ÷ cores = %.2f s: time to last is %.2f× it (above 1: the node idled while gateways waited)\n",
		nodeBound.Seconds(), toLast.Seconds()/nodeBound.Seconds())
	if len(failures) > 0 {
		fmt.Fprintf(out, "  failures: %v\n", failures)
		p.keep = true
	}
	if q := p.count(`"msg":"cookie demanded"`); q > 0 {
		fmt.Fprintf(out, "  cookie log lines: %d\n", q)
	}
	if profile != "" {
		stop() // the node writes its profile as it exits
		printBreakdown(out, profile, perHS, "handshake")
	}
	return setupErr
}

// burstCounters reads the node's counters of what a burst can cost its
// gateways a retransmission: cookie demands, shard queue drops (all, then
// by queue: IKE_AUTH and established SAs', cookie-proven new SAs', other
// new SAs'), dropped IKE messages, refused half-open SAs.
func burstCounters(p *nodeProc) [8]float64 {
	return [8]float64(p.metrics("ikefleet_cookies_sent_total", "ikefleet_queue_drops_total",
		"ikefleet_ike_messages_dropped_total", "ikefleet_sa_init_refused_total", "ikefleet_returned_spis_total",
		`ikefleet_queue_drops_total{queue="other"}`, `ikefleet_queue_drops_total{queue="proven"}`, `ikefleet_queue_drops_total{queue="new"}`))
}

// nodeCounters are the node's counts of what it dropped, refused or
// failed, and of its etcd transactions (probeCounters).
type nodeCounters [8]float64

// quiet: nothing dropped, refused or failed.
func (c nodeCounters) quiet() bool { return [7]float64(c[:7]) == [7]float64{} }

// probeCounters reads the node's counters of what it dropped, refused or
// failed: IKE messages dropped by its shard queues, IKE_AUTH and
// established SAs' (queue "other") apart from new SAs'; datagrams dropped
// by the kernel at its sockets, all and those of the split ports' sockets
// of new IKE_SA_INITs; cookies demanded, handshakes failed, state not
// persisted; and the store's etcd transactions.
func probeCounters(p interface{ metrics(...string) []float64 }) nodeCounters {
	return nodeCounters(p.metrics(`ikefleet_queue_drops_total{queue="other"}`, "ikefleet_queue_drops_total",
		"ikefleet_socket_receive_drops_total", `ikefleet_socket_receive_drops_total{receives="new"}`,
		"ikefleet_cookies_sent_total", "ikefleet_handshake_failures_total", "ikefleet_persist_failures_total",
		storeTxns))
}

func (c nodeCounters) sub(d nodeCounters) nodeCounters {
	for i := range c {
		c[i] -= d[i]
	}
	return c
}

func (c nodeCounters) String() string {
	return fmt.Sprintf("queue drops %.0f of IKE_AUTH and established SAs, %.0f of new SAs; socket drops %.0f, %.0f of them new IKE_SA_INITs; %.0f cookies, %.0f handshakes failed, %.0f persist failures",
		c[0], c[1]-c[0], c[2], c[3], c[4], c[5], c[6])
}

// store says how many etcd transactions the node made per SA over n
// setups and deletes: at a rate near the batcher's linger threshold,
// whether setups share transactions moves the CPU per SA more than
// anything else.
func (c nodeCounters) store(n int) string {
	return fmt.Sprintf("etcd transactions %.2f per SA", c[7]/float64(n))
}

// scaleRun establishes o.scale SAs and compares the node's CPU per setup
// and delete for o.scaleProbe gateways that come and go at 1,000
// established and at o.scale established, and reports memory per SA at
// o.scale.
func (o *options) scaleRun(ctx context.Context, out io.Writer, eng time.Duration, nodeCPU int) error {
	spec := o.burstSpec
	const base = 1000 // established at the first probe
	probe := o.scaleProbe
	spec.gateways = o.scale + 2*probe
	spec.dpdDelay = o.scaleDPD
	spec.memLimit = o.scaleMem
	// With --cpuprofile each probe gets a profile of its own (FILE.probe-1000,
	// FILE.probe-<scale>) from the node's net/http/pprof, instead of one of
	// the whole run, which the growth would dominate.
	probeProfile, idleProfile := o.profileFor("probe"), o.profileFor("idle")
	p, f, stop, err := o.start(spec, nodeCPU, "", o.heapprofile != "" || probeProfile != "")
	if err != nil {
		return err
	}
	stopFirst := sync.OnceFunc(stop)
	defer stopFirst()
	time.Sleep(500 * time.Millisecond)
	mem0, _ := p.memory()
	heap0 := p.goHeap()
	slab0, slabErr := kernelSlab()
	next := 1
	grow := func(n int, rate float64) error {
		err := f.runSetups(ctx, next, n, rate, o.timeout+time.Duration(float64(n)/rate*float64(time.Second)))
		next += n
		return err
	}
	// A probe's figures: the node's CPU per setup, the setups' p99, the
	// node's CPU per second while idle just before (what it spends anyway:
	// liveness checks of the SAs it holds, the collector) and the CPU per
	// setup net of that rate over the probe's run.
	type probeResult struct {
		cpu, p99, net time.Duration
		idle          float64
		node          nodeCounters // the node's counters over the probe (probeCounters)
		quiet         resident     // the node's memory at the end of the quiet, before the probe
		quietHeap     goHeap
		profile       string // the node's CPU profile of the probe (--cpuprofile)
	}
	// measure runs a probe: o.scaleProbe gateways set up at o.rate, each
	// deleted as soon as it is established, so that the SAs held stay
	// where they are; the probe is long enough to spread the collector's
	// cycles over it. It follows a quiet
	// o.scaleSettle: without it the probe at o.scale established would
	// also pay for compacting the history the fast growth left behind,
	// which the probe at 1,000 does not.
	measure := func(tag string) (probeResult, error) {
		var r probeResult
		if o.scaleSettle > 0 {
			// The idle rate over the last minute of the quiet: one whole
			// period of the liveness checks (ike.dpd_delay, 60 s), which
			// come in waves as the SAs were set up.
			window := min(o.scaleSettle, time.Minute)
			time.Sleep(o.scaleSettle - window)
			i0, _ := p.cpu()
			if idleProfile != "" {
				// What the node spends while it holds the SAs and sets up
				// none: liveness checks, the collector, etcd's compaction.
				path := fmt.Sprintf("%s-%d%s", idleProfile, f.up.Load()-f.deleted.Load(), tag)
				if err := p.cpuProfile(path, window); err != nil {
					fmt.Fprintf(out, "  idle CPU profile: %v\n", err)
					time.Sleep(window)
				}
			} else {
				time.Sleep(window)
			}
			i1, _ := p.cpu()
			r.idle = (i1 - i0).Seconds() / window.Seconds()
		}
		r.quiet, _ = p.memory()
		r.quietHeap = p.goHeap()
		c0, _ := p.cpu()
		t0 := time.Now()
		f.phase()
		n0 := probeCounters(p)
		expected := time.Duration(float64(probe) / o.rate * float64(time.Second)) // the probe's length at its rate
		var profiled chan error
		if probeProfile != "" {
			// A probe that takes longer is profiled for its first part.
			profiled = make(chan error, 1)
			path := fmt.Sprintf("%s-%d%s", probeProfile, f.up.Load()-f.deleted.Load(), tag)
			r.profile = path
			go func() { profiled <- p.cpuProfile(path, expected) }()
		}
		err := f.runChurn(ctx, next, probe, o.rate, o.timeout+expected)
		r.node = probeCounters(p).sub(n0)
		if profiled != nil {
			if perr := <-profiled; perr != nil {
				fmt.Fprintf(out, "  probe CPU profile: %v\n", perr)
			}
		}
		if err != nil {
			return r, fmt.Errorf("%w; node: %s", err, r.node)
		}
		next += probe
		c1, _ := p.cpu()
		took := time.Since(t0)
		lat, _, _ := f.phase()
		r.cpu, r.p99 = (c1-c0)/time.Duration(probe), percentile(lat, 0.99)
		r.net = r.cpu - time.Duration(r.idle*float64(took)/float64(probe))
		return r, nil
	}
	if err := grow(base, o.rate); err != nil {
		return err
	}
	at1k, err := measure("")
	if err != nil {
		return err
	}
	var growth time.Duration // from 1,000 held to o.scale
	if rest := o.scale - base; rest > 0 {
		t0 := time.Now()
		if err := grow(rest, o.scaleRate); err != nil {
			return err
		}
		growth = time.Since(t0)
	}
	memN, _ := p.memory()
	heapN := p.goHeap()
	slabN, _ := kernelSlab()
	established := f.up.Load() - f.deleted.Load() // held: the first probe's SAs are gone
	if o.heapprofile != "" {
		if err := p.heapProfile(o.heapprofile); err != nil {
			fmt.Fprintf(out, "  heap profile: %v\n", err)
		}
	}
	atN, err := measure("")
	if err != nil {
		return err
	}
	var again probeResult
	if o.scaleAgain {
		// A fresh node, grown to 1,000 and probed as the first was: the
		// machine's speed drifts over the run's minutes (a shared VM),
		// and the mean of the probes at 1,000 before and after brackets
		// it. Deleting down to 1,000 instead left the node compacting
		// the history of 99,000 deletes through the probe (6.6% of a
		// core while idle, against 0.9% at the first).
		stopFirst()
		if p, f, stop, err = o.start(spec, nodeCPU, "", probeProfile != ""); err != nil {
			return fmt.Errorf("a fresh node for the probe at 1,000 again: %w", err)
		}
		defer stop()
		time.Sleep(500 * time.Millisecond)
		next = 1
		if err := grow(base, o.rate); err != nil {
			return err
		}
		if again, err = measure("-again"); err != nil {
			return err
		}
	}
	dpd := "ike.dpd_delay default"
	if spec.dpdDelay != "" {
		dpd = "ike.dpd_delay " + spec.dpdDelay
	}
	if spec.memLimit != "" {
		dpd += ", node.memory_limit " + spec.memLimit
	}
	fmt.Fprintf(out, "scale: %s (%s), %d SAs established; from 1,000 to them in %.0f s (%.0f/s; asked %.0f/s)\n",
		spec, dpd, established, growth.Seconds(), float64(established-base)/max(growth.Seconds(), 1e-9), o.scaleRate)
	fmt.Fprintf(out, "  CPU per setup and delete (%d gateways at %.0f/s, each deleted once established, after %s quiet): at 1,000 established %.3f ms (p99 setup %.1f ms), at %d established %.3f ms (p99 setup %.1f ms): ratio %.2f\n",
		probe, o.rate, o.scaleSettle, ms(at1k.cpu), ms(at1k.p99), established, ms(atN.cpu), ms(atN.p99), float64(atN.cpu)/float64(at1k.cpu))
	if o.scaleSettle > 0 {
		fmt.Fprintf(out, "  node CPU while idle just before each probe: %.1f%% of a core at 1,000, %.1f%% at %d (liveness checks of the SAs held); net of it, CPU per setup and delete %.3f ms and %.3f ms: ratio %.2f\n",
			100*at1k.idle, 100*atN.idle, established, ms(at1k.net), ms(atN.net), float64(atN.net)/float64(at1k.net))
	}
	if o.scaleAgain {
		// The machine's speed drifts over the minutes between the probes
		// (a shared VM); the mean of the probes at 1,000 before and after
		// the one at o.scale brackets it.
		mean := func(a, b time.Duration) time.Duration { return (a + b) / 2 }
		fmt.Fprintf(out, "  again at 1,000 established, on a fresh node after the probe at %d: %.3f ms (p99 setup %.1f ms); against the mean of the two probes at 1,000 (%.3f ms): ratio %.2f",
			established, ms(again.cpu), ms(again.p99), ms(mean(at1k.cpu, again.cpu)), float64(atN.cpu)/float64(mean(at1k.cpu, again.cpu)))
		if o.scaleSettle > 0 {
			fmt.Fprintf(out, "; net of the liveness checks (%.1f%% of a core idle) %.3f ms, against their mean %.3f ms: ratio %.2f",
				100*again.idle, ms(again.net), ms(mean(at1k.net, again.net)), float64(atN.net)/float64(mean(at1k.net, again.net)))
		}
		fmt.Fprintln(out)
	}
	if at1k.profile != "" && atN.profile != "" {
		printBreakdownPair(out, "where the node's CPU per setup and delete went in the probes", "at 1,000", at1k.profile, at1k.cpu,
			"at "+strconv.FormatInt(established, 10), atN.profile, atN.cpu)
	}
	fmt.Fprintf(out, "  node during the probes: at 1,000 %s, %s; at %d %s, %s\n", at1k.node, at1k.node.store(probe), established, atN.node, atN.node.store(probe))
	if o.scaleAgain {
		fmt.Fprintf(out, "  node during the probe at 1,000 again: %s, %s\n", again.node, again.node.store(probe))
	}
	perSA := func(a, b int64) float64 { return float64(b-a) / float64(established) / 1024 }
	fmt.Fprintf(out, "  RSS at %d SAs: %.0f MiB, %.2f KiB per SA: anonymous (Go heap, stacks) %.2f KiB, file-backed (mapped files: embedded etcd's database) %.2f KiB\n",
		established, float64(memN.rss)/(1<<20), perSA(mem0.rss, memN.rss), perSA(mem0.anon, memN.anon), perSA(mem0.file, memN.file))
	// The free spans are given as they are at the peak, not as growth
	// since the start: the runtime returns them to the OS over minutes,
	// and just after its start a node holds the garbage of parsing its
	// configuration, here with a PSK per gateway (at 100,000 gateways
	// more than at the peak).
	fmt.Fprintf(out, "  Go heap then (the node's runtime): spans in use %.2f KiB per SA more than at the start (live objects, garbage not yet swept, free slots of partly filled spans), free spans not yet returned to the OS %.0f MiB (%.2f KiB per SA), next collection at %.0f MiB\n",
		perSA(heap0.inuse, heapN.inuse), float64(heapN.kept)/(1<<20), perSA(0, heapN.kept), float64(heapN.nextGC)/(1<<20))
	if slabErr == nil {
		// Outside any process: in kernel mode (dataplane xfrm) an SA's
		// states and policies. The whole machine's, so read it where
		// nothing else runs (make bench-node-vm).
		fmt.Fprintf(out, "  kernel slab memory (the machine's, not the node's RSS: XFRM states and policies in kernel mode) %+.0f MiB, %.2f KiB per SA\n",
			float64(slabN-slab0)/(1<<20), perSA(slab0, slabN))
	}
	if o.scaleSettle > 0 {
		// A node holds its SAs for hours: what it keeps once the growth's
		// garbage is collected and its free spans are returned (the
		// runtime's scavenger, over minutes) is its steady memory.
		q, qh := atN.quiet, atN.quietHeap
		fmt.Fprintf(out, "  after the %s quiet, before the probe: RSS %.0f MiB, %.2f KiB per SA (anonymous %.2f KiB, file-backed %.2f KiB); free spans not yet returned %.0f MiB, next collection at %.0f MiB\n",
			o.scaleSettle, float64(q.rss)/(1<<20), perSA(mem0.rss, q.rss), perSA(mem0.anon, q.anon), perSA(mem0.file, q.file),
			float64(qh.kept)/(1<<20), float64(qh.nextGC)/(1<<20))
	}
	_ = eng
	return nil
}
