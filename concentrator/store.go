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
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ikefleet/ikefleet/statestore"
)

type persistence struct {
	store statestore.Interface
	cli   *clientv3.Client
	etcd  *statestore.Embedded
}

// openStore starts embedded etcd (mode embedded) or dials the external
// cluster, and registers this node.
func (n *Node) openStore(ctx context.Context) (*persistence, error) {
	if n.storeOverride != nil { // tests
		return &persistence{store: n.storeOverride}, nil
	}
	c := n.cfg.StateStore
	p := &persistence{}
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
		n.log.Info("embedded etcd ready", "dir", c.DataDir, "endpoint", e.Endpoints()[0], "took", time.Since(start).Round(time.Millisecond).String())
	case "external":
		cc = statestore.ClientConfig{Endpoints: c.Endpoints, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
	}
	keys, err := statestore.LoadKeyring(c.ClusterKeyFile, c.DataDir)
	if err != nil {
		p.close()
		field := "statestore.cluster_key_file"
		if c.ClusterKeyFile == "" {
			field = "statestore.data_dir"
		}
		return nil, fmt.Errorf("%s: %w", field, err)
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
		Batch:       statestore.BatchConfig{QueueNew: c.QueueNew},
		OnReclaimed: n.onReclaimed,
		Log:         n.log.With("component", "statestore"),
	})
	if err != nil {
		// p.store stays a nil interface: a nil *Store in it would not be.
		p.close()
		return nil, fmt.Errorf("statestore: %w", err)
	}
	p.store = store
	return p, nil
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
