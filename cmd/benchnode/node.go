package main

// concentratord as a child process: its configuration, start, and what
// /proc says about its CPU time and memory.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane/xfrm"
)

// nodeSpec is one configuration under test.
type nodeSpec struct {
	dataplane   string // memory | userspace | xfrm (a kernel with ESP: make bench-node-vm)
	statestore  string // none | embedded
	strongswan  bool   // not concentratord: strongSwan's charon (strongswan.go)
	gateways    int    // PSKs to configure (gw1..gwN)
	dpdDelay    string // ike.dpd_delay, if not the default
	memLimit    string // node.memory_limit, if not the default (auto: none outside a cgroup with a limit)
	commitDelay string // statestore.commit_delay, if not the default
	leaseTTL    string // statestore.lease_ttl, if not the default
}

// kernelESPReady reports why the xfrm rows cannot run here, or nil: they
// need root and a kernel that installs ESP states (esp4, AES-GCM; the
// build hosts' kernel has neither: make bench-node-vm runs them in a VM).
func kernelESPReady() error {
	if os.Geteuid() != 0 {
		return errSkipped{"needs root (netlink XFRM, nftables)"}
	}
	if err := xfrm.Available(); err != nil {
		return errSkipped{fmt.Sprintf("no kernel ESP here (%v): make bench-node-vm runs these rows in a VM", err)}
	}
	return nil
}

func (s nodeSpec) String() string {
	if s.strongswan {
		return "strongswan"
	}
	return s.dataplane + "+" + s.statestore
}

type nodeProc struct {
	cmd         *exec.Cmd
	dir         string
	ike         netip.AddrPort
	nattPort    uint16
	logPath     string
	clockTicks  float64
	exited      chan error
	keep        bool   // leave the directory (configuration, log) for a look
	pprof       string // the node's net/http/pprof address, if any
	metricsAddr string // the node's /metrics address
}

// metrics returns, for each name, the sum of the samples of that metric
// (a family, or one series with its labels) on the node's /metrics, 0
// for one it has none of; one scrape for all.
func (p *nodeProc) metrics(names ...string) []float64 { return p.exposition().metrics(names...) }

// exposition is one scrape of the node's /metrics, read as often as
// needed: a scrape costs the node a few milliseconds of CPU (its
// collectors, etcd's families, the text), which a row's CPU per SA
// would count if it scraped once per figure while measuring.
type exposition []string

// scrapeClient asks for the exposition uncompressed: gzip would be the
// node's CPU too.
var scrapeClient = &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 30 * time.Second}

// exposition scrapes the node's /metrics (nothing if it does not answer).
func (p *nodeProc) exposition() exposition {
	resp, err := scrapeClient.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var e exposition
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e = append(e, sc.Text())
	}
	return e
}

// metrics is nodeProc.metrics, of this scrape.
func (e exposition) metrics(names ...string) []float64 {
	sums := make([]float64, len(names))
	for _, line := range e {
		for i, name := range names {
			if v, ok := sampleOf(line, name); ok {
				sums[i] += v
			}
		}
	}
	return sums
}

// buckets returns a histogram's cumulative bucket counts by upper bound
// (+Inf included), summed over its series whose labels contain matcher
// (e.g. `change="established"`).
func (e exposition) buckets(family, matcher string) map[float64]float64 {
	out := map[float64]float64{}
	for _, line := range e {
		if le, v, ok := bucketOf(line, family, matcher); ok {
			out[le] += v
		}
	}
	return out
}

// sampleOf returns the value of an exposition line if it is a sample of
// name: a family, or a family with label matchers (family{a="x",b="y"}),
// each of which the sample's labels must contain.
func sampleOf(line, name string) (float64, bool) {
	family, matchers, _ := strings.Cut(name, "{")
	if !strings.HasPrefix(line, family) {
		return 0, false
	}
	rest := line[len(family):]
	if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
		return 0, false
	}
	if matchers = strings.TrimSuffix(matchers, "}"); matchers != "" {
		labels, _, _ := strings.Cut(rest, "}")
		for m := range strings.SplitSeq(matchers, ",") {
			if !strings.Contains(labels, m) {
				return 0, false
			}
		}
	}
	f := strings.Fields(rest)
	v, err := strconv.ParseFloat(f[len(f)-1], 64)
	return v, err == nil
}

// heapProfile saves the node's heap profile (go tool pprof) to path.
func (p *nodeProc) heapProfile(path string) error {
	return p.profile(path, "heap?gc=1")
}

// cpuProfile saves a CPU profile of the node's next d to path.
func (p *nodeProc) cpuProfile(path string, d time.Duration) error {
	return p.profile(path, fmt.Sprintf("profile?seconds=%d", max(1, int(d.Seconds()))))
}

