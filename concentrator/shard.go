package concentrator

// Engine shards: each runs one ike.Engine on its own goroutine and applies
// the batches it makes (apply.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

type shard struct {
	id    int
	eng   *ike.Engine
	q     shardQueue
	calls chan func()
	// watch: rekeyed CHILD SAs (inbound SPI) whose first inbound traffic
	// retires their predecessor, until when to look.
	watch map[uint32]time.Time
	// SPIs reserved cluster-wide ahead of need (state store), taken by the
	// engine without waiting.
	ikeSPIs chan uint64
	espSPIs chan uint32
	// Reserved SPIs the engine handed back unused (spipool.go), until the
	// refill loop puts them back in the pools or releases them.
	spareMu  sync.Mutex
	spareIKE []uint64
	spareESP []uint32
	// Batches waiting for their writes (apply.go), and the state store's
	// answers.
	held    []*heldBatch
	commits commits
	results []commitResult
	// What the engine spent, by work (metrics.EngineWork); read on the
	// shard's goroutine.
	spent [len(metrics.EngineWork)]metrics.EngineTime
	// logAttrs: the list logEvent builds an event's attributes in, on the
	// shard's goroutine (an event's new list was 860 bytes, four or five
	// events an SA).
	logAttrs []slog.Attr
}

// workOther and workTimers index metrics.EngineWork.
const (
	workOther  = len(metrics.EngineWork) - 2
	workTimers = len(metrics.EngineWork) - 1
)

// engineWork is the index in metrics.EngineWork of the exchange an IKE
// message belongs to.
func engineWork(msg []byte) int {
	if len(msg) < 28 { // an IKE header
		return workOther
	}
	switch ike.ExchangeType(msg[18]) {
	case ike.IKE_SA_INIT:
		return 0
	case ike.IKE_AUTH:
		return 1
	case ike.CREATE_CHILD_SA:
		return 2
	case ike.INFORMATIONAL:
		return 3
	case ike.IKE_INTERMEDIATE:
		return 4
	case ike.IKE_FOLLOWUP_KE:
		return 5
	case ike.IKE_SESSION_RESUME:
		return 6
	}
	return workOther
}

// engineSample: one call of the engine in engineSample is timed, with
// its thread's CPU clock (metrics.EngineSample, as its help says). That
// clock is a system call (over a microsecond in a VM), and two of them
// around every message would cost a node about 1% of its CPU; the monotonic clock would cost nothing, but
// counts whatever takes the core meanwhile (other threads of the node in
// the kernel, softirqs), which on a busy node is more than the engine.
const engineSample = metrics.EngineSample

// handle gives a received message to the shard's engine and counts it,
// and for one in engineSample the CPU it took (engine_cpu_seconds_total).
func (s *shard) handle(now time.Time, pkt ike.Packet, rd *ike.Ready) {
	w := engineWork(pkt.Data)
	t, timed := startTiming()
	s.eng.Handle(now, pkt, rd)
	s.count(w, t, timed)
}

// tick runs the engine's timers, counted as handle counts messages.
func (s *shard) tick(now time.Time, rd *ike.Ready) {
	t, timed := startTiming()
	s.eng.Tick(now, rd)
	s.count(workTimers, t, timed)
}

// startTiming reads the thread's CPU clock for one call in engineSample.
func startTiming() (threadCPU, bool) {
	if rand.Uint32()%engineSample != 0 {
		return threadCPU{}, false
	}
	return readThreadCPU(), true
}

// count adds a call, and a timed one as engineSample calls of its cost.
//
// The thread's clock counts what the thread ran, and a goroutine that
// waits inside the engine (a garbage collection assist that parks), or
// that the scheduler preempts there (it does so to one that ran 10 ms
// without a pause, as a shard serving a burst does), leaves its thread to
// other goroutines meanwhile, which may return it to the same thread:
// the node's state store or collector then read as the engine's. Such a
// reading is at least a scheduler's turn long. A call that reads more
// than a millisecond and more than outlierFactor times its work's mean
// so far is counted at that mean instead, and so is one that changed
// threads.
func (s *shard) count(w int, t threadCPU, timed bool) {
	e := &s.spent[w]
	e.Calls++
	if !timed {
		return
	}
	mean := 0.0
	if n := e.Calls - 1; n >= outlierAfter {
		mean = e.Seconds / float64(n)
	}
	d, ok := t.elapsed()
	if ok && (d < time.Millisecond || mean == 0 || d.Seconds() < outlierFactor*mean) {
		e.Seconds += engineSample * d.Seconds()
		return
	}
	e.Seconds += engineSample * mean
	e.Outliers++
}

