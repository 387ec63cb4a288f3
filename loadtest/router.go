package loadtest

// A cluster behind one address, with the load generator as the ECMP router
// in front of it. The gateways' engines see one responder address
// (Options.Server, the anycast address); on the wire each flow — a gateway
// socket and a responder port, i.e. a UDP 5-tuple — goes to the node a
// rendezvous hash of the 5-tuple picks among the nodes in service, and
// answers from any node are seen as from the anycast address. A node
// leaves service when its health check fails (killed, draining) and
// returns when it passes again; only the flows of the nodes that left (or
// a share of the flows, when one returns) move, as with resilient ECMP
// hashing. The gateways whose flow moved check liveness at once; the time
// until their SA answers from its new node is their outage.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Health checking of the targets.
const (
	healthEvery   = 100 * time.Millisecond
	healthTimeout = time.Second
	healthDown    = 2 // consecutive refused or failed checks take a target out of service
	healthSlow    = 5 // consecutive checks without an answer in time do too
	healthUp      = 3 // consecutive good ones bring it back
	scrapeEvery   = time.Second
)

// routeSet is the targets in service, as one immutable value.
type routeSet struct {
	gen int
	up  []bool
}

// router is shared by the shards (pick, translate) and fed by the health
// checkers.
type router struct {
	anycast netip.Addr
	targets []netip.Addr
	health  []string // per target: base URL of its /readyz and /metrics ("" = none)
	set     atomic.Pointer[routeSet]
	start   time.Time
	client  *http.Client

	mu     sync.Mutex
	events []*routeEvent
	nodes  []nodeSeries // per target: scraped figures over time
}

// routeEvent is one change of the targets in service and what it did to
// the gateways whose flow moved.
type routeEvent struct {
	at        time.Time
	target    int
	withdrawn bool
	reason    string
	firstBad  time.Time // first failed check (withdrawals)
	moved     int
	recovered int
	outage    *hdrhistogram.Histogram
}

// nodeSeries is what a node's /metrics said, once a second (-1: no answer).
type nodeSeries struct {
	sas, handOffs, takeOvers, handshakes []int64
	last                                 nodeFigures
}

type nodeFigures struct{ sas, handOffs, takeOvers, handshakes int64 }

func newRouter(o *Options) *router {
	r := &router{anycast: o.Server.Addr(), targets: o.Targets, health: o.TargetHTTP,
		client: &http.Client{Timeout: healthTimeout}, nodes: make([]nodeSeries, len(o.Targets))}
	up := make([]bool, len(o.Targets))
	for i := range up {
		up[i] = true
	}
	r.set.Store(&routeSet{up: up})
	for i := range r.nodes {
		r.nodes[i].last = nodeFigures{-1, -1, -1, -1}
	}
	return r
}

