package concentrator

// The node's persistence (docs/architecture.md, "Cluster semantics"): every state
// change of an established SA goes to the state store; at start the node
// registers (slot, epoch), puts its slot into the SPIs it allocates, and
// restores the SAs it owns, so they survive a crash without
// re-authentication.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

type persistence struct {
	store statestore.Interface
	cli   *clientv3.Client
	etcd  *statestore.Embedded
	keys  *statestore.Keyring
	// rewrap is signalled when the store seals under another cluster key
	// (statestore.Config.OnSealingKey): rewrapLoop rewrites the records.
	rewrap chan struct{}
	// rotation: the last (or current) rewrite pass, for the admin API.
	rotationMu sync.Mutex
	rotation   KeyRotation
	// claims: the cluster's selector claims as read (claimbook.go); nil
	// without exclusive selectors or a store that reports claims.
	claims *claimBook
}

// selectorWatcher is a state store that reports selector claims.
type selectorWatcher interface {
	WatchSelectors(context.Context, func(statestore.SelectorEvent))
}

// KeyRotation is the progress of the node's last pass rewriting records
// sealed under other cluster keys than its sealing one (a rotation).
type KeyRotation struct {
	Running           bool
	SealingKey        uint32 // the key the pass seals under
	Started, Finished time.Time
	// Scanned records; Rewritten under the sealing key; Raced: changed
	// meanwhile by their writer (then sealed under the sealing key);
	// Unreadable: no key of the node opens them (left as they are).
	Scanned, Rewritten, Raced, Unreadable int
	Err                                   string // why the pass stopped early ("" if it did not)
}

// count takes a pass's figures so far.
func (k *KeyRotation) count(r statestore.RewrapStats) {
	k.Scanned, k.Rewritten, k.Raced, k.Unreadable = r.Scanned, r.Rewritten, r.Raced, r.Failed
}

func (p *persistence) setRotation(f func(*KeyRotation)) {
	p.rotationMu.Lock()
	f(&p.rotation)
	p.rotationMu.Unlock()
}

// KeyRotation returns the progress of the node's last cluster key
// rotation pass; ok is false if it ran none (a single key, no store).
func (n *Node) KeyRotation() (r KeyRotation, ok bool) {
	p := n.persist
	if p == nil {
		return KeyRotation{}, false
	}
	p.rotationMu.Lock()
	defer p.rotationMu.Unlock()
	return p.rotation, !p.rotation.Started.IsZero()
}

// openStore starts embedded etcd (mode embedded) or dials the external
// cluster, and registers this node.
func (n *Node) openStore(ctx context.Context) (*persistence, error) {
	if n.storeOverride != nil { // tests
		return &persistence{store: n.storeOverride}, nil
	}
	c := n.cfg.StateStore
	p := &persistence{rewrap: make(chan struct{}, 1)}
	var cc statestore.ClientConfig
	switch c.Mode {
	case "embedded":
		start := time.Now()
		e, err := statestore.OpenEmbedded(c.DataDir, statestore.EmbedConfig{Logger: n.etcdLogger()})
		if err != nil {
			var dd *statestore.DataDirError
			if errors.As(err, &dd) {
				return nil, fmt.Errorf("statestore.data_dir: %w", err)
			}
			return nil, fmt.Errorf("statestore: embedded etcd: %w", err)
		}
		p.etcd = e
		// In-process calls: no gRPC or loopback round trip per commit;
		// timed here for ikefleet_etcd_* (no interceptor to hook).
		p.cli = e.LocalClient()
		statestore.ObserveClient(p.cli, n.obs.etcd.Observe)
		// No TCP port: other processes of this user (nodes sharing the
		// member on one host, etcdctl) come through the socket, if its path
		// fits one.
		endpoint := "none (the data directory's path is too long for a unix socket)"
		if eps := e.Endpoints(); len(eps) > 0 {
			endpoint = eps[0]
		}
		n.log.Info("embedded etcd ready", "dir", c.DataDir, "endpoint", endpoint, "took", time.Since(start).Round(time.Millisecond).String())
	case "external":
		cc = statestore.ClientConfig{Endpoints: c.Endpoints, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
	}
	keys, err := loadClusterKey(c, c.Mode == "embedded")
	if err != nil {
		p.close()
		return nil, err
	}
	// The instance token tells this node's previous life (a restart within
	// the lease TTL) from another process configured with the same node.id.
	var instance string
	if c.DataDir != "" {
		if instance, err = statestore.LoadInstance(c.DataDir); err != nil {
			p.close()
			return nil, fmt.Errorf("statestore.data_dir: %w", err)
		}
	}
	cc.DialOptions = append(cc.DialOptions, n.obs.etcd.DialOption()) // ikefleet_etcd_* metrics
	if p.cli == nil {
		if p.cli, err = statestore.Dial(cc); err != nil {
			p.close()
			return nil, fmt.Errorf("statestore.endpoints: %w", err)
		}
	}
	store, err := statestore.Open(ctx, p.cli, statestore.Config{
		NodeID: n.nodeID, Instance: instance, Keys: keys, LeaseTTL: c.LeaseTTL, PeerAddr: n.PeerAddr(),
		KeepAliveInterval: c.KeepAlive, FenceMargin: c.FenceMargin,
		Batch:        statestore.BatchConfig{QueueNew: c.QueueNew, MaxDelay: c.CommitDelay},
		SingleMember: p.etcd != nil, // the embedded member: one, in this process
		SoleWriter:   p.etcd != nil, // until another node registers in it (nodes sharing one host)
		OnReclaimed:  n.onReclaimed,
		OnSealingKey: func(old, cur uint32) {
			select {
			case p.rewrap <- struct{}{}:
			default: // one is pending
			}
		},
		Log: n.log.With("component", "statestore"),
	})
	if err != nil {
		// p.store stays a nil interface: a nil *Store in it would not be.
		p.close()
		return nil, fmt.Errorf("statestore: %w", err)
	}
	p.store = store
	p.keys = keys
	return p, nil
}

// rewrapLoop rewrites the records sealed under other cluster keys than
// the sealing one at the start and whenever the store seals under another
// key (a rotation: the newest key every node holds), until ctx ends.
func (n *Node) rewrapLoop(ctx context.Context, p *persistence) {
	n.rewrapRecords(ctx, p)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.rewrap:
			n.rewrapRecords(ctx, p)
		}
	}
}

