package statestore

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// EmbedConfig configures the embedded single-member etcd that a
// stand-alone node (and every test) uses.
type EmbedConfig struct {
	Dir        string // data directory; required
	Name       string // member name; default "ikefleet"
	ClientAddr string // host:port; default 127.0.0.1 on a free port
	PeerAddr   string // host:port; default 127.0.0.1 on a free port
	// Socket, if set, replaces the TCP listeners: clients connect through
	// this unix socket (made 0600; its directory should be private) and
	// the member, the only one of its cluster, listens for no peers.
	// ClientAddr, PeerAddr and the TLS files are then unused.
	Socket string
	// NoListeners: no socket at all, not even Socket; only LocalClient
	// reaches the member.
	NoListeners bool
	MaxTxnOps   uint // default 1024 (the batcher's MaxBatch must fit)
	NoFsync     bool // tests only: loses data on power failure
	// SnapshotCount: committed transactions between raft snapshots; the
	// raft log kept in memory grows to about this many entries (each a
	// batch of SA changes) before a snapshot lets it go. Default 1000
	// (etcd's 10,000 holds ~100 MB of batches in memory at a burst).
	SnapshotCount uint64
	// SnapshotCatchUpEntries: raft entries kept after a snapshot for a
	// slow follower; a single member has none. Default 100.
	SnapshotCatchUpEntries uint64
	// History: how long superseded and deleted revisions are kept before
	// etcd compacts them away (periodic compaction, about every tenth of
	// it). Every SA setup leaves a few behind (reservations turned into
	// records); until compaction etcd keeps each of them in its in-memory
	// index and its backend. A watcher further behind than this re-lists.
	// Default 1 minute.
	History time.Duration
	// DefragAtStart: defragment the backend at start when at least half
	// of it is free space (compaction frees pages but never shrinks the
	// file). Default on; defragmenting blocks the member, so it is not
	// done while serving.
	NoDefragAtStart bool
	Timeout         time.Duration // to become ready; default 30 s
	Logger          *zap.Logger   // nil: silent; SlogZap: into a slog.Logger
	// Client TLS: serve https and require client certificates signed by
	// ClientCAFile. All empty: plain http on loopback.
	CertFile, KeyFile, ClientCAFile string
}

// Defaults of the embedded member's raft log (EmbedConfig).
const (
	DefaultEmbedSnapshotCount          = 1000
	DefaultEmbedSnapshotCatchUpEntries = 100
	DefaultEmbedHistory                = time.Minute
)

// Embedded is a running embedded etcd member.
type Embedded struct {
	stopping  atomic.Bool // Stop under way (stoppingCore)
	cfg       EmbedConfig
	e         *embed.Etcd
	clientURL url.URL
	peerURL   url.URL
}

