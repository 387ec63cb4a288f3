// Package statestore keeps the cluster's memory in etcd: IKE SA records
// with their CHILD SAs (key material sealed with a cluster key), SPI
// ownership, the node registry and the fencing that keeps two nodes from
// ever acting for one SA. See docs/architecture.md, "Cluster semantics".
//
// A node opens a Store, which registers it (lease, slot, epoch) and keeps
// the lease alive. The node consults CanSend before it sends for any SA it
// owns and treats a closed Fenced channel as "drop ownership of
// everything"; persists each SA state change with Submit (batched) or
// Persist (one transaction); and moves SAs with TakeOver and HandOff.
package statestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Interface is what a node needs from the state store; *Store implements
// it on etcd.
type Interface interface {
	NodeID() string
	Registration() (Owner, int)
	CanSend() bool
	Fenced() <-chan struct{}
	Registered() <-chan struct{}
	Health() Health

	ReserveIKESPIs(ctx context.Context, spis []uint64) ([]bool, error)
	ReserveESPSPIs(ctx context.Context, spis []uint32) ([]bool, error)
	ReleaseSPIs(ctx context.Context, ike []uint64, esp []uint32) error

	Persist(ctx context.Context, c Change) error
	Submit(c Change, done func(error)) error
	Flush(ctx context.Context) error

	Load(ctx context.Context, spi uint64) (*SARecord, Owner, error)
	Owner(ctx context.Context, spi uint64) (o Owner, live bool, err error)
	LookupESP(ctx context.Context, spi uint32) (uint64, error)
	Node(ctx context.Context, id string) (NodeInfo, error)
	Nodes(ctx context.Context) ([]NodeInfo, error)
	LoadOwned(ctx context.Context) ([]*SARecord, error)
	OwnedCounts(ctx context.Context) (map[string]int64, error)
	TakeOver(ctx context.Context, spi uint64) (*SARecord, error)
	HandOff(ctx context.Context, spi uint64, final *SARecord, to Owner) error

	Close() error
}

var _ Interface = (*Store)(nil)

// Health is the store's view of itself, for the node's health checker.
type Health struct {
	NodeID     string
	Registered bool // holds a live registration (not fenced)
	Owner      Owner
	Slot       int
	Reachable  bool // the last etcd request succeeded
	LastOK     time.Time
	LastError  string
	Queued     int  // changes waiting to be persisted
	RefuseNew  bool // Submit refuses new SAs (etcd unreachable, QueueNew off)
	Txns       uint64
	// Puts and Deletes: the puts and deletes the store's requests made
	// (countedTxn).
	Puts, Deletes uint64
	Changes       uint64 // changes committed by Submit's batches (Changes/batch transactions: the mean batch)
	Batches       uint64 // transactions that committed them
	// Rollbacks: sealed records refused because they were written for
	// another revision of their key (an older value put back; *RollbackError).
	Rollbacks uint64
	// WatchResumes: watches of the cluster's keys (nodes, selector claims)
	// that broke and went on from the last revision they had reported;
	// WatchRelists: those that had to list the keys again because etcd had
	// compacted that revision's history.
	WatchResumes, WatchRelists uint64
	// Layout: the cluster's store layout the store writes (layout.go);
	// LayoutFenced: registrations of other nodes it fenced because their
	// release does not support it.
	Layout       int
	LayoutFenced uint64
}

// registration is one life of the node in the registry.
type registration struct {
	owner  Owner
	slot   int
	lease  clientv3.LeaseID
	fenced chan struct{} // closed when this registration is fenced
	done   atomic.Bool   // fenced
	ready  atomic.Bool   // its SAs are reclaimed from earlier epochs
}

// usable: neither fenced nor still reclaiming after a re-registration.
func (r *registration) usable() bool { return r.ready.Load() && !r.done.Load() }