// outlierFactor and outlierAfter: count's bound on a reading, as a
// multiple of its work's mean per call, once that many calls were counted.
const (
	outlierFactor = 16
	outlierAfter  = 64
)

// threadCPU is a reading of the calling thread's CPU clock.
type threadCPU struct {
	tid int // 0: the reading failed
	ns  int64
}

// readThreadCPU reads the thread's CPU clock. Raw system calls: a
// goroutine can change threads when it leaves an ordinary one, and
// gettid on both sides makes sure that the clock read is the thread's
// that the goroutine is on (preemption can still move it in between).
func readThreadCPU() threadCPU {
	tid := unix.Gettid()
	var ts unix.Timespec
	if _, _, e := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_THREAD_CPUTIME_ID, uintptr(unsafe.Pointer(&ts)), 0); e != 0 || unix.Gettid() != tid {
		return threadCPU{}
	}
	return threadCPU{tid: tid, ns: ts.Nano()}
}

// elapsed returns the thread's CPU time since t, unless the goroutine is
// on another thread now or a reading failed.
func (t threadCPU) elapsed() (time.Duration, bool) {
	u := readThreadCPU()
	if t.tid == 0 || u.tid != t.tid || u.ns < t.ns {
		return 0, false
	}
	return time.Duration(u.ns - t.ns), true
}

func (n *Node) runShard(ctx context.Context, s *shard) {
	timer := n.clock.NewTimer(time.Hour)
	defer timer.Stop()
	watchTick := n.clock.NewTicker(watchInterval)
	defer watchTick.Stop()
	var rd ike.Ready
	streak := 0
	// The socket loop answers with cookies from the first request of a
	// flood on (ike.Cookies.Screen): the secret exists from the start.
	s.eng.RenewCookieSecret(n.clock.Mono())
	for {
		// The store's answers first: each releases what its write held
		// back (an IKE_AUTH's response, its CHILD SA's install), which
		// has waited for etcd already. In the wait below they would
		// come after up to prioStreak packets, a few milliseconds of
		// key exchanges while new IKE_SA_INITs keep coming.
		select {
		case <-s.commits.wake:
			n.commitResults(ctx, s)
		default:
		}
		// Queued IKE_AUTHs and messages of established SAs before
		// cookie-proven new IKE_SA_INITs, and those before other new ones
		// (shardQueue.next); after prioStreak packets in a row, one wait
		// on everything, so timers and calls get their turn.
		var pkt ike.Packet
		ok := false
		if streak < prioStreak {
			pkt, ok = s.q.next()
		}
		if ok {
			streak++
			n.handle(s, pkt, &rd)
		} else {
			streak = 0
			select {
			case <-ctx.Done():
				return
			case pkt := <-s.q.prio:
				n.handle(s, pkt, &rd)
			case <-s.q.spill.wake: // overflow waits in a spill (next takes it)
			case <-s.q.provenSpill.wake: // the same
			case pkt := <-s.q.proven:
				s.handle(n.clock.Mono(), pkt, &rd)
			case pkt := <-s.q.init:
				s.handle(n.clock.Mono(), pkt, &rd)
			case f := <-s.calls:
				f()
			case <-timer.C():
				s.tick(n.clock.Mono(), &rd)
			case <-watchTick.C():
				n.checkWatched(ctx, s)
				s.eng.RenewCookieSecret(n.clock.Mono())
			case <-s.commits.wake:
				n.commitResults(ctx, s)
			}
		}
		n.perform(ctx, s, &rd)
		rd.Reset()
		timer.Stop()
		if d := s.eng.NextDeadline(n.clock.Mono()); !d.IsZero() {
			timer.ResetAt(d)
		}
	}
}

