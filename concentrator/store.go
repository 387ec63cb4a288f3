package concentrator

// The node's persistence (DESIGN.md "Cluster semantics"): every state
// change of an established SA goes to the state store; at start the node
// registers (slot, epoch), puts its slot into the SPIs it allocates, and
// restores the SAs it owns, so they survive a crash without
// re-authentication.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ikefleet/ikefleet/statestore"
)

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

type persistence struct {
	store *statestore.Store
	cli   *clientv3.Client
	etcd  *statestore.Embedded
}

// openStore starts embedded etcd (mode embedded) or dials the external
// cluster, and registers this node.
func (n *Node) openStore(ctx context.Context) (*persistence, error) {
	c := n.cfg.StateStore
	p := &persistence{}
	var cc statestore.ClientConfig
	switch c.Mode {
	case "embedded":
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("statestore.data_dir: %w", err)
		}
		client, peer, err := embeddedAddrs(c.DataDir)
		if err != nil {
			return nil, fmt.Errorf("statestore.data_dir: %w", err)
		}
		start := time.Now()
		e, err := statestore.StartEmbedded(statestore.EmbedConfig{Dir: filepath.Join(c.DataDir, "etcd"),
			ClientAddr: client, PeerAddr: peer, Logger: n.etcdLogger()})
		if err != nil {
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
	keys, err := clusterKeys(c)
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
	p.store, err = statestore.Open(ctx, p.cli, statestore.Config{
		NodeID: n.nodeID, Instance: instance, Keys: keys, LeaseTTL: c.LeaseTTL,
		Batch:       statestore.BatchConfig{QueueNew: c.QueueNew},
		OnReclaimed: n.onReclaimed,
		Log:         n.log.With("component", "statestore"),
	})
	if err != nil {
		p.close()
		return nil, fmt.Errorf("statestore: %w", err)
	}
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

// embeddedAddrs returns the loopback addresses of the embedded etcd
// member, chosen once and kept in the data directory: its data names them.
func embeddedAddrs(dir string) (client, peer string, err error) {
	path := filepath.Join(dir, "etcd-addrs")
	if b, err := os.ReadFile(path); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			return f[0], f[1], nil
		}
	}
	free := func() (string, error) {
		l, err := listenLoopback()
		if err != nil {
			return "", err
		}
		defer l.Close()
		return l.Addr().String(), nil
	}
	if client, err = free(); err != nil {
		return "", "", err
	}
	if peer, err = free(); err != nil {
		return "", "", err
	}
	return client, peer, os.WriteFile(path, []byte(client+" "+peer+"\n"), 0o600)
}

// clusterKeys loads the cluster key (hex, 32 bytes); in embedded mode one
// is generated in the data directory the first time.
func clusterKeys(c StateStoreConfig) (*statestore.Keyring, error) {
	path := c.ClusterKeyFile
	if path == "" {
		path = filepath.Join(c.DataDir, "cluster.key")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			key := make([]byte, statestore.ClusterKeyLen)
			if _, err := rand.Read(key); err != nil {
				return nil, err
			}
			if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
				return nil, fmt.Errorf("statestore.data_dir: %w", err)
			}
		}
	}
	if err := checkPrivateKeyFile("statestore.cluster_key_file", path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("statestore.cluster_key_file: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != statestore.ClusterKeyLen {
		return nil, fmt.Errorf("statestore.cluster_key_file: %s must hold %d bytes in hex", path, statestore.ClusterKeyLen)
	}
	return statestore.NewKeyring(1, key)
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