// Store is a node's handle on the etcd state store.
type Store struct {
	cfg   Config
	cli   *clientv3.Client
	k     keys
	codec Codec
	log   *slog.Logger

	base     time.Time    // monotonic origin of deadline
	deadline atomic.Int64 // ns after base until which we may send; 0: fenced

	mu    sync.Mutex
	reg   *registration
	regCh chan struct{} // closed and replaced when a new registration may send
	// reclaiming: a re-registration whose SAs are still being reclaimed
	// (and those others took over meanwhile dropped): CanSend is false.
	reclaiming atomic.Bool
	lastOK     time.Time
	lastErr    string
	reach      bool
	prevSlot   int

	txns             atomic.Uint64
	puts, deletes    atomic.Uint64 // writes of committed requests (countedTxn)
	changes, batches atomic.Uint64
	rollbacks        atomic.Uint64
	// watchResumes, watchRelists: watches of the store's prefixes that
	// broke and went on where they were, or listed again (followPrefix).
	watchResumes, watchRelists atomic.Uint64

	layout       atomic.Int32  // the cluster's store layout as last read (layout.go)
	layoutFenced atomic.Uint64 // registrations fenced for their layouts
	// layoutMu guards when the store took on its layout and the layout
	// its registration names (layout.go).
	layoutMu    sync.Mutex
	layoutSince time.Time
	published   int
	ownedSwept  atomic.Bool // the owned/ index is swept (layout.go, layout 4)
	opened      atomic.Bool // Open has returned: the store may have built requests
	lastRegErr  string      // keepAlive's last re-registration error, logged once

	revs revTable // metadata of the record keys of the SAs written
	// leased: the identities that may hold an address lease, with
	// Config.SoleWriter while no other node registered in the store
	// (leased.go); nil otherwise.
	leased atomic.Pointer[leasedIDs]
	// otherWriter: another node registered in the store (watchWriters).
	otherWriter atomic.Bool

	// The registrations the sealing key is chosen for (chooseKey).
	keyMu       sync.Mutex
	keyNodes    map[string]NodeInfo
	noCommonKey bool // logged once

	b *batcher // commits Submit's changes

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// Open registers the node and starts keeping its lease alive. It returns
// once the node is registered (or ctx ends). cli stays the caller's.
func Open(ctx context.Context, cli *clientv3.Client, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, cli: cli, k: keys{cfg.Prefix}, codec: Codec{Keys: cfg.Keys},
		log: cfg.Log.With("node", cfg.NodeID), base: time.Now(), regCh: make(chan struct{}), prevSlot: -1,
		keyNodes: map[string]NodeInfo{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Registered, then the sealing key chosen before anything is sealed:
	// the newest every live node holds.
	if err := s.retryOpen(ctx, "registration", func() error { return s.register(ctx, true) }); err != nil {
		return nil, err
	}
	if err := s.retryOpen(ctx, "reading the registry for the sealing key", func() error { return s.listKeyNodes(ctx) }); err != nil {
		return nil, err
	}
	// A reading moves the cluster one layout at most. Before Open returns
	// the store has written nothing, so where every registration names
	// the layout (a fresh cluster, this node alone) it moves on at once
	// to the newest all support, rather than write the older layouts
	// first.
	for s.Layout() < s.cfg.layoutMax {
		was := s.Layout()
		if s.listKeyNodes(ctx) != nil || s.Layout() == was {
			break
		}
	}
	if cfg.SoleWriter {
		if err := s.openLeased(ctx); err != nil {
			return nil, err
		}
	}
	s.b = newBatcher(s, cfg.Batch.QueueLen)
	s.opened.Store(true)
	s.wg.Add(4)
	go s.keepAlive()
	go s.watchdog()
	go s.followKeys()
	go s.b.run()
	return s, nil
}

// retryOpen runs f until it succeeds, logging each failure, for Open: a
// duplicate node id or ctx's end gives up (and ends the store's context).
func (s *Store) retryOpen(ctx context.Context, what string, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		var inUse *NodeIDInUseError
		var layout *LayoutError
		if errors.As(err, &inUse) || errors.As(err, &layout) {
			s.cancel()
			return err
		}
		s.log.Warn("statestore: "+what+" failed", "err", err)
		select {
		case <-ctx.Done():
			s.cancel()
			return fmt.Errorf("statestore: register %s: %w", s.cfg.NodeID, err)
		case <-time.After(retryMin * 4):
		}
	}
}

// NodeID returns the configured node id.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// Registration returns the current registration (node id and epoch) and
// slot. After fencing it returns the fenced one until re-registration.
func (s *Store) Registration() (Owner, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reg.owner, s.reg.slot
}

// CanSend reports whether the node may send for the SAs it owns: its
// lease is certainly alive, and after a re-registration the SAs it holds
// are its own again (reclaimed, those others took over meanwhile dropped
// through OnReclaimed). Cheap; call it before every send.
func (s *Store) CanSend() bool {
	d := s.deadline.Load()
	return d != 0 && !s.reclaiming.Load() && int64(time.Since(s.base)) < d
}

// Fenced returns a channel closed when the current registration is
// fenced. The node must then stop acting for all its SAs. After the store
// re-registers (new epoch) and reclaims them, Fenced returns a new channel
// and the SAs that could not be reclaimed are reported through OnLost.
func (s *Store) Fenced() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reg.fenced
}