// profile saves what the node's net/http/pprof serves at /debug/pprof/
// + what to path.
func (p *nodeProc) profile(path, what string) error {
	if p.pprof == "" {
		return errors.New("node started without --pprof")
	}
	resp, err := http.Get("http://" + p.pprof + "/debug/pprof/" + what)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/debug/pprof/%s: %s", what, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func freeUDPPort() (uint16, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// writeConfig writes concentratord's configuration for spec.
func writeConfig(path string, spec nodeSpec, ikePort, nattPort uint16, dataDir, metrics string) error {
	var b bytes.Buffer
	level := os.Getenv("BENCHNODE_LOG_LEVEL") // a closer look at a failing run
	if level == "" {
		level = "info"
	}
	fmt.Fprintf(&b, "node: {id: bench")
	if spec.memLimit != "" {
		fmt.Fprintf(&b, ", memory_limit: %s", spec.memLimit)
	}
	fmt.Fprintf(&b, "}\nlog: {level: %s, format: json}\n", level)
	fmt.Fprintf(&b, "ike:\n  listen: [127.0.0.1]\n  port: %d\n  natt_port: %d\n", ikePort, nattPort)
	if spec.dpdDelay != "" {
		fmt.Fprintf(&b, "  dpd_delay: %s\n", spec.dpdDelay)
	}
	fmt.Fprintf(&b, "identity: {id: conc.bench.example}\n")
	fmt.Fprintf(&b, "auth:\n  psks:\n")
	for i := 1; i <= spec.gateways; i++ {
		fmt.Fprintf(&b, "    - {id: %s, secret: %s}\n", gatewayID(i), gatewayPSK(i))
	}
	// A /12 pool: room for a million virtual IPs.
	fmt.Fprintf(&b, "children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.112.0.0/12\n")
	fmt.Fprintf(&b, "dataplane:\n  mode: %s\n  userspace: {tun: ikfbench0}\n", spec.dataplane)
	fmt.Fprintf(&b, "statestore:\n  mode: %s\n  data_dir: %s\n", spec.statestore, dataDir)
	if spec.leaseTTL != "" {
		fmt.Fprintf(&b, "  lease_ttl: %s\n", spec.leaseTTL)
	}
	if spec.commitDelay != "" {
		fmt.Fprintf(&b, "  commit_delay: %s\n", spec.commitDelay)
	}
	fmt.Fprintf(&b, "metrics: {listen: %q}\nadmin: {listen: \"off\"}\n", metrics)
	return os.WriteFile(path, b.Bytes(), 0o600)
}

// startNode starts concentratord (pinned to cpu when cpu >= 0) and waits
// until it listens.
func startNode(bin string, spec nodeSpec, cpu int, cpuprofile string, pprof bool) (*nodeProc, error) {
	dir, err := os.MkdirTemp("", "benchnode-")
	if err != nil {
		return nil, err
	}
	ikePort, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	nattPort, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	metricsAddr := ml.Addr().String()
	ml.Close()
	cfgPath := filepath.Join(dir, "concentratord.yaml")
	if err := writeConfig(cfgPath, spec, ikePort, nattPort, filepath.Join(dir, "data"), metricsAddr); err != nil {
		return nil, err
	}
	args := []string{"--config", cfgPath}
	if cpuprofile != "" {
		args = append(args, "--cpuprofile", cpuprofile)
	}
	var pprofAddr string
	if pprof {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		pprofAddr = l.Addr().String()
		l.Close()
		args = append(args, "--pprof", pprofAddr)
	}
	p := &nodeProc{cmd: pinned(cpu, bin, args...), dir: dir, ike: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ikePort),
		nattPort: nattPort, logPath: filepath.Join(dir, "node.log"), clockTicks: 100, pprof: pprofAddr, metricsAddr: metricsAddr}
	if err := p.launch(p.logPath); err != nil {
		return nil, err
	}
	listening := func() bool {
		b, _ := os.ReadFile(p.logPath)
		return bytes.Contains(b, []byte(`"msg":"listening"`))
	}
	if err := p.waitUntil(listening, time.Minute, "concentratord listening", p.logPath); err != nil {
		return nil, err
	}
	return p, nil
}

// pinned is the command name args, pinned to cpu when cpu >= 0.
func pinned(cpu int, name string, args ...string) *exec.Cmd {
	if cpu < 0 {
		return exec.Command(name, args...)
	}
	return exec.Command("taskset", append([]string{"-c", strconv.Itoa(cpu), name}, args...)...)
}

// launch starts p.cmd with its output in the file at path and watches
// for its exit.
func (p *nodeProc) launch(path string) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	p.exited = exited
	return nil
}

// waitUntil polls ready until it holds; the process's exit or the end of
// within first is an error with the end of its output at path, and the
// process stopped and its directory removed (unless kept).
func (p *nodeProc) waitUntil(ready func() bool, within time.Duration, what, path string) error {
	deadline := time.Now().Add(within)
	for !ready() {
		select {
		case err := <-p.exited:
			b, _ := os.ReadFile(path)
			p.exited = nil
			p.stop() // its directory
			return fmt.Errorf("%s: the process exited: %v\n%s", what, err, tail(b))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(path)
			p.stop()
			return fmt.Errorf("%s: not within %s\n%s", what, within, tail(b))
		}
	}
	return nil
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// cpu returns the process's user+system CPU time (all threads, embedded
// etcd included).
func (p *nodeProc) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64) // field 14: utime
	st, _ := strconv.ParseUint(f[12], 10, 64) // field 15: stime
	return time.Duration(float64(ut+st) / p.clockTicks * float64(time.Second)), nil
}