// rewrapRecords rewrites the records sealed under other cluster keys under
// the sealing one (statestore.cluster_key_file with several keys: a
// rotation), logging its progress.
func (n *Node) rewrapRecords(ctx context.Context, p *persistence) {
	st, ok := p.store.(*statestore.Store)
	if !ok || p.keys == nil || len(p.keys.IDs()) < 2 {
		return
	}
	start := time.Now()
	sealing := p.keys.Current()
	p.setRotation(func(r *KeyRotation) { *r = KeyRotation{Running: true, SealingKey: sealing, Started: start} })
	n.log.Info("cluster key rotation: rewriting records sealed under other keys", "sealing_key", sealing, "keys", fmt.Sprint(p.keys.IDs()))
	last := time.Now()
	res, err := st.Rewrap(ctx, func(r statestore.RewrapStats) {
		p.setRotation(func(k *KeyRotation) { k.count(r) })
		if time.Since(last) >= 10*time.Second {
			last = time.Now()
			n.log.Info("cluster key rotation progress", "scanned", r.Scanned, "rewritten", r.Rewritten)
		}
	})
	attrs := []any{"scanned", res.Scanned, "rewritten", res.Rewritten, "raced", res.Raced, "unreadable", res.Failed,
		"took", time.Since(start).Round(time.Millisecond).String()}
	n.cluster.rewrapped.Add(uint64(res.Rewritten))
	p.setRotation(func(k *KeyRotation) {
		k.Running, k.Finished = false, time.Now()
		k.count(res)
		if err != nil {
			k.Err = err.Error()
		}
	})
	if err != nil {
		n.log.Warn("cluster key rotation interrupted (the next start or change of sealing key resumes it)", append(attrs, "err", err)...)
		return
	}
	n.cluster.rewraps.Add(1)
	n.cluster.rewrapUnreadable.Add(uint64(res.Failed))
	n.log.Info("cluster key rotation done: records sealed under other keys rewritten", append(attrs, "sealing_key", p.keys.Current())...)
}

func (p *persistence) close() {
	if p.store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p.store.Flush(ctx)
		cancel()
		p.store.Close()
	}
	if p.cli != nil {
		p.cli.Close()
	}
	if p.etcd != nil {
		p.etcd.Close()
	}
}

// etcdLogger sends embedded etcd's logs from statestore.etcd_log_level up
// into the node's log.
func (n *Node) etcdLogger() *zap.Logger {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(n.cfg.StateStore.EtcdLogLevel)); err != nil {
		lvl = zapcore.WarnLevel
	}
	return statestore.SlogZap(n.log.With("component", "etcd"), lvl)
}

// loadClusterKey loads the cluster key (statestore.LocateClusterKey):
// statestore.cluster_key_file, by default /etc/ikefleet/cluster.key. With
// generate it is created if absent: at the start of a stand-alone node
// (mode embedded); nodes sharing an external etcd share a key file and
// never generate one, and a reload never does.
func loadClusterKey(c StateStoreConfig, generate bool) (*statestore.Keyring, error) {
	loc := statestore.LocateClusterKey(c.ClusterKeyFile, c.DataDir)
	keys, err := statestore.LoadKeyFile(loc.Path, generate)
	if err != nil {
		return nil, fmt.Errorf("statestore.cluster_key_file: %w", err)
	}
	return keys, nil
}