// Registered returns a channel closed when the node may send again: at
// the next registration, or after a re-registration once its SAs are
// reclaimed and OnReclaimed has returned.
func (s *Store) Registered() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.regCh
}

// Health reports registration, reachability and the persist queue.
func (s *Store) Health() Health {
	s.mu.Lock()
	h := Health{NodeID: s.cfg.NodeID, Registered: !s.reg.done.Load(), Owner: s.reg.owner, Slot: s.reg.slot,
		Reachable: s.reach, LastOK: s.lastOK, LastError: s.lastErr}
	s.mu.Unlock()
	h.Registered = h.Registered && s.CanSend()
	h.Queued = s.b.queued()
	h.RefuseNew = !h.Reachable && !s.cfg.Batch.QueueNew
	h.Txns = s.txns.Load()
	h.Puts, h.Deletes = s.puts.Load(), s.deletes.Load()
	h.Changes, h.Batches = s.changes.Load(), s.batches.Load()
	h.Rollbacks = s.rollbacks.Load()
	h.WatchResumes, h.WatchRelists = s.watchResumes.Load(), s.watchRelists.Load()
	h.Layout, h.LayoutFenced = s.Layout(), s.layoutFenced.Load()
	return h
}

func (s *Store) noteResult(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.reach, s.lastOK, s.lastErr = true, time.Now(), ""
		return
	}
	s.lastErr = err.Error()
	if transient(err) {
		s.reach = false
	} else {
		s.reach, s.lastOK = true, time.Now() // etcd answered
	}
}

// transient tells errors worth retrying (etcd unreachable, no leader,
// timeouts) from requests that etcd refused and would refuse again.
func transient(err error) bool {
	if err == nil {
		return false
	}
	code := codes.Unknown
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	}
	switch code {
	case codes.InvalidArgument, codes.OutOfRange, codes.Unimplemented, codes.NotFound, codes.AlreadyExists:
		return false
	}
	return true
}

func (s *Store) reachable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reach
}

func (s *Store) rctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, s.cfg.RequestTimeout)
}

func (s *Store) txn(ctx context.Context) clientv3.Txn {
	s.txns.Add(1)
	return &countedTxn{Txn: s.cli.Txn(ctx), s: s}
}

// extend moves the send deadline to t0 + ttl - margin, t0 being when the
// request that confirmed the lease was sent.
func (s *Store) extend(t0 time.Time, ttl int64) {
	d := int64(t0.Sub(s.base) + time.Duration(ttl)*time.Second - s.cfg.FenceMargin)
	for {
		cur := s.deadline.Load()
		if cur == 0 || d <= cur {
			return
		}
		if s.deadline.CompareAndSwap(cur, d) {
			return
		}
	}
}