// do runs f on the shard's goroutine and waits for it.
func (n *Node) do(ctx context.Context, s *shard, f func()) error {
	done := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopped:
		return errStopped
	}
	<-done
	return nil
}

// errStopped: the node's Run has ended; its shards run nothing more.
var errStopped = errors.New("node stopped")

// shardOfESP is the shard owning the CHILD SA with inbound SPI inSPI
// (the SPI's top bits carry the shard), or nil.
func (n *Node) shardOfESP(inSPI uint32) *shard {
	i := 0
	if n.espBits > 0 {
		i = int(inSPI >> (32 - n.espBits))
	}
	if i >= len(n.shards) {
		return nil
	}
	return n.shards[i]
}

// expiries hands the data plane's CHILD SA expiries to the shard that owns
// the SA: soft ones are rekeyed now, hard ones deleted.
func (n *Node) expiries(ctx context.Context, ch <-chan dataplane.Expiry) {
	for {
		select {
		case <-ctx.Done():
			return
		case ex, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			s := n.shardOfESP(ex.InSPI)
			if s == nil {
				continue
			}
			n.log.Info("CHILD_SA expiring", "spi_in", fmt.Sprintf("%08x", ex.InSPI), "hard", ex.Hard, "reason", ex.Reason)
			n.do(ctx, s, func() {
				var rd ike.Ready
				s.eng.ExpireChild(n.clock.Mono(), ex.InSPI, ex.Hard, &rd)
				n.perform(ctx, s, &rd)
			})
		}
	}
}

// seqProgress hands the data plane's sequence number reports to the shard
// that owns the CHILD SA: the engine renews its reservation (a small
// write) and raises the data plane's limit once that is committed.
func (n *Node) seqProgress(ctx context.Context, ch <-chan dataplane.SeqProgress) {
	for {
		select {
		case <-ctx.Done():
			return
		case p, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			s := n.shardOfESP(p.InSPI)
			if s == nil {
				continue
			}
			n.do(ctx, s, func() {
				var rd ike.Ready
				s.eng.SeqProgress(n.clock.Mono(), p.InSPI, p.OutSeq, p.InSeq, &rd)
				n.perform(ctx, s, &rd)
			})
		}
	}
}

// watchInterval is how often a shard looks at the counters of rekeyed
// CHILD SAs waiting for their first traffic.
const watchInterval = 500 * time.Millisecond

// checkWatched retires the predecessors of rekeyed CHILD SAs that carry
// traffic now.
func (n *Node) checkWatched(ctx context.Context, s *shard) {
	if len(s.watch) == 0 {
		return
	}
	counter := n.dp.(dataplane.SACounter)
	now := n.clock.Mono()
	for spi, until := range s.watch {
		c, err := counter.Counter(ctx, spi)
		switch {
		case err == nil && c.InPackets > 0:
			s.eng.ChildActive(now, spi)
			delete(s.watch, spi)
		case err != nil || now.After(until):
			delete(s.watch, spi) // the engine's overlap timer retires it
		}
	}
}

// updateChild moves an installed CHILD SA to new outer addresses: in place
// where the data plane can, else by reinstalling it.
func (n *Node) updateChild(ctx context.Context, a ike.UpdateChild) {
	c := a.Child
	var err error
	if u, ok := n.dp.(dataplane.AddressUpdater); ok {
		err = u.UpdateAddresses(ctx, c.InSPI, c.Local, c.Remote)
	} else if err = n.dp.Remove(ctx, c.InSPI); err == nil {
		err = n.dp.Install(ctx, toDataplane(ike.InstallChild{SPIi: a.SPIi, SPIr: a.SPIr, PeerID: a.PeerID, Child: c}, n.wallOffset()))
	}
	if err != nil {
		n.log.Error("CHILD_SA address update failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, c, "err", err)...)
	}
}

// handle gives a received message to the shard's engine, or parks it while
// the SA it belongs to is claimed from the node that holds it (claim.go).
// New IKE_SA_INITs never wait: they start SAs here.
func (n *Node) handle(s *shard, pkt ike.Packet, rd *ike.Ready) {
	if spi, ok := n.unheld(s, pkt); ok {
		n.park(spi, pkt)
		return
	}
	s.handle(n.clock.Mono(), pkt, rd)
}