// watchSelectors gives the selector registry the claims of the SAs held
// elsewhere in the cluster (statestore sel/ keys, written with each SA's
// record under an exclusive policy), so that a node refuses another
// identity's overlapping selectors whichever node holds them, and the
// claim book (claimbook.go) every claim in etcd's order: it judges the
// claims made on two nodes at once, answers this node's writes held for
// their verdict, and names the losers nobody waited for, which are
// settled here.
func (n *Node) watchSelectors(ctx context.Context) {
	book := n.persist.claims // set only with a registry and a store that watches claims
	if book == nil {
		return
	}
	w, reg := n.persist.store.(selectorWatcher), n.ecfg.Selectors
	if n.selectorWatchGate != nil { // tests: a watch that lags
		select {
		case <-n.selectorWatchGate:
		case <-ctx.Done():
			return
		}
	}
	w.WatchSelectors(ctx, func(ev statestore.SelectorEvent) {
		switch {
		case ev.Synced:
			for _, l := range book.sync(ev.At) {
				n.cluster.selectorConflicts.Add(1)
				go n.settleSelectorConflict(ctx, l)
			}
		case ev.Claim == nil:
			book.remove(ev.SPI, ev.At)
			reg.SetRemote(ev.SPI, "", nil)
		default:
			ranges := make([]ike.SelectorRange, len(ev.Claim.Ranges))
			since := make([]int64, len(ev.Claim.Ranges))
			for i, r := range ev.Claim.Ranges {
				ranges[i], since[i] = ike.SelectorRange{Start: r.Start, End: r.End}, r.Since
			}
			if ev.Listed {
				book.list(ev.SPI, ev.Claim.Identity, ranges, since, ev.At)
			} else {
				book.put(ev.SPI, ev.Claim.Identity, ranges, ev.At)
			}
			reg.SetRemote(ev.SPI, ev.Claim.Identity, ranges)
		}
	})
}

// settleSelectorConflict deletes the SA of a claim that lost with no write
// of this node waiting for it (claimbook.go), if this node holds it (its
// gateway may come again: it is then refused the selectors the holder
// holds).
func (n *Node) settleSelectorConflict(ctx context.Context, l claimLoss) {
	err := n.Terminate(ctx, l.spi)
	if errors.Is(err, ErrNoSA) {
		return // another node's: it settles it
	}
	n.log.Warn("selectors claimed on two nodes at once: the later claim's SA is deleted",
		"spi", fmt.Sprintf("%016x", l.spi), "identity", l.identity,
		"holder", l.holder, "holder_spi", fmt.Sprintf("%016x", l.holderSPI), "err", err)
}

// reloadClusterKeys reads statestore.cluster_key_file again (never
// generating it) for ReloadCredentials; nil without a state store.
func (n *Node) reloadClusterKeys() (*statestore.Keyring, error) {
	c := n.cfg.StateStore
	if c.Mode == "none" || n.persist == nil || n.persist.keys == nil {
		return nil, nil
	}
	return loadClusterKey(c, false)
}

// applyClusterKeys makes the node hold the keys of a reloaded key file,
// publishes them in its registration (the nodes seal under a new key once
// every one holds it) and says what changed in res.
func (n *Node) applyClusterKeys(ctx context.Context, keys *statestore.Keyring, res *ReloadResult) {
	p := n.persist
	if keys == nil || p == nil || p.keys == nil {
		return
	}
	before := p.keys.IDs()
	p.keys.Update(keys)
	if !slices.Equal(before, p.keys.IDs()) {
		res.Changed = append(res.Changed, "cluster_keys")
	}
	if a, ok := p.store.(interface{ AdvertiseKeys(context.Context) error }); ok {
		if err := a.AdvertiseKeys(ctx); err != nil {
			n.log.Warn("cluster keys: not published in the registration yet (published when the node registers again)", "err", err)
		}
	}
	res.ClusterKeys, res.SealingKey = p.keys.IDs(), p.keys.Current()
}

// checkClusterKey runs in New (so --check reports it): a cluster key found
// in data_dir, where releases before /etc/ikefleet/cluster.key generated
// it, is used with a warning; a key file that exists is loaded (mode and
// format checked). An absent one is generated at the start (embedded) or
// is an error then (external).
func (n *Node) checkClusterKey() error {
	c := n.cfg.StateStore
	if c.Mode == "none" {
		return nil
	}
	loc := statestore.LocateClusterKey(c.ClusterKeyFile, c.DataDir)
	if loc.Legacy {
		n.log.Warn("statestore.cluster_key_file: using the cluster key in data_dir, next to the records it seals; move it to "+
			statestore.DefaultClusterKeyFile+" (mode 0600, owned by the service user) or set statestore.cluster_key_file",
			"path", loc.Path)
	}
	if _, err := os.Lstat(loc.Path); err == nil {
		if _, err := statestore.LoadKeyFile(loc.Path, false); err != nil {
			return fmt.Errorf("statestore.cluster_key_file: %w", err)
		}
	}
	return nil
}