// register grants a lease and claims nodes/<id> and a free slot in one
// transaction. The epoch is that transaction's revision.
//
// ready: the registration is usable at once (the first one: the node
// restores its SAs with LoadOwned); otherwise the caller reclaims first.
func (s *Store) register(ctx context.Context, ready bool) error {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	t0 := time.Now()
	ttl := int64(s.cfg.LeaseTTL / time.Second)
	lease, err := s.cli.Grant(rc, ttl)
	s.noteResult(err)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			rc, cancel := s.rctx(context.Background())
			s.cli.Revoke(rc, lease.ID)
			cancel()
		}
	}()
	for attempt := 0; attempt < 8; attempt++ {
		resp, err := s.txn(rc).Then(clientv3.OpGet(s.k.node(s.cfg.NodeID)), clientv3.OpGet(s.k.slots(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			clientv3.OpGet(s.k.layout())).Commit()
		if err != nil {
			s.noteResult(err)
			return err
		}
		layout, layoutMod, err := layoutOf(resp.Responses[2].GetResponseRange().Kvs)
		if err != nil {
			return err
		}
		if !s.supportsLayout(layout) {
			return s.layoutError(layout)
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			// A previous life of this node (killed without revoking its
			// lease) or another process with the same node id.
			if err := s.replaceRegistration(ctx, kvs[0], resp.Header.Revision); err != nil {
				return err
			}
			continue
		}
		used := map[string]bool{}
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			used[string(kv.Key)] = true
		}
		slot := -1
		if s.prevSlot >= 0 && !used[s.k.slot(s.prevSlot)] {
			slot = s.prevSlot
		}
		for n := 0; slot < 0 && n < s.cfg.Slots; n++ {
			if !used[s.k.slot(n)] {
				slot = n
			}
		}
		if slot < 0 {
			return fmt.Errorf("statestore: all %d slots taken", s.cfg.Slots)
		}
		info, _ := proto.Marshal(&pb.Node{Id: s.cfg.NodeID, Slot: uint32(slot), PeerAddr: s.cfg.PeerAddr,
			RegisteredMs: time.Now().UnixMilli(), Lease: int64(lease.ID), Instance: s.cfg.Instance, KeyIds: s.cfg.Keys.IDs(),
			LayoutMin: uint32(s.cfg.layoutMin), LayoutMax: uint32(s.cfg.layoutMax), Layout: uint32(layout)})
		nk, sk := s.k.node(s.cfg.NodeID), s.k.slot(slot)
		tr, err := s.txn(rc).If(
			clientv3.Compare(clientv3.CreateRevision(nk), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(sk), "=", 0),
			// Registered into the layout as read: one a node moved the
			// cluster to since may be one this release does not support.
			clientv3.Compare(clientv3.ModRevision(s.k.layout()), "=", layoutMod),
		).Then(
			clientv3.OpPut(nk, string(info), clientv3.WithLease(lease.ID)),
			clientv3.OpPut(sk, s.cfg.NodeID, clientv3.WithLease(lease.ID)),
		).Commit()
		s.noteResult(err)
		if err != nil {
			return err
		}
		if !tr.Succeeded {
			continue // raced for the slot or the node key; look again
		}
		ok = true
		s.tookLayout(layout, true)
		reg := &registration{owner: Owner{Node: s.cfg.NodeID, Epoch: tr.Header.Revision}, slot: slot,
			lease: lease.ID, fenced: make(chan struct{})}
		reg.ready.Store(ready)
		s.reclaiming.Store(!ready) // before the deadline is armed
		s.mu.Lock()
		s.reg = reg
		s.prevSlot = slot
		if ready {
			close(s.regCh)
			s.regCh = make(chan struct{})
		}
		s.mu.Unlock()
		s.deadline.Store(1) // armed; extend moves it forward
		s.extend(t0, lease.TTL)
		s.log.Info("statestore: registered", "epoch", reg.owner.Epoch, "slot", slot, "ttl", lease.TTL)
		return nil
	}
	return errors.New("statestore: registration kept racing")
}