// flowHash is the rendezvous score of the flow src -> target:port (UDP).
func flowHash(src netip.AddrPort, target netip.Addr, port uint16) uint64 {
	h := fnv.New64a()
	var b [2 + 16 + 2 + 16 + 2 + 1]byte
	s, t := src.Addr().As16(), target.As16()
	binary.BigEndian.PutUint16(b[0:], src.Port())
	copy(b[2:], s[:])
	binary.BigEndian.PutUint16(b[18:], port)
	copy(b[20:], t[:])
	b[36] = 17 // UDP
	h.Write(b[:])
	// fnv's last bytes mix poorly into the high bits: finish with a mixer.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}

// pickIn is the target of flow src -> anycast:port among up (-1: none).
func (r *router) pickIn(up []bool, src netip.AddrPort, port uint16) int {
	best, bestScore := -1, uint64(0)
	for i, t := range r.targets {
		if !up[i] {
			continue
		}
		if s := flowHash(src, t, port); best < 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// wire is where a datagram from src to remote goes: remote itself unless
// it is the anycast address; ok is false when no target is in service.
func (r *router) wire(src, remote netip.AddrPort) (netip.AddrPort, bool) {
	if r == nil || remote.Addr() != r.anycast {
		return remote, true
	}
	t := r.pickIn(r.set.Load().up, src, remote.Port())
	if t < 0 {
		return remote, false
	}
	return netip.AddrPortFrom(r.targets[t], remote.Port()), true
}

// fromTarget maps a datagram's source: a target's address becomes the
// anycast address; it also returns the target's index (-1: not a target).
func (r *router) fromTarget(from netip.AddrPort) (netip.AddrPort, int) {
	if r == nil {
		return from, -1
	}
	for i, t := range r.targets {
		if from.Addr() == t {
			return netip.AddrPortFrom(r.anycast, from.Port()), i
		}
	}
	return from, -1
}

// run checks the targets' health and scrapes their metrics until ctx ends:
// one checker per target, so that a slow node delays only its own checks.
func (r *router) run(ctx context.Context) {
	var wg sync.WaitGroup
	for i, base := range r.health {
		if base == "" {
			continue
		}
		wg.Add(2)
		go func() { defer wg.Done(); r.checker(ctx, i, base) }()
		go func() { defer wg.Done(); r.scraper(ctx, i, base) }()
	}
	wg.Wait()
}

// checker polls target i's /readyz. A refused connection or a failing
// status (killed, draining) takes it out of service after healthDown
// checks in a row; a check that times out (a busy node) only after
// healthSlow of them. It returns after healthUp good checks.
func (r *router) checker(ctx context.Context, i int, base string) {
	bad, slow, good := 0, 0, 0
	var firstBad time.Time
	for ctx.Err() == nil {
		now := time.Now()
		err, timedOut := r.check(ctx, base)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			bad, slow = 0, 0
			good++
			if good >= healthUp {
				r.setUp(i, true, "", time.Time{})
			}
		default:
			if bad == 0 && slow == 0 {
				firstBad = now
			}
			good = 0
			if timedOut {
				slow++
			} else {
				bad++
			}
			if bad >= healthDown || slow >= healthSlow {
				r.setUp(i, false, err.Error(), firstBad)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(healthEvery):
		}
	}
}

// setUp puts target i in or out of service (a route event if it changes).
func (r *router) setUp(i int, up bool, reason string, firstBad time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.set.Load()
	if cur.up[i] == up {
		return
	}
	next := &routeSet{gen: cur.gen + 1, up: append([]bool(nil), cur.up...)}
	next.up[i] = up
	e := &routeEvent{at: time.Now(), target: i, withdrawn: !up, reason: reason, firstBad: firstBad,
		outage: hdrhistogram.New(histMinUS, histMaxUS, histDigits)}
	r.events = append(r.events, e)
	r.set.Store(next)
}

func (r *router) check(ctx context.Context, base string) (err error, timedOut bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/readyz", nil)
	if err != nil {
		return err, false
	}
	resp, err := r.client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return errors.New("no answer in time"), true
		}
		return errors.New("no answer"), false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("readyz %d", resp.StatusCode), false
	}
	return nil, false
}

// scraper reads target i's figures once a second.
func (r *router) scraper(ctx context.Context, i int, base string) {
	t := time.NewTicker(scrapeEvery)
	defer t.Stop()
	for {
		r.scrape(ctx, i, base)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scrape reads the node's figures from its /metrics.
func (r *router) scrape(ctx context.Context, i int, base string) {
	f := nodeFigures{-1, -1, -1, -1}
	defer func() {
		r.mu.Lock()
		r.nodes[i].last = f
		r.mu.Unlock()
	}()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/metrics", nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	f = parseNodeMetrics(resp.Body)
}

// parseNodeMetrics picks a node's SA count and moves out of the Prometheus
// text format (-1: not found).
func parseNodeMetrics(rd io.Reader) nodeFigures {
	f := nodeFigures{-1, -1, -1, -1}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var dst *int64
		switch {
		case strings.HasPrefix(line, `ikefleet_ike_sas{state="established"} `):
			dst = &f.sas
		case strings.HasPrefix(line, "ikefleet_handoffs_total "):
			dst = &f.handOffs
		case strings.HasPrefix(line, "ikefleet_takeovers_total "):
			dst = &f.takeOvers
		case strings.HasPrefix(line, "ikefleet_handshakes_total "):
			dst = &f.handshakes
		default:
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil && !math.IsNaN(v) {
			*dst = int64(v)
		}
	}
	return f
}

// sample appends each node's last scraped figures (once a second).
func (r *router) sample() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.nodes {
		n := &r.nodes[i]
		n.sas = append(n.sas, n.last.sas)
		n.handOffs = append(n.handOffs, n.last.handOffs)
		n.takeOvers = append(n.takeOvers, n.last.takeOvers)
		n.handshakes = append(n.handshakes, n.last.handshakes)
	}
}

// moved counts a gateway whose flow moved in event ev (the latest event
// when the shard noticed the change).
func (r *router) latestEvent() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events) - 1
}

