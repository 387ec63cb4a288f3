package statestore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type pending struct {
	c     Change
	done  func(error)
	stale int // retries after its record keys changed under it
}

// batcher commits submitted changes: one transaction per batch, each
// change a nested transaction with its own ownership check, the whole
// guarded by the node's registration.
//
// Group commit: with no transaction under way, a batch leaves MaxDelay
// after its first change arrived; while one is under way, changes gather
// and leave when it returns (if MaxDelay has passed), or at once when
// MaxBatch of them have gathered and fewer than Inflight transactions are
// under way. So at a steady rate each transaction carries what arrived
// during the last one (fewer, larger transactions: each costs a raft round
// and a WAL fsync whatever its size), and in a burst up to Inflight full
// ones overlap. The MaxDelay wait (the linger) is only taken while changes
// arrive often enough that one or more others are expected within it
// (group.linger): at a lower rate a batch would leave alone anyway, and
// waiting would add MaxDelay to every IKE_AUTH response for nothing. The
// changes of one SA (its SPIs, its address lease) are never in two
// transactions under way at once, and leave in the order they were
// submitted.
type batcher struct {
	s  *Store
	in chan pending
	n  atomic.Int64 // submitted and not yet answered
	// peak: the most transactions under way at once so far (tests).
	peak atomic.Int64
}

func newBatcher(s *Store, queueLen int) *batcher {
	return &batcher{s: s, in: make(chan pending, max(queueLen, 1))}
}

func (b *batcher) queued() int { return int(b.n.Load()) }

// Submit queues a change for a batched commit and returns at once. done
// (if not nil) is called from the store's goroutine after the change is
// committed (nil) or refused (*OwnerError, ErrExists, ...). While etcd is
// unreachable changes wait in the bounded queue and are committed when it
// returns; new SAs (Established) are refused with ErrUnavailable unless
// Batch.QueueNew is set. A full queue gives ErrQueueFull. The engine sends
// the messages that follow a change only after done reports success.
func (s *Store) Submit(c Change, done func(error)) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if err := c.validate(); err != nil {
		return err
	}
	if c.Kind == Established && !s.cfg.Batch.QueueNew && !s.reachable() {
		return ErrUnavailable
	}
	return s.b.enqueue(pending{c: c, done: done})
}

func (b *batcher) enqueue(p pending) error {
	select {
	case b.in <- p:
		b.n.Add(1)
		return nil
	default:
		return ErrQueueFull
	}
}