// fence ends reg: the node stops sending at once.
func (s *Store) fence(reg *registration, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reg.done.Load() {
		return
	}
	reg.done.Store(true)
	if s.reg == reg {
		s.deadline.Store(0)
	}
	close(reg.fenced)
	if why == "closed" { // the node stopping: nothing went wrong
		s.log.Info("statestore: registration ended", "epoch", reg.owner.Epoch, "reason", why)
		return
	}
	s.log.Warn("statestore: fenced; not sending for owned SAs", "epoch", reg.owner.Epoch, "reason", why)
}

func (s *Store) current() *registration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reg
}

// keepAlive renews the lease; once fenced it re-registers and reclaims.
func (s *Store) keepAlive() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		reg := s.current()
		if reg.done.Load() {
			if err := s.register(s.ctx, false); err != nil {
				var layout *LayoutError
				if errors.As(err, &layout) && err.Error() != s.lastRegErr {
					s.log.Error("statestore: cannot register again", "err", err)
				}
				s.lastRegErr = err.Error()
				continue
			}
			s.lastRegErr = ""
			s.revokeQuietly(reg.lease)
			owned, err := s.reclaim(s.ctx)
			s.current().ready.Store(true) // even if incomplete: LoadOwned retries
			if err != nil {
				s.log.Warn("statestore: reclaim after re-registration", "err", err)
			}
			if s.cfg.OnReclaimed != nil {
				me, _ := s.Registration()
				s.cfg.OnReclaimed(me, owned, err)
			}
			// Only now: until the node has dropped the SAs others took
			// over while it was fenced, sending for what it holds could
			// send for an SA another node serves.
			s.mu.Lock()
			s.reclaiming.Store(false)
			close(s.regCh)
			s.regCh = make(chan struct{})
			s.mu.Unlock()
			continue
		}
		rc, cancel := context.WithTimeout(s.ctx, min(s.cfg.RequestTimeout, s.cfg.KeepAliveInterval))
		t0 := time.Now()
		resp, err := s.cli.KeepAliveOnce(rc, reg.lease)
		cancel()
		switch {
		case err == nil && resp.TTL > 0:
			s.noteResult(nil)
			s.extend(t0, resp.TTL)
		case err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.noteResult(nil)
			s.fence(reg, "lease gone")
		default:
			if s.ctx.Err() == nil {
				s.noteResult(err)
			}
		}
	}
}

func (s *Store) revokeQuietly(id clientv3.LeaseID) {
	rc, cancel := s.rctx(s.ctx)
	defer cancel()
	s.cli.Revoke(rc, id)
}

// watchdog fences the registration when its send deadline passes without
// a renewal: before the lease's TTL can run out on the etcd side.
func (s *Store) watchdog() {
	defer s.wg.Done()
	for {
		reg := s.current()
		d := s.deadline.Load()
		if d == 0 || reg.done.Load() {
			select {
			case <-s.ctx.Done():
				return
			case <-s.Registered():
			case <-time.After(s.cfg.KeepAliveInterval):
			}
			continue
		}
		wait := time.Duration(d) - time.Since(s.base)
		if wait <= 0 {
			s.fence(reg, "lease not renewed in time")
			continue
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Close stops persisting (after committing what is queued, within the
// request timeout) and revokes the lease: a graceful leave, whose SAs other
// nodes may take over at once.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	fctx, cancel := s.rctx(context.Background())
	ferr := s.Flush(fctx)
	cancel()
	reg := s.current()
	s.cancel()
	s.wg.Wait()
	s.fence(reg, "closed")
	rc, cancel := s.rctx(context.Background())
	defer cancel()
	_, err := s.cli.Revoke(rc, reg.lease)
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	return ferr
}

// Abandon stops the store without revoking the lease, as a crash would:
// the registration stays until its TTL passes. For tests and drills.
func (s *Store) Abandon() {
	if s.closed.Swap(true) {
		return
	}
	s.cancel()
	s.wg.Wait()
	s.fence(s.current(), "abandoned")
}
