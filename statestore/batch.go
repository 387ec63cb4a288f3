package statestore

import (
	"context"
	"errors"
	"fmt"
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
type batcher struct {
	s     *Store
	in    chan pending
	carry *pending // took a key that the current batch already writes
	n     atomic.Int64
}

func newBatcher(s *Store, queueLen int) *batcher {
	return &batcher{s: s, in: make(chan pending, max(queueLen, 1))}
}

// shard picks the batcher for a change. An IKE rekey goes with its new
// SPI, where the SA's next changes go.
func (s *Store) shard(c *Change) *batcher {
	h := c.spi() * 0x9e3779b97f4a7c15
	return s.bs[(h>>32)%uint64(len(s.bs))]
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
	return s.shard(&c).enqueue(pending{c: c, done: done})
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
	ch := make(chan error, len(s.bs))
	for _, b := range s.bs {
		p := pending{c: Change{Kind: barrier}, done: func(err error) { ch <- err }}
		select {
		case b.in <- p:
			b.n.Add(1)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var first error
	for range s.bs {
		select {
		case err := <-ch:
			if first == nil {
				first = err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return first
}

func (b *batcher) run() {
	defer b.s.wg.Done()
	s := b.s
	max := s.cfg.Batch.MaxBatch
	batch := make([]pending, 0, max)
	touched := map[uint64]bool{}
	timer := time.NewTimer(time.Hour) // one for the batcher's life
	timer.Stop()
	defer timer.Stop()
	for {
		batch = batch[:0]
		clear(touched)
		var first pending
		if b.carry != nil {
			first, b.carry = *b.carry, nil
		} else {
			select {
			case first = <-b.in:
			case <-s.ctx.Done():
				b.drain(ErrClosed)
				return
			}
		}
		batch = b.add(batch, touched, first)
		timer.Reset(s.cfg.Batch.MaxDelay) // stopped or fired: no stale tick (Go 1.23 timers)
	collect:
		for len(batch) < max && b.carry == nil && first.c.Kind != barrier {
			select {
			case p := <-b.in:
				if p.c.Kind == barrier {
					batch = append(batch, p)
					break collect
				}
				if b.conflicts(touched, &p.c) {
					b.carry = &p
					break collect
				}
				batch = b.add(batch, touched, p)
			case <-timer.C:
				break collect
			case <-s.ctx.Done():
				break collect
			}
		}
		timer.Stop()
		b.commit(batch)
		b.n.Add(-int64(len(batch)))
	}
}

func (b *batcher) add(batch []pending, touched map[uint64]bool, p pending) []pending {
	if p.c.Kind != barrier {
		touched[p.c.spi()] = true
		if p.c.OldSPI != 0 {
			touched[p.c.OldSPI] = true
		}
		if p.c.Lease != nil {
			touched[p.c.Lease.key()] = true
		}
	}
	return append(batch, p)
}

func (b *batcher) conflicts(touched map[uint64]bool, c *Change) bool {
	return touched[c.spi()] || (c.OldSPI != 0 && touched[c.OldSPI]) || (c.Lease != nil && touched[c.Lease.key()])
}

// drain refuses whatever is still queued (the store is closing).
func (b *batcher) drain(err error) {
	if b.carry != nil {
		finish(*b.carry, err)
		b.carry = nil
	}
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
	for i := range batch {
		if spi, sa, seq := batch[i].c.writes(); batch[i].c.Kind != barrier && (sa || seq) {
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
			} else {
				s.committed(&parts[i], resp.Header.Revision)
				parts[i].others(&batch[i].c, tr.Responses)
			}
			finish(batch[i], err)
		}
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