func (r *router) countMoved(ev, n int) {
	if ev < 0 || n == 0 {
		return
	}
	r.mu.Lock()
	r.events[ev].moved += n
	r.mu.Unlock()
}

func (r *router) recovered(ev int, outage time.Duration) {
	if ev < 0 {
		return
	}
	r.mu.Lock()
	e := r.events[ev]
	e.recovered++
	_ = e.outage.RecordValue(max(histMinUS, min(histMaxUS, outage.Microseconds())))
	r.mu.Unlock()
}

// RouteEvent is a change of the cluster nodes in service (the ECMP route)
// and the outage of the gateways whose flow it moved.
type RouteEvent struct {
	AtS    float64 `json:"at_s"`
	Target string  `json:"target"`
	Change string  `json:"change"` // withdrawn | restored
	Reason string  `json:"reason,omitempty"`
	// DetectS: from the first failed health check to the withdrawal.
	DetectS float64 `json:"detect_s,omitempty"`
	// Moved: established gateways whose flow now reaches another node;
	// Recovered: of them, those whose SA answered from the new node.
	Moved     int     `json:"moved"`
	Recovered int     `json:"recovered"`
	OutageMS  Latency `json:"outage_ms"` // route change to the SA's answer, per recovered gateway
}

// NodeTimeline is one cluster node's figures, one per second of the run
// (-1: the node did not answer).
type NodeTimeline struct {
	Target     string  `json:"target"`
	SAs        []int64 `json:"established_sas"`
	HandOffs   []int64 `json:"handoffs_total"`
	TakeOvers  []int64 `json:"takeovers_total"`
	Handshakes []int64 `json:"handshakes_total"`
}

func (r *router) report() ([]RouteEvent, []NodeTimeline) {
	if r == nil {
		return nil, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []RouteEvent
	for _, e := range r.events {
		re := RouteEvent{AtS: round3(e.at.Sub(r.start).Seconds()), Target: r.targets[e.target].String(), Change: "restored",
			Moved: e.moved, Recovered: e.recovered, OutageMS: summarise(e.outage)}
		if e.withdrawn {
			re.Change, re.Reason = "withdrawn", e.reason
			re.DetectS = round3(e.at.Sub(e.firstBad).Seconds())
		}
		evs = append(evs, re)
	}
	var nodes []NodeTimeline
	if len(r.health) > 0 {
		for i, n := range r.nodes {
			nodes = append(nodes, NodeTimeline{Target: r.targets[i].String(), SAs: append([]int64(nil), n.sas...),
				HandOffs: append([]int64(nil), n.handOffs...), TakeOvers: append([]int64(nil), n.takeOvers...),
				Handshakes: append([]int64(nil), n.handshakes...)})
		}
	}
	return evs, nodes
}
