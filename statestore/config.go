package statestore

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Implementation limits and defaults.
const (
	DefaultPrefix         = "/ikefleet/"
	DefaultLeaseTTL       = 3 * time.Second
	DefaultRequestTimeout = 2 * time.Second
	DefaultSlots          = 256
	// EtcdDefaultMaxTxnOps is etcd's default --max-txn-ops. etcd counts
	// each level of a transaction: the larger of its compares, its
	// success and its failure ops, and a nested transaction may hold only
	// what the levels around it leave of the limit. Every transaction the
	// store sends fits it, so that an external etcd works with its
	// defaults.
	EtcdDefaultMaxTxnOps = 128
	// DefaultMaxBatch: changes (each a nested transaction of at most a
	// few dozen ops) in one transaction; half the limit leaves the other
	// half to each nested one.
	DefaultMaxBatch        = EtcdDefaultMaxTxnOps / 2
	DefaultMaxDelay        = 2 * time.Millisecond
	DefaultQueueLen        = 16384
	DefaultInflight        = 4
	maxNodeIDLen           = 63
	retryMin, retryMax     = 50 * time.Millisecond, time.Second
	readBatch              = 128 // keys fetched per read transaction
	defaultFenceMarginFrac = 5   // margin = TTL/5 unless configured
)

// Config configures a node's state store.
type Config struct {
	NodeID   string // unique in the cluster: [A-Za-z0-9._-], at most 63 bytes
	PeerAddr string // this node's peer.v1 address, published in the registry

	// Instance identifies this node's installation across restarts (a
	// random token kept in its data directory, see LoadInstance). A live
	// registration under NodeID with the same Instance is this node's
	// previous life and is replaced at once; one with another (or no)
	// Instance is waited out for its lease TTL and, if it is still being
	// renewed, Open fails with a *NodeIDInUseError: two processes never
	// share a node id. Empty: every registration found is waited out.
	Instance string
	Prefix   string // key prefix in etcd; default "/ikefleet/"

	// LeaseTTL is the node lease. A node that cannot renew it stops
	// sending (CanSend false) FenceMargin before the TTL can pass, counted
	// from when it sent its last successful renewal. etcd grants whole
	// seconds; the minimum is 2 s.
	LeaseTTL          time.Duration
	FenceMargin       time.Duration // default LeaseTTL/5
	KeepAliveInterval time.Duration // default LeaseTTL/3
	RequestTimeout    time.Duration // per etcd request; default 2 s

	Slots int // slot numbers 0..Slots-1; default 256

	Keys *Keyring // cluster keys; required

	Batch BatchConfig

	// SingleMember: the client reaches a single-member etcd (the node's
	// embedded member, Embedded.LocalClient). Reads on the path of a new
	// SA (AddressOf) are then served from the member's state
	// (serializable) instead of through a raft round each
	// (linearizable): with one member both see every acknowledged write,
	// and a linearizable read waits for the raft loop, behind the WAL
	// writes of the batches in flight, while the shard that asked waits
	// too. Leave it off for a cluster of several members, where a member
	// may lag.
	SingleMember bool
	// SoleWriter: no other Store writes under Prefix (the node's embedded
	// member). The Store then knows which identities hold an address
	// lease from its own writes (listed at Open), and AddressOf reads etcd
	// only for those (leased.go), until another node registers under
	// Prefix (watched): from then on it reads for every identity. Leave it
	// off whenever a tool other than a Store may write the same keys.
	SoleWriter bool

	// OnReclaimed is called (from a store goroutine) after the store
	// re-registered under a new epoch following a fence, with the SAs it
	// reclaimed for the new epoch. The node resumes those and drops the
	// SAs it held that are not listed (another node took them over).
	// err != nil: the reclaim was incomplete; call LoadOwned to retry.
	OnReclaimed func(me Owner, owned []uint64, err error)
	// OnSealingKey, if set, is called (on a goroutine of its own) when the
	// store seals under another cluster key than before (SealingKey: a key
	// every live node holds now, or an older one for a node that joined
	// without the newest): records sealed under other keys are then to be
	// rewritten (Rewrap).
	OnSealingKey func(old, current uint32)

	Log *slog.Logger // default slog.Default()

	// layoutMin, layoutMax: the store layouts the store reads and writes;
	// LayoutMin and LayoutMax (tests stand in for other releases).
	layoutMin, layoutMax int
}

// BatchConfig configures Submit: the changes that arrive within MaxDelay
// of the first, or while a transaction is under way, are committed
// together in the next one (group commit), at most MaxBatch changes a
// transaction. A change waits MaxDelay for others only while they arrive
// at one or more per MaxDelay (measured over the last 25 MaxDelays);
// slower, it is committed at once.
type BatchConfig struct {
	MaxBatch int           // default 64; must not exceed etcd's --max-txn-ops
	MaxDelay time.Duration // default 2 ms
	QueueLen int           // changes waiting; default 16384
	// Inflight bounds the transactions under way at once: a second one
	// starts only with MaxBatch changes waiting (a burst). Default 4.
	Inflight int
	// QueueNew: while etcd is unreachable, queue new SAs (Established)
	// like other changes instead of refusing them with ErrUnavailable.
	QueueNew bool
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.FenceMargin == 0 {
		c.FenceMargin = c.LeaseTTL / defaultFenceMarginFrac
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = c.LeaseTTL / 3
	}
	if c.layoutMax == 0 {
		c.layoutMin, c.layoutMax = LayoutMin, LayoutMax
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Slots == 0 {
		c.Slots = DefaultSlots
	}
	if c.Batch.MaxBatch == 0 {
		c.Batch.MaxBatch = DefaultMaxBatch
	}
	if c.Batch.MaxDelay == 0 {
		c.Batch.MaxDelay = DefaultMaxDelay
	}
	if c.Batch.Inflight == 0 {
		c.Batch.Inflight = DefaultInflight
	}
	if c.Batch.QueueLen == 0 {
		c.Batch.QueueLen = DefaultQueueLen
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// Validate checks a configuration (after defaults); errors name the field.
func (c *Config) Validate() error {
	if c.NodeID == "" || len(c.NodeID) > maxNodeIDLen {
		return fmt.Errorf("statestore.nodeID: want 1..%d bytes, got %q", maxNodeIDLen, c.NodeID)
	}
	for _, r := range c.NodeID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("statestore.nodeID: %q: only letters, digits, '.', '_' and '-'", c.NodeID)
		}
	}
	if c.Keys == nil {
		return errors.New("statestore.keys: a cluster keyring is required")
	}
	if c.LeaseTTL < 2*time.Second || c.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("statestore.leaseTTL: %v: want whole seconds, at least 2s", c.LeaseTTL)
	}
	if c.FenceMargin <= 0 || c.FenceMargin >= c.LeaseTTL {
		return fmt.Errorf("statestore.fenceMargin: %v: want 0 < margin < leaseTTL", c.FenceMargin)
	}
	if c.KeepAliveInterval <= 0 || c.KeepAliveInterval >= c.LeaseTTL-c.FenceMargin {
		return fmt.Errorf("statestore.keepAliveInterval: %v: want less than leaseTTL - fenceMargin", c.KeepAliveInterval)
	}
	if c.Slots < 1 || c.Slots > 1<<16 {
		return fmt.Errorf("statestore.slots: %d: want 1..65536", c.Slots)
	}
	if c.Batch.MaxBatch < 1 || c.Batch.QueueLen < 1 || c.Batch.Inflight < 1 || c.Batch.MaxDelay < 0 {
		return errors.New("statestore.batch: maxBatch, queueLen and inflight must be positive, maxDelay not negative")
	}
	return nil
}