// StartEmbedded starts etcd in cfg.Dir and waits until it serves.
func StartEmbedded(cfg EmbedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("statestore: embedded etcd: Dir is required")
	}
	if cfg.Name == "" {
		cfg.Name = "ikefleet"
	}
	if cfg.MaxTxnOps == 0 {
		cfg.MaxTxnOps = 1024
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.SnapshotCount == 0 {
		cfg.SnapshotCount = DefaultEmbedSnapshotCount
	}
	if cfg.History == 0 {
		cfg.History = DefaultEmbedHistory
	}
	if cfg.SnapshotCatchUpEntries == 0 {
		cfg.SnapshotCatchUpEntries = DefaultEmbedSnapshotCatchUpEntries
	}
	if cfg.local() {
		m := &Embedded{cfg: cfg}
		if cfg.Socket != "" && !cfg.NoListeners {
			m.clientURL = url.URL{Scheme: "unix", Path: cfg.Socket}
		}
		if err := m.start(); err != nil {
			return nil, err
		}
		return m, nil
	}
	scheme := "http"
	if cfg.CertFile != "" {
		scheme = "https"
	}
	// A port picked here (no address configured) is free when picked and
	// may be taken by another process before etcd binds it: then pick
	// again, a few times.
	picked := cfg.ClientAddr == "" || cfg.PeerAddr == ""
	for try := 1; ; try++ {
		c := cfg
		var err error
		if c.ClientAddr, err = pickAddr(cfg.ClientAddr); err != nil {
			return nil, err
		}
		if c.PeerAddr, err = pickAddr(cfg.PeerAddr); err != nil {
			return nil, err
		}
		m := &Embedded{cfg: c,
			clientURL: url.URL{Scheme: scheme, Host: c.ClientAddr},
			peerURL:   url.URL{Scheme: "http", Host: c.PeerAddr}}
		err = m.start()
		if err == nil {
			return m, nil
		}
		if !picked || try == 3 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
}

// pickAddr is freeAddr (tests replace it).
var pickAddr = freeAddr

// freeAddr returns addr, or a free loopback port when addr is empty.
func freeAddr(addr string) (string, error) {
	if addr != "" {
		return addr, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("statestore: embedded etcd: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (m *Embedded) start() error {
	c := embed.NewConfig()
	c.Name = m.cfg.Name
	c.Dir = m.cfg.Dir
	c.ListenClientUrls = []url.URL{m.clientURL}
	c.AdvertiseClientUrls = []url.URL{m.clientURL}
	c.ListenPeerUrls = []url.URL{m.peerURL}
	c.AdvertisePeerUrls = []url.URL{m.peerURL}
	if m.cfg.local() {
		// No TCP port: the member is its cluster's only one, so no peer
		// ever dials it (its membership needs a peer URL all the same; a
		// member of an older release keeps the one it has). Clients come
		// through the socket, if any. etcd wants advertised URLs in
		// host:port form; what clients dial is Endpoints.
		c.ListenPeerUrls = nil
		c.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Host: "none:0"}}
		c.ListenClientUrls, c.AdvertiseClientUrls = nil, nil
		if m.clientURL.Path != "" {
			c.ListenClientUrls = []url.URL{m.clientURL}
			c.AdvertiseClientUrls = []url.URL{{Scheme: "unix", Host: m.clientURL.Path + ":0"}}
		}
	}
	c.InitialCluster = c.InitialClusterFromName(c.Name)
	// No etcd users: the simple token provider would only warn at start
	// that its tokens are not signed.
	c.AuthToken = ""
	c.MaxTxnOps = m.cfg.MaxTxnOps
	c.SnapshotCount = m.cfg.SnapshotCount
	c.SnapshotCatchUpEntries = m.cfg.SnapshotCatchUpEntries
	// Every SA rewrite leaves an old revision behind; keep History of it
	// (external clusters need the same: --auto-compaction-mode periodic,
	// --auto-compaction-retention).
	c.AutoCompactionMode = "periodic"
	c.AutoCompactionRetention = m.cfg.History.String()
	// Watches of quiet prefixes (nodes, selector claims) learn how far they
	// have read from progress notifications, so that one that breaks goes
	// on from a revision still in the History (followPrefix; etcd's
	// default is every 10 minutes; external clusters:
	// --watch-progress-notify-interval).
	c.WatchProgressNotifyInterval = max(m.cfg.History/4, time.Second)
	if m.cfg.CertFile != "" {
		c.ClientTLSInfo = transport.TLSInfo{CertFile: m.cfg.CertFile, KeyFile: m.cfg.KeyFile,
			TrustedCAFile: m.cfg.ClientCAFile, ClientCertAuth: m.cfg.ClientCAFile != ""}
	}
	// embed.NewConfig leaves this at 0 (only etcd's flags default it), which
	// logs every request as expensive at warn level.
	c.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	c.UnsafeNoFsync = m.cfg.NoFsync
	lg := m.cfg.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	m.stopping.Store(false)
	lg = lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return &stoppingCore{c, &m.stopping} }))
	c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	e, err := embed.StartEtcd(c)
	if err != nil {
		return fmt.Errorf("statestore: embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		if !m.cfg.NoDefragAtStart {
			be := e.Server.Backend()
			if size := be.Size(); size >= 64<<20 && be.SizeInUse() <= size/2 {
				if err := e.Server.Defragment(); err != nil {
					lg.Warn("embedded etcd: defragmentation at start failed", zap.Error(err))
				}
			}
		}
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("statestore: embedded etcd: %w", err)
	case <-time.After(m.cfg.Timeout):
		e.Close()
		return fmt.Errorf("statestore: embedded etcd: not ready after %v", m.cfg.Timeout)
	}
	if m.clientURL.Scheme == "unix" {
		// The socket is made with the process's umask: connecting needs
		// write permission on it, which only the owner keeps.
		if err := os.Chmod(m.clientURL.Path, 0o600); err != nil {
			e.Close()
			return fmt.Errorf("statestore: embedded etcd: %w", err)
		}
	}
	m.e = e
	return nil
}

// local: the member serves no TCP port (Socket, NoListeners).
func (c *EmbedConfig) local() bool { return c.Socket != "" || c.NoListeners }

// Endpoints are the client URLs, for ClientConfig.Endpoints (a unix
// socket: unix:///path); none with NoListeners.
func (m *Embedded) Endpoints() []string {
	switch {
	case m.clientURL.Scheme == "unix":
		return []string{"unix://" + m.clientURL.Path}
	case m.clientURL.Host == "":
		return nil
	}
	return []string{m.clientURL.String()}
}

// LocalClient returns a client that calls this member's server in this
// process, without gRPC or sockets: a request costs function calls, not
// loopback round trips (the node's own embedded store). It is valid
// until Stop; Close it before.
func (m *Embedded) LocalClient() *clientv3.Client { return v3client.New(m.e.Server) }

// Client returns a client configuration for this member.
func (m *Embedded) Client() ClientConfig { return ClientConfig{Endpoints: m.Endpoints()} }

// Stop stops the member; Start starts it again on the same data and ports.
func (m *Embedded) Stop() {
	if m.e != nil {
		m.stopping.Store(true)
		m.e.Close()
		m.e = nil
	}
}

// stoppingCore passes etcd's log entries on, but as debug entries:
//   - while the member stops, its warnings and errors: closing its
//     listeners makes each of its servers report "setting up serving ...
//     failed" (use of closed network connection) at error level, on every
//     clean stop;
//   - warnings about the member's set-up that hold for every member we
//     start (benignWarnings).
type stoppingCore struct {
	zapcore.Core
	stopping *atomic.Bool
}

// benignWarnings: etcd's advice to serve HTTP (metrics, health) apart
// from gRPC, which matters to an etcd serving remote clients under load;
// ours are in process, or the node's user on its socket.
var benignWarnings = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
}

func (c *stoppingCore) With(fields []zapcore.Field) zapcore.Core {
	return &stoppingCore{c.Core.With(fields), c.stopping}
}

func (c *stoppingCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Level > zapcore.InfoLevel && e.Level < zapcore.DPanicLevel && (c.stopping.Load() || benignWarnings[e.Message]) {
		e.Level = zapcore.DebugLevel
	}
	return c.Core.Check(e, ce)
}

// Start restarts a stopped member.
func (m *Embedded) Start() error {
	if m.e != nil {
		return nil
	}
	return m.start()
}

// Close stops the member for good.
func (m *Embedded) Close() { m.Stop() }