// Flush waits until every change submitted before it is committed or
// refused.
func (s *Store) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	p := pending{c: Change{Kind: barrier}, done: func(err error) { ch <- err }}
	select {
	case s.b.in <- p:
		s.b.n.Add(1)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// changeKeys are what orders a change against others: its SPI, the SPI
// an IKE rekey replaces, its address lease.
type changeKeys struct {
	k [3]uint64
	n int
}

func keysOf(c *Change) changeKeys {
	var ks changeKeys
	add := func(k uint64) { ks.k[ks.n] = k; ks.n++ }
	add(c.spi())
	if c.OldSPI != 0 {
		add(c.OldSPI)
	}
	if c.Lease != nil {
		add(c.Lease.key())
	}
	return ks
}

func (ks *changeKeys) in(m map[uint64]int) bool {
	for _, k := range ks.k[:ks.n] {
		if m[k] > 0 {
			return true
		}
	}
	return false
}

func (ks *changeKeys) count(m map[uint64]int, d int) {
	for _, k := range ks.k[:ks.n] {
		if m[k] += d; m[k] <= 0 {
			delete(m, k)
		}
	}
}

// group is the batcher's state between transactions (run's goroutine
// only).
type group struct {
	batch    []pending      // gathering
	since    time.Time      // when batch's first change arrived
	touched  map[uint64]int // keys of batch
	busy     map[uint64]int // keys of the transactions under way
	blocked  []pending      // changes waiting for a key of theirs under way, in order
	held     map[uint64]int // keys of blocked
	barriers []pending      // answered once everything before them is
	inflight int            // transactions under way
	// arrivals counts the changes admitted, each decaying with time
	// constant lingerTau(MaxDelay) from its arrival on (at a steady rate r
	// it holds about r x lingerTau); arrivedAt is when it was last brought
	// up to date.
	arrivals  float64
	arrivedAt time.Time
}

// lingerRuns: a batch lingers for MaxDelay once the changes' rate is one
// or more per MaxDelay; the rate is measured over lingerRuns MaxDelays
// (lingerTau), long enough that the arrival of the change deciding
// barely counts, short enough that a burst turns it on within a few
// dozen changes.
const lingerRuns = 25

func lingerTau(maxDelay time.Duration) time.Duration { return lingerRuns * maxDelay }

// arrived counts one change admitted at now.
func (g *group) arrived(now time.Time, maxDelay time.Duration) {
	g.arrivals = g.decayed(now, maxDelay) + 1
	g.arrivedAt = now
}

func (g *group) decayed(now time.Time, maxDelay time.Duration) float64 {
	if g.arrivals == 0 {
		return 0
	}
	return g.arrivals * math.Exp(-float64(now.Sub(g.arrivedAt))/float64(lingerTau(maxDelay)))
}

// linger is how long a batch with nothing under way waits for company:
// maxDelay while the changes' recent rate makes one or more others
// expected within it (rate x maxDelay >= 1, about 500 changes a second at
// the default 2 ms), else 0 (at a lower rate the batch would leave alone
// after the wait: lingering costs the change's latency and saves no
// transaction). Measured, userspace+embedded at 300 new SAs/s: the same
// 1.04-1.07 transactions per SA either way, the median setup 3.5 ms with
// the wait and 1.3-1.4 ms without; at 1,000/s the wait takes the
// transactions per SA from 0.84-0.89 to 0.32 and the CPU per SA down by a
// sixth.
func (g *group) linger(now time.Time, maxDelay time.Duration) time.Duration {
	if maxDelay <= 0 || g.decayed(now, maxDelay) < lingerRuns {
		return 0
	}
	return maxDelay
}

// admit puts a change into the gathering batch, or behind the change of
// one of its keys that is gathering, under way or waiting already.
func (g *group) admit(p pending) {
	ks := keysOf(&p.c)
	if ks.in(g.touched) || ks.in(g.busy) || ks.in(g.held) {
		g.blocked = append(g.blocked, p)
		ks.count(g.held, 1)
		return
	}
	if len(g.batch) == 0 {
		g.since = time.Now()
	}
	g.batch = append(g.batch, p)
	ks.count(g.touched, 1)
}

// release moves the waiting changes whose keys are free into the
// gathering batch, keeping each key's order.
func (g *group) release() {
	if len(g.blocked) == 0 {
		return
	}
	waiting := g.blocked
	g.blocked = nil
	clear(g.held)
	for _, p := range waiting {
		g.admit(p)
	}
}

func (b *batcher) run() {
	defer b.s.wg.Done()
	s := b.s
	maxBatch, maxInflight := s.cfg.Batch.MaxBatch, s.cfg.Batch.Inflight
	g := group{touched: map[uint64]int{}, busy: map[uint64]int{}, held: map[uint64]int{}}
	landed := make(chan []pending, maxInflight)
	// The transactions under way run on maxInflight goroutines that live
	// as long as the batcher: a goroutine of its own per batch started on
	// a small stack and grew it by copying, several times a batch (1% of
	// the samples in a CPU profile of a node at 1,000 new SAs a second).
	work := make(chan []pending, maxInflight)
	defer close(work)
	for range maxInflight {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for out := range work {
				b.commit(out)
				landed <- out
			}
		}()
	}
	timer := time.NewTimer(time.Hour) // one for the batcher's life
	timer.Stop()
	defer timer.Stop()
	for {
		// Send what gathered: with nothing under way once its linger has
		// passed (or a barrier waits), else when full and there is room.
		linger := g.linger(time.Now(), s.cfg.Batch.MaxDelay)
		for len(g.batch) > 0 && (g.inflight == 0 && (len(g.barriers) > 0 || time.Since(g.since) >= linger) ||
			len(g.batch) >= maxBatch && g.inflight < maxInflight) {
			n := min(len(g.batch), maxBatch)
			out := slices.Clone(g.batch[:n])
			g.batch = append(g.batch[:0], g.batch[n:]...)
			g.since = time.Now()
			clear(g.touched)
			for i := range g.batch {
				ks := keysOf(&g.batch[i].c)
				ks.count(g.touched, 1)
			}
			for i := range out {
				ks := keysOf(&out[i].c)
				ks.count(g.busy, 1)
			}
			g.inflight++
			if int64(g.inflight) > b.peak.Load() {
				b.peak.Store(int64(g.inflight))
			}
			work <- out // room: fewer than maxInflight under way
		}
		if len(g.barriers) > 0 && g.inflight == 0 && len(g.batch) == 0 && len(g.blocked) == 0 {
			for _, p := range g.barriers {
				finish(p, nil)
			}
			b.n.Add(-int64(len(g.barriers)))
			g.barriers = g.barriers[:0]
		}
		// Take more only with room to gather it and no barrier waiting.
		in := b.in
		if len(g.barriers) > 0 || len(g.batch) >= maxBatch || len(g.blocked) >= maxBatch {
			in = nil
		}
		// Wake for the batch's linger (stopped or fired: no stale tick,
		// Go 1.23 timers).
		var tick <-chan time.Time
		if len(g.batch) > 0 && g.inflight == 0 {
			timer.Reset(linger - time.Since(g.since))
			tick = timer.C
		}
		select {
		case <-tick:
		case p := <-in:
			if p.c.Kind == barrier {
				g.barriers = append(g.barriers, p)
				continue
			}
			g.arrived(time.Now(), s.cfg.Batch.MaxDelay)
			g.admit(p)
		case out := <-landed:
			g.inflight--
			if g.inflight == 0 {
				g.since = time.Now() // what gathered meanwhile lingers for more
			}
			b.n.Add(-int64(len(out)))
			for i := range out {
				ks := keysOf(&out[i].c)
				ks.count(g.busy, -1)
			}
			g.release()
		case <-s.ctx.Done():
			for ; g.inflight > 0; g.inflight-- {
				b.n.Add(-int64(len(<-landed)))
			}
			for _, list := range [][]pending{g.batch, g.blocked, g.barriers} {
				for _, p := range list {
					b.n.Add(-1)
					finish(p, ErrClosed)
				}
			}
			b.drain(ErrClosed)
			return
		}
	}
}