// waited returns how long the node's threads have been runnable but
// waiting for a CPU (/proc/PID/task/*/schedstat): on a shared machine,
// the part of a wall-clock figure that is other processes' doing.
func (p *nodeProc) waited() time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			total += time.Duration(ns)
		}
	}
	return total
}

// rss returns the resident set size in bytes.
func (p *nodeProc) rss() (int64, error) {
	m, err := p.memory()
	return m.rss, err
}

// resident is a process's resident memory in bytes: the whole (VmRSS)
// and its anonymous (heap, stacks) and file-backed (mapped files: the
// embedded etcd's database) parts.
type resident struct{ rss, anon, file int64 }

// goHeap is the node's Go heap as its runtime reports it (the metrics'
// go_memstats_*), in bytes: spans holding objects (live ones, garbage not
// yet swept, the free slots of partly filled spans), spans free but not
// yet returned to the OS, and the heap size that starts the next
// collection (twice the live heap at GOGC 100).
type goHeap struct{ inuse, kept, nextGC int64 }

func (p *nodeProc) goHeap() goHeap {
	v := p.metrics("go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes")
	return goHeap{inuse: int64(v[0]), kept: int64(v[1] - v[2]), nextGC: int64(v[3])}
}

// memory reads the node's resident memory from /proc/<pid>/status.
func (p *nodeProc) memory() (resident, error) {
	var m resident
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	fields := map[string]*int64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		for name, dst := range fields {
			if v, ok := strings.CutPrefix(sc.Text(), name); ok {
				n, err := procKB(v)
				if err != nil {
					return m, fmt.Errorf("%s %q: %w", name, v, err)
				}
				*dst = n
				found++
			}
		}
	}
	if found != len(fields) {
		return m, errors.New("no VmRSS, RssAnon and RssFile in /proc/<pid>/status")
	}
	return m, sc.Err()
}

// kernelSlab reads the kernel's slab memory (/proc/meminfo Slab): the
// whole machine's, where the kernel data plane's SAs live (XFRM states
// with their transforms, policies), which no process's RSS shows.
func kernelSlab() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Slab:"); ok {
			return procKB(v)
		}
	}
	return 0, errors.New("no Slab in /proc/meminfo")
}

// procKB reads a /proc size field's value ("   1234 kB") in bytes.
func procKB(v string) (int64, error) {
	kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	return kb * 1024, err
}

// count returns how many log lines contain s.
func (p *nodeProc) count(s string) int {
	b, _ := os.ReadFile(p.logPath)
	return bytes.Count(b, []byte(s))
}

// stop ends the node (SIGTERM, then SIGKILL after 20 s) and removes its
// directory.
func (p *nodeProc) stop() {
	if p.exited != nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if p.keep || os.Getenv("BENCHNODE_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "benchnode: node directory kept: %s\n", p.dir)
	} else {
		os.RemoveAll(p.dir)
	}
}

// bucketOf reads an exposition line if it is a bucket of family with
// matcher among its labels: its upper bound and cumulative count.
func bucketOf(line, family, matcher string) (le, v float64, ok bool) {
	rest, found := strings.CutPrefix(line, family+"_bucket{")
	if !found {
		return 0, 0, false
	}
	labels, value, found := strings.Cut(rest, "} ")
	if !found || !strings.Contains(labels, matcher) {
		return 0, 0, false
	}
	_, bound, found := strings.Cut(labels, `le="`)
	if !found {
		return 0, 0, false
	}
	bound, _, _ = strings.Cut(bound, `"`)
	le, err := strconv.ParseFloat(bound, 64) // "+Inf" parses as +Inf
	if err != nil {
		return 0, 0, false
	}
	v, err = strconv.ParseFloat(strings.TrimSpace(value), 64)
	return le, v, err == nil
}

// histQuantile estimates quantile q of what a histogram observed between
// two readings of its buckets (before, after), as Prometheus's
// histogram_quantile does: linearly within the bucket it falls in (the
// lower bound of the last, unbounded one). ok is false without
// observations.
func histQuantile(before, after map[float64]float64, q float64) (time.Duration, bool) {
	bounds := make([]float64, 0, len(after))
	for le := range after {
		bounds = append(bounds, le)
	}
	slices.Sort(bounds)
	if len(bounds) == 0 {
		return 0, false
	}
	total := after[bounds[len(bounds)-1]] - before[bounds[len(bounds)-1]]
	if total <= 0 {
		return 0, false
	}
	target := q * total
	lower, below := 0.0, 0.0
	for _, le := range bounds {
		n := after[le] - before[le]
		if n >= target {
			if math.IsInf(le, 1) {
				return time.Duration(lower * float64(time.Second)), true
			}
			x := lower
			if n > below {
				x += (le - lower) * (target - below) / (n - below)
			}
			return time.Duration(x * float64(time.Second)), true
		}
		lower, below = le, n
	}
	return time.Duration(lower * float64(time.Second)), true
}