// drain refuses whatever is still queued (the store is closing).
func (b *batcher) drain(err error) {
	for {
		select {
		case p := <-b.in:
			b.n.Add(-1)
			finish(p, err)
		default:
			return
		}
	}
}

func finish(p pending, err error) {
	if p.done != nil {
		p.done(err)
	}
}

// commit writes a batch, retrying while etcd is unreachable or the node
// is between registrations, until it lands or the store closes.
func (b *batcher) commit(batch []pending) {
	s := b.s
	delay := retryMin
	for {
		err := b.try(batch)
		if err == nil {
			return
		}
		var pe *permanentError
		if errors.As(err, &pe) {
			if len(batch) == 1 {
				finish(batch[0], pe.err)
				return
			}
			// etcd refused the batch as a whole (a duplicate key, too many
			// operations, too large): commit the changes one by one so
			// that only the offending one fails.
			s.log.Warn("statestore: batch refused; committing one by one", "changes", len(batch), "err", pe.err)
			for i := range batch {
				b.commit(batch[i : i+1])
			}
			return
		}
		if s.ctx.Err() != nil {
			for _, p := range batch {
				finish(p, ErrClosed)
			}
			return
		}
		if !errors.Is(err, ErrFenced) {
			s.log.Debug("statestore: batch commit failed; retrying", "changes", len(batch), "err", err)
		}
		select {
		case <-time.After(delay):
		case <-s.Registered():
		case <-s.ctx.Done():
		}
		delay = min(2*delay, retryMax)
	}
}

// try commits the batch once. A nil result means every change got its
// answer (done called); an error means none did and the batch is retried.
func (b *batcher) try(batch []pending) error {
	s := b.s
	reg := s.current()
	if !reg.usable() {
		return ErrFenced
	}
	var ws []sealedWrite
	layout := s.Layout()
	for i := range batch {
		if spi, sa, seq := batch[i].c.writes(layout); batch[i].c.Kind != barrier && (sa || seq) {
			ws = append(ws, sealedWrite{spi, sa, seq})
		}
	}
	if err := s.prepare(s.ctx, reg, ws); err != nil {
		return err
	}
	parts := make([]txnParts, len(batch))
	ops := make([]clientv3.Op, 0, len(batch))
	idx := make([]int, 0, len(batch))
	var again []pending
	for i := range batch {
		if batch[i].c.Kind == barrier {
			continue
		}
		p, err := s.build(&batch[i].c, reg.owner)
		if err == errStale && batch[i].stale < maxStale {
			batch[i].stale++
			again = append(again, batch[i])
			batch[i].done = nil
			continue
		}
		if err != nil {
			finish(batch[i], err)
			batch[i].done = nil
			continue
		}
		parts[i] = p
		ops = append(ops, clientv3.OpTxn(p.cmps, p.then, p.els))
		idx = append(idx, i)
	}
	if len(ops) > 0 {
		rc, cancel := s.rctx(s.ctx)
		resp, err := s.txn(rc).If(s.regCmp(reg.owner)).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil && !transient(err) {
			return &permanentError{err}
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if !resp.Succeeded {
			// Our registration is gone: the lease expired or was revoked.
			s.fence(reg, "registration gone at commit")
			return ErrFenced
		}
		s.batches.Add(1)
		s.changes.Add(uint64(len(idx)))
		for j, i := range idx {
			tr := resp.Responses[j].GetResponseTxn()
			var err error
			if !tr.Succeeded {
				err = parts[i].outcome(reg.owner, tr.Responses)
				// Whatever failed, what the store knew of the keys may be
				// out of date.
				s.revs.forget(parts[i].sw.spi)
				if err == errStale && batch[i].stale < maxStale {
					batch[i].stale++
					again = append(again, batch[i])
					continue
				}
				if err == nil {
					s.settled(&parts[i])
				}
			} else {
				s.committed(&parts[i], resp.Header.Revision, tr.Responses)
				parts[i].others(&batch[i].c, tr.Responses)
				if r := batch[i].c.Revision; r != nil {
					*r = resp.Header.Revision
				}
			}
			finish(batch[i], err)
		}
	}
	for i := range parts {
		parts[i].recycle()
	}
	if len(again) > 0 {
		// Their record keys were written by someone else (a rewrap, the
		// previous owner): read their metadata again and write them, before
		// any barrier of this batch is answered.
		b.commit(again)
	}
	for i := range batch {
		if batch[i].c.Kind == barrier {
			finish(batch[i], nil)
		}
	}
	return nil
}

// permanentError is a batch that etcd refused and would refuse again.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
