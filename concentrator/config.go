package concentrator

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/memlimit"
	"github.com/ikefleet/ikefleet/lb"
	"github.com/ikefleet/ikefleet/statestore"
)

// Config is concentratord's configuration file. See
// deploy/examples/concentratord.yaml for every field with its default.
type Config struct {
	Node       NodeConfig       `yaml:"node"`
	Log        LogConfig        `yaml:"log"`
	IKE        IKEConfig        `yaml:"ike"`
	Identity   IdentityConfig   `yaml:"identity"`
	Auth       AuthConfig       `yaml:"auth"`
	Children   ChildrenConfig   `yaml:"children"`
	DataPlane  DataPlaneConfig  `yaml:"dataplane"`
	StateStore StateStoreConfig `yaml:"statestore"`
	Metrics    MetricsConfig    `yaml:"metrics"`
	Admin      AdminConfig      `yaml:"admin"`    // config_admin.go
	Cluster    ClusterConfig    `yaml:"cluster"`  // config_cluster.go
	Anycast    lb.Config        `yaml:"anycast"`  // config_anycast.go
	Policies   []PolicyConfig   `yaml:"policies"` // config_policy.go
}

// StateStoreConfig says where SA state is kept so that SAs outlive the
// process: embedded etcd in a data directory (one node, the default), an
// external etcd cluster, or nowhere.
type StateStoreConfig struct {
	Mode           string        `yaml:"mode"`             // embedded | external | none
	DataDir        string        `yaml:"data_dir"`         // embedded etcd and the instance token; relative to the config file
	Endpoints      []string      `yaml:"endpoints"`        // external etcd
	CAFile         string        `yaml:"ca_file"`          // external etcd: CA of the servers
	CertFile       string        `yaml:"cert_file"`        // external etcd: client certificate
	KeyFile        string        `yaml:"key_file"`         // and its key
	ClusterKeyFile string        `yaml:"cluster_key_file"` // 32-byte AES key (hex) sealing key material, or "<id>:<hex>" lines (rotation: the highest id seals); default statestore.DefaultClusterKeyFile (embedded: generated if absent; a key in data_dir from an older release is used with a warning)
	LeaseTTL       time.Duration `yaml:"lease_ttl"`
	// KeepAlive renews the lease (default lease_ttl/3); FenceMargin: a node
	// that has not renewed stops sending this long before its lease can
	// expire, counted on the monotonic clock from when it sent its last
	// successful renewal (default lease_ttl/5).
	KeepAlive   time.Duration `yaml:"keepalive_interval"`
	FenceMargin time.Duration `yaml:"fence_margin"`
	QueueNew    bool          `yaml:"queue_new"` // while etcd is unreachable, queue new SAs instead of refusing them
	// CommitDelay: how long a change waits for others to share its etcd
	// transaction when none is under way (group commit; while one is, the
	// changes gather behind it anyway), only while changes come at one or
	// more per CommitDelay (statestore.BatchConfig.MaxDelay). Each
	// transaction costs the node CPU whatever its size: a longer delay
	// trades setup latency for CPU. Default (and 0):
	// statestore.DefaultMaxDelay.
	CommitDelay  time.Duration `yaml:"commit_delay"`
	EtcdLogLevel string        `yaml:"etcd_log_level"` // embedded etcd's logs into ours from this level: debug | info | warn | error
}

type NodeConfig struct {
	ID          string `yaml:"id"`
	MemoryLimit string `yaml:"memory_limit"` // soft limit of the Go heap, which the collector keeps under by working harder: auto (default: 90% of the memory limit of the node's cgroup, e.g. its container's; none without one; GOMEMLIMIT in the environment wins) | off | a size (1536MiB, 2GiB, bytes)
}

type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
	// PerEventRate bounds the lines a second of all per-packet events
	// together (drops, cookies, failed IKE_SA_INIT, ...); the rest are
	// counted per kind and reported as suppressed=K. 0: no limit.
	PerEventRate int `yaml:"per_event_rate"`
}

type IKEConfig struct {
	Listen          []string `yaml:"listen"`
	Port            int      `yaml:"port"`
	NATTPort        int      `yaml:"natt_port"`
	ForceEncap      *bool    `yaml:"force_encap"`
	Shards          int      `yaml:"shards"`
	CookieThreshold *int     `yaml:"cookie_threshold"`
	// CookieBacklog: new IKE_SA_INITs waiting in a shard's queue from
	// which on the shard demands cookies, whatever its number of half-open
	// SAs: each waiting request may cost a key exchange, and a genuine one
	// waits behind them all. 0 turns this trigger off (cookie_threshold
	// alone decides).
	CookieBacklog     *int          `yaml:"cookie_backlog"`
	HalfOpenTimeout   time.Duration `yaml:"half_open_timeout"`
	RetransmitTimeout time.Duration `yaml:"retransmit_timeout"`
	RetransmitTries   int           `yaml:"retransmit_tries"`
	Proposals         []string      `yaml:"proposals"`
	ESPProposals      []string      `yaml:"esp_proposals"`
	AllowWeak         bool          `yaml:"allow_weak"`
	FragmentSize      int           `yaml:"fragment_size"`
	DPDDelay          time.Duration `yaml:"dpd_delay"`
	MOBIKE            *bool         `yaml:"mobike"`
	KeepaliveInterval time.Duration `yaml:"keepalive_interval"`
	RekeyAfter        time.Duration `yaml:"rekey_after"`
	// SocketBuffer is the receive buffer of the IKE and NAT-T sockets in
	// bytes (every data plane): what a burst of gateways may queue while
	// the node works. Beyond net.core.rmem_max it needs CAP_NET_ADMIN
	// (SO_RCVBUFFORCE). A data plane's own socket_recv_buffer, if larger,
	// wins. 0 keeps the system default.
	SocketBuffer int `yaml:"socket_buffer"`
	// SocketReaders is how many goroutines read each UDP socket that
	// carries no user-space ESP; 0: half the CPUs the node may use
	// (GOMAXPROCS), 1 to 8 (socketReaders).
	SocketReaders int `yaml:"socket_readers"`
	// SplitSockets (default true) binds two sockets to each IKE and NAT-T
	// port, between which the kernel divides the datagrams
	// (transport.ListenSplit): new IKE_SA_INITs without a cookie to one,
	// everything else (established SAs, cookie-bearing requests, ESP) to
	// the other, so that a flood of the first kind fills its own receive
	// buffer and never the established SAs'. false: one socket per port.
	SplitSockets *bool `yaml:"split_sockets"`

	// Admission limits (node-wide; each shard gets its share).
	MaxMessageSize       int   `yaml:"max_message_size"`         // datagrams larger are dropped
	MaxInitMessageSize   int   `yaml:"max_init_message_size"`    // IKE_SA_INIT requests larger are dropped
	MaxHalfOpen          int   `yaml:"max_half_open"`            // half-open IKE SAs beyond which requests are dropped
	MaxHalfOpenPerPrefix int   `yaml:"max_half_open_per_prefix"` // cookie-proven half-open IKE SAs per source prefix, plus its credit (ike.CreditWindow)
	MaxHalfOpenBytes     int64 `yaml:"max_half_open_bytes"`      // memory kept by half-open IKE SAs
	HalfOpenPrefix4      int   `yaml:"half_open_prefix4"`        // prefix length grouping IPv4 sources
	HalfOpenPrefix6      int   `yaml:"half_open_prefix6"`        // prefix length grouping IPv6 sources
	MaxSAs               int   `yaml:"max_sas"`                  // IKE SAs in all; 0: no cap

	Resumption ResumptionConfig `yaml:"resumption"` // session resumption (RFC 5723; resumption.go)
}

type IdentityConfig struct {
	ID       string `yaml:"id"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	SendCert string `yaml:"send_cert"`
}

type AuthConfig struct {
	CAs  []string    `yaml:"cas"`
	CRLs []string    `yaml:"crls"`
	PSKs []PSKConfig `yaml:"psks"`
	// PubKeys are peers identified by a raw public key (RFC 7670).
	PubKeys []PubKeyConfig `yaml:"pubkeys"`
	// CredentialStore: per-device PSKs and raw public keys are also kept
	// in the state store (etcd), managed through the admin API
	// (concentratorctl creds) without restarts.
	CredentialStore bool `yaml:"credential_store"`
	// EAP: gateways that send no AUTH authenticate with EAP through RADIUS.
	EAP EAPConfig `yaml:"eap"`
	// Revocation of peer certificates beyond auth.crls: CRLs fetched from
	// distribution points, OCSP (config_revocation.go).
	Revocation RevocationConfig `yaml:"revocation"`
	// ClockSkew is the tolerance for certificate validity periods and for
	// CRL and OCSP update times.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// UniqueIDs: what a gateway's new IKE SA does about the older IKE SAs
	// of its identity, on any node (as strongSwan's uniqueids): replace
	// (the default), no, never or keep. docs/architecture.md, "Unique
	// identities".
	UniqueIDs string `yaml:"unique_ids"`
}

// PubKeyConfig is a peer identity and the file of its public key (PEM
// "PUBLIC KEY": a SubjectPublicKeyInfo).
type PubKeyConfig struct {
	ID      string `yaml:"id"`
	KeyFile string `yaml:"key_file"`
}

type PSKConfig struct {
	ID         string `yaml:"id"`
	Secret     string `yaml:"secret"`
	SecretHex  string `yaml:"secret_hex"`
	SecretFile string `yaml:"secret_file"`
}

type ChildrenConfig struct {
	RekeyAfter         time.Duration `yaml:"rekey_after"`
	RekeyWindow        time.Duration `yaml:"rekey_window"`
	RekeyOverlap       time.Duration `yaml:"rekey_overlap"`
	RestoreRekeyWindow time.Duration `yaml:"restore_rekey_window"` // deprecated, ignored: restored CHILD SAs keep their schedule
	MaxRekeysPerSec    int           `yaml:"max_rekeys_per_second"`
	MaxPerIKE          int           `yaml:"max_per_ike"`
	LocalTS            []string      `yaml:"local_ts"`
	RemoteTS           []string      `yaml:"remote_ts"`
	Pool               string        `yaml:"pool"`
	Pool6              string        `yaml:"pool6"` // virtual IPv6 addresses (ipv6.go)
	DNS                []string      `yaml:"dns"`
}

// DataPlaneConfig chooses the data plane. The default, auto, carries
// traffic on any Linux host: kernel ESP where the kernel can, else
// user-space ESP. memory carries nothing (tests, demos, load tests).
type DataPlaneConfig struct {
	Mode      string          `yaml:"mode"` // auto | xfrm | userspace | memory
	Userspace UserspaceConfig `yaml:"userspace"`
	XFRM      XFRMConfig      `yaml:"xfrm"`
}

// XFRMConfig configures the kernel ESP data plane (mode xfrm, or auto on a
// kernel with ESP).
type XFRMConfig struct {
	SocketRecvBuffer int   `yaml:"socket_recv_buffer"` // SO_RCVBUF of the IKE and NAT-T sockets, bytes; 0 = system default
	SocketSendBuffer int   `yaml:"socket_send_buffer"` // SO_SNDBUF, bytes; 0 = system default
	MSSClamp         bool  `yaml:"mss_clamp"`          // clamp TCP MSS of tunnel traffic (nftables)
	MSS              int   `yaml:"mss"`                // MSS for SYNs arriving from tunnels; 0 = 1360
	ReplayWindow     int   `yaml:"replay_window"`      // inbound anti-replay window with ESN, packets (non-ESN: 32)
	HThresh4         []int `yaml:"hthresh4"`           // SPD hash thresholds [local, remote] prefix bits
	UnknownSPIQueue  int   `yaml:"unknown_spi_queue"`  // NFQUEUE number of ESP for SAs other nodes hold (with a state store)
}

// UserspaceConfig configures the user-space ESP data plane (mode
// userspace, or auto on a kernel without ESP).
type UserspaceConfig struct {
	TUN          string `yaml:"tun"`           // TUN device name
	MTU          int    `yaml:"mtu"`           // inner MTU of the TUN device
	Workers      int    `yaml:"workers"`       // crypto workers; 0 = one per CPU
	QueueLen     int    `yaml:"queue_len"`     // packets waiting per worker before drops
	ReplayWindow int    `yaml:"replay_window"` // anti-replay window, packets

	SocketRecvBuffer int `yaml:"socket_recv_buffer"` // NAT-T socket SO_RCVBUF, bytes; 0 = system default
	SocketSendBuffer int `yaml:"socket_send_buffer"` // NAT-T socket SO_SNDBUF, bytes; 0 = system default
}

// DefaultSocketBuffer is ike.socket_buffer's default: room for about
// 10,000 IKE_SA_INITs of a mass reconnect.
const DefaultSocketBuffer = 8 << 20

// maxCommitDelay bounds statestore.commit_delay: the IKE_AUTH response of
// a new SA waits for its commit, and peers retransmit after about a
// second.
const maxCommitDelay = 100 * time.Millisecond

// DataPlaneModes are the accepted values of dataplane.mode.
var DataPlaneModes = []string{"memory", "userspace", "xfrm", "auto"}

// FieldError is a configuration error at a named field.
type FieldError struct {
	Field string // dotted path, e.g. auth.psks[2].secret
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// DefaultConfig is the configuration with no file: one node, PSK-less,
// listening on all addresses.
func DefaultConfig() Config {
	t := true
	th, backlog := 1000, defaultCookieBacklog
	return Config{
		Node: NodeConfig{MemoryLimit: "auto"},
		Log:  LogConfig{Level: "info", Format: "json", PerEventRate: 1},
		IKE: IKEConfig{
			Listen: []string{"0.0.0.0"}, Port: 500, NATTPort: 4500, ForceEncap: &t, MOBIKE: &t, SplitSockets: &t, CookieThreshold: &th, CookieBacklog: &backlog, SocketBuffer: DefaultSocketBuffer,
			HalfOpenTimeout: 30 * time.Second, RetransmitTimeout: 2 * time.Second, RetransmitTries: 5, DPDDelay: 60 * time.Second, KeepaliveInterval: 20 * time.Second,
			Proposals: []string{
				"aes256gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-ecp256",
				"chacha20poly1305-prfsha256-x25519", "aes256-sha256-modp2048",
			},
			ESPProposals:   []string{"aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes256-sha256"},
			MaxMessageSize: 65535, MaxInitMessageSize: 8192, MaxHalfOpen: 20000, MaxHalfOpenPerPrefix: 1024,
			MaxHalfOpenBytes: 128 << 20, HalfOpenPrefix4: 32, HalfOpenPrefix6: 64,
			Resumption: ResumptionConfig{TicketLifetime: 8 * time.Hour, KeyRotation: 4 * time.Hour},
		},
		Identity: IdentityConfig{SendCert: "always"},
		Auth:     AuthConfig{Revocation: DefaultRevocationConfig(), ClockSkew: DefaultClockSkew, UniqueIDs: "replace"},
		Children: ChildrenConfig{RekeyAfter: 50 * time.Minute, RekeyWindow: 10 * time.Minute, RekeyOverlap: 10 * time.Second, MaxPerIKE: 8},
		DataPlane: DataPlaneConfig{Mode: "auto", Userspace: UserspaceConfig{TUN: "ikf0", MTU: 1400, QueueLen: 1024, ReplayWindow: 1024, SocketRecvBuffer: 4 << 20},
			XFRM: XFRMConfig{MSSClamp: true, ReplayWindow: 128, HThresh4: []int{0, 32}, UnknownSPIQueue: 4500}},
		StateStore: StateStoreConfig{Mode: "embedded", DataDir: "ikefleet-data", LeaseTTL: statestore.DefaultLeaseTTL, CommitDelay: statestore.DefaultMaxDelay, EtcdLogLevel: "warn"},
		Metrics:    MetricsConfig{Listen: DefaultMetricsListen},
		Admin:      AdminConfig{Listen: DefaultAdminListen},
		Anycast:    lb.DefaultConfig(),
	}
}

// LoadConfig reads and validates a YAML configuration file. Unknown fields
// are errors; every error names its field.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	c, err := ParseConfig(data)
	if err != nil {
		return c, err
	}
	// Relative state paths are relative to the configuration file.
	base := filepath.Dir(path)
	for _, p := range []*string{&c.StateStore.DataDir, &c.StateStore.ClusterKeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return c, nil
}

var lineRE = regexp.MustCompile(`line (\d+): (.*)`)

// ParseConfig parses YAML over DefaultConfig and validates the result.
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			// Name the field: map yaml's line numbers back to key paths.
			if m := lineRE.FindStringSubmatch(te.Errors[0]); m != nil {
				line, _ := strconv.Atoi(m[1])
				if p := pathAtLine(&root, line); p != "" {
					msg := m[2]
					msg = strings.Replace(msg, " in type concentrator.", " in ", 1)
					return Config{}, &FieldError{Field: p, Err: errors.New(msg)}
				}
			}
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// pathAtLine returns the dotted key path of the YAML node at line.
func pathAtLine(n *yaml.Node, line int) string {
	var walk func(n *yaml.Node, path string) string
	walk = func(n *yaml.Node, path string) string {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if p := walk(c, path); p != "" {
					return p
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == line {
					return p
				}
				if r := walk(v, p); r != "" {
					return r
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && c.Kind == yaml.ScalarNode {
					return p
				}
				if r := walk(c, p); r != "" {
					return r
				}
			}
		}
		return ""
	}
	return walk(n, "")
}

// Validate checks every field; the error names the first bad one.
func (c *Config) Validate() error {
	if _, err := memlimit.Parse(c.Node.MemoryLimit); err != nil {
		return fieldErr("node.memory_limit", "%v", err)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fieldErr("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		return fieldErr("log.format", "must be json or text, not %q", c.Log.Format)
	}
	if c.Log.PerEventRate < 0 || c.Log.PerEventRate > 100000 {
		return fieldErr("log.per_event_rate", "must be 0 (no limit) to 100000 lines a second: %d", c.Log.PerEventRate)
	}
	if len(c.IKE.Listen) == 0 {
		return fieldErr("ike.listen", "needs at least one address")
	}
	for i, a := range c.IKE.Listen {
		if _, err := netip.ParseAddr(a); err != nil {
			return fieldErr(fmt.Sprintf("ike.listen[%d]", i), "not an IP address: %q", a)
		}
	}
	if c.IKE.Port < 0 || c.IKE.Port > 65535 {
		return fieldErr("ike.port", "out of range: %d", c.IKE.Port)
	}
	if c.IKE.NATTPort < 0 || c.IKE.NATTPort > 65535 || (c.IKE.NATTPort == c.IKE.Port && c.IKE.Port != 0) {
		// Port 0 (ephemeral) is for tests.
		return fieldErr("ike.natt_port", "must be a port other than ike.port: %d", c.IKE.NATTPort)
	}
	if c.IKE.SocketReaders < 0 || c.IKE.SocketReaders > 64 {
		return fieldErr("ike.socket_readers", "must be 0 (half the CPUs, 1 to 8) to 64: %d", c.IKE.SocketReaders)
	}
	if c.IKE.Shards < 0 || c.IKE.Shards > 256 {
		return fieldErr("ike.shards", "must be 0 (one per CPU) to 256: %d", c.IKE.Shards)
	}
	if c.IKE.SocketBuffer < 0 || c.IKE.SocketBuffer > 1<<30 {
		return fieldErr("ike.socket_buffer", "must be 0 (system default) to 1 GiB: %d", c.IKE.SocketBuffer)
	}
	if c.IKE.CookieThreshold != nil && *c.IKE.CookieThreshold < 0 {
		return fieldErr("ike.cookie_threshold", "must not be negative")
	}
	if c.IKE.CookieBacklog != nil && (*c.IKE.CookieBacklog < 0 || *c.IKE.CookieBacklog > initQueueLen) {
		return fieldErr("ike.cookie_backlog", "must be 0 (off) to %d (a shard's queue of new requests): %d", initQueueLen, *c.IKE.CookieBacklog)
	}
	if err := c.IKE.validateAdmission(); err != nil {
		return err
	}
	if c.IKE.HalfOpenTimeout <= 0 {
		return fieldErr("ike.half_open_timeout", "must be positive")
	}
	if c.IKE.RetransmitTimeout <= 0 {
		return fieldErr("ike.retransmit_timeout", "must be positive")
	}
	if c.IKE.RetransmitTries < 1 || c.IKE.RetransmitTries > 20 {
		return fieldErr("ike.retransmit_tries", "must be 1 to 20: %d", c.IKE.RetransmitTries)
	}
	if c.IKE.DPDDelay < 0 {
		return fieldErr("ike.dpd_delay", "must not be negative (0 disables liveness checks)")
	}
	if c.IKE.RekeyAfter < 0 || (c.IKE.RekeyAfter > 0 && c.IKE.RekeyAfter < time.Minute) {
		return fieldErr("ike.rekey_after", "must be 0 (the peers rekey) or at least 1m: %v", c.IKE.RekeyAfter)
	}
	if c.Children.RekeyAfter < 0 {
		return fieldErr("children.rekey_after", "must not be negative (0: the peers rekey)")
	}
	if c.Children.RekeyWindow < 0 || c.Children.RekeyWindow > c.Children.RekeyAfter {
		return fieldErr("children.rekey_window", "must be between 0 and children.rekey_after (%v): %v", c.Children.RekeyAfter, c.Children.RekeyWindow)
	}
	if c.IKE.KeepaliveInterval < 0 {
		return fieldErr("ike.keepalive_interval", "must not be negative (0 disables keepalives)")
	}
	if c.Children.RekeyOverlap < 0 || c.Children.RekeyOverlap > 5*time.Minute {
		return fieldErr("children.rekey_overlap", "must be 0 to 5m: %v", c.Children.RekeyOverlap)
	}
	if c.Children.MaxRekeysPerSec < 0 {
		return fieldErr("children.max_rekeys_per_second", "must not be negative (0: no cap)")
	}
	if c.Children.MaxPerIKE < 1 || c.Children.MaxPerIKE > 64 {
		return fieldErr("children.max_per_ike", "must be 1 to 64: %d", c.Children.MaxPerIKE)
	}
	if c.IKE.FragmentSize != 0 && (c.IKE.FragmentSize < 576 || c.IKE.FragmentSize > 65000) {
		return fieldErr("ike.fragment_size", "must be 576 to 65000: %d", c.IKE.FragmentSize)
	}
	if _, err := c.ikeProposals(); err != nil {
		return err
	}
	if _, err := c.espProposals(); err != nil {
		return err
	}
	if c.Identity.ID == "" {
		return fieldErr("identity.id", "required")
	}
	if _, err := parseIdentity(c.Identity.ID); err != nil {
		return fieldErr("identity.id", "%v", err)
	}
	if c.Identity.Cert != "" && c.Identity.Key == "" {
		return fieldErr("identity.key", "identity.cert and identity.key go together")
	}
	if c.Identity.Cert == "" && c.Identity.Key != "" && len(c.Auth.PubKeys) == 0 {
		return fieldErr("identity.key", "a key without identity.cert authenticates by raw public key: needs auth.pubkeys")
	}
	if _, ok := ike.ParseUniqueIDs(c.Auth.UniqueIDs); !ok {
		return fieldErr("auth.unique_ids", "must be replace, no, never or keep, not %q", c.Auth.UniqueIDs)
	}
	switch c.Identity.SendCert {
	case "always", "ifasked":
	default:
		return fieldErr("identity.send_cert", "must be always or ifasked, not %q", c.Identity.SendCert)
	}
	seen := map[string]bool{}
	for i, p := range c.Auth.PSKs {
		f := fmt.Sprintf("auth.psks[%d]", i)
		if p.ID == "" {
			return fieldErr(f+".id", "required")
		}
		id, err := parseIdentity(p.ID)
		if err != nil {
			return fieldErr(f+".id", "%v", err)
		}
		if seen[id.String()] {
			return fieldErr(f+".id", "duplicate identity %q", p.ID)
		}
		seen[id.String()] = true
		n := 0
		for _, s := range []string{p.Secret, p.SecretHex, p.SecretFile} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			return fieldErr(f+".secret", "exactly one of secret, secret_hex, secret_file is required")
		}
		if p.SecretFile == "" { // files are read with the other credentials (New, --check)
			s, err := p.secret()
			if err != nil {
				return fieldErr(f+".secret", "%v", err)
			}
			if err := checkPSKLength(s, c.IKE.AllowWeak); err != nil {
				return fieldErr(f+".secret", "%v", err)
			}
		}
	}
	if err := c.validatePubKeys(); err != nil {
		return err
	}
	if err := c.validateResumption(); err != nil {
		return err
	}
	if err := c.validateEAP(); err != nil {
		return err
	}
	if err := c.validateRevocation(); err != nil {
		return err
	}
	if c.Auth.CredentialStore && c.StateStore.Mode == "none" {
		return fieldErr("auth.credential_store", "needs a state store: statestore.mode embedded or external")
	}
	if c.Identity.Cert == "" && len(c.Auth.PSKs) == 0 && len(c.Auth.CAs) == 0 && len(c.Auth.PubKeys) == 0 && !c.Auth.EAP.enabled() && !c.Auth.CredentialStore {
		return fieldErr("auth", "no credentials at all: configure auth.psks, or identity.cert and identity.key with auth.cas, or auth.pubkeys, or auth.eap.radius, or auth.credential_store")
	}
	if c.Identity.Cert == "" && len(c.Auth.PSKs) == 0 && c.Identity.ID != "" && len(c.Auth.CAs) > 0 {
		return fieldErr("identity.cert", "auth.cas is set but we have no certificate to authenticate ourselves with")
	}
	if len(c.Children.LocalTS) == 0 {
		return fieldErr("children.local_ts", "needs at least one subnet")
	}
	for i, s := range c.Children.LocalTS {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fieldErr(fmt.Sprintf("children.local_ts[%d]", i), "not a subnet: %q", s)
		}
	}
	for i, s := range c.Children.RemoteTS {
		if _, err := netip.ParsePrefix(s); err != nil {
			return fieldErr(fmt.Sprintf("children.remote_ts[%d]", i), "not a subnet: %q", s)
		}
	}
	if len(c.Children.RemoteTS) == 0 && c.Children.Pool == "" && c.Children.Pool6 == "" && len(c.Policies) == 0 {
		return fieldErr("children.remote_ts", "needs at least one subnet (or set children.pool, children.pool6, or policies)")
	}
	if err := c.validatePool6(); err != nil {
		return err
	}
	if c.Children.Pool != "" {
		p, err := netip.ParsePrefix(c.Children.Pool)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
			return fieldErr("children.pool", "must be an IPv4 subnet of /30 or larger: %q", c.Children.Pool)
		}
	}
	for i, s := range c.Children.DNS {
		if _, err := netip.ParseAddr(s); err != nil {
			return fieldErr(fmt.Sprintf("children.dns[%d]", i), "not an IP address: %q", s)
		}
	}
	if err := c.validatePolicies(); err != nil {
		return err
	}
	if err := c.DataPlane.validate(); err != nil {
		return err
	}
	if err := c.Metrics.validate(); err != nil {
		return err
	}
	if err := c.Cluster.validate(c.StateStore.Mode); err != nil {
		return err
	}
	if err := c.Admin.validate(); err != nil {
		return err
	}
	if err := c.validateAnycast(); err != nil {
		return err
	}
	return c.StateStore.validate()
}

func (s *StateStoreConfig) validate() error {
	switch s.Mode {
	case "embedded":
		if s.DataDir == "" {
			return fieldErr("statestore.data_dir", "required with mode embedded")
		}
	case "external":
		if len(s.Endpoints) == 0 {
			return fieldErr("statestore.endpoints", "required with mode external")
		}
		if s.ClusterKeyFile == "" {
			return fieldErr("statestore.cluster_key_file", "required with mode external (every node needs the same key)")
		}
		if err := s.validateExternalTLS(); err != nil {
			return err
		}
	case "none":
	default:
		return fieldErr("statestore.mode", "must be embedded, external or none, not %q", s.Mode)
	}
	switch s.EtcdLogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fieldErr("statestore.etcd_log_level", "must be debug, info, warn or error, not %q", s.EtcdLogLevel)
	}
	if s.LeaseTTL < 2*time.Second || s.LeaseTTL%time.Second != 0 {
		return fieldErr("statestore.lease_ttl", "must be whole seconds, at least 2s: %v", s.LeaseTTL)
	}
	margin := cmp.Or(s.FenceMargin, s.LeaseTTL/5)
	if s.FenceMargin < 0 || margin >= s.LeaseTTL {
		return fieldErr("statestore.fence_margin", "must be more than 0 and less than lease_ttl (%v): %v", s.LeaseTTL, s.FenceMargin)
	}
	if ka := cmp.Or(s.KeepAlive, s.LeaseTTL/3); s.KeepAlive < 0 || ka >= s.LeaseTTL-margin {
		return fieldErr("statestore.keepalive_interval", "must be more than 0 and less than lease_ttl - fence_margin (%v): %v", s.LeaseTTL-margin, s.KeepAlive)
	}
	if s.CommitDelay < 0 || s.CommitDelay > maxCommitDelay {
		return fieldErr("statestore.commit_delay", "must be from 0 to %v: %v", maxCommitDelay, s.CommitDelay)
	}
	return nil
}

func (d *DataPlaneConfig) validate() error {
	switch d.Mode {
	case "memory", "userspace", "xfrm", "auto":
	default:
		return fieldErr("dataplane.mode", "must be one of %s, not %q", strings.Join(DataPlaneModes, ", "), d.Mode)
	}
	u := &d.Userspace
	if n := u.TUN; n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/:% \t\n") {
		return fieldErr("dataplane.userspace.tun", "must be an interface name of 1 to 15 characters without /, :, %% or spaces: %q", n)
	}
	if u.MTU < 576 || u.MTU > 9000 {
		return fieldErr("dataplane.userspace.mtu", "must be 576 to 9000 (1280 or more for IPv6 inside): %d", u.MTU)
	}
	if u.Workers < 0 || u.Workers > 256 {
		return fieldErr("dataplane.userspace.workers", "must be 0 (one per CPU) to 256: %d", u.Workers)
	}
	if u.QueueLen < 1 || u.QueueLen > 1<<16 {
		return fieldErr("dataplane.userspace.queue_len", "must be 1 to 65536: %d", u.QueueLen)
	}
	if u.ReplayWindow < 32 || u.ReplayWindow > 1<<16 {
		return fieldErr("dataplane.userspace.replay_window", "must be 32 to 65536 packets: %d", u.ReplayWindow)
	}
	if u.SocketRecvBuffer < 0 || u.SocketRecvBuffer > 1<<30 {
		return fieldErr("dataplane.userspace.socket_recv_buffer", "must be 0 (system default) to 1 GiB: %d", u.SocketRecvBuffer)
	}
	if u.SocketSendBuffer < 0 || u.SocketSendBuffer > 1<<30 {
		return fieldErr("dataplane.userspace.socket_send_buffer", "must be 0 (system default) to 1 GiB: %d", u.SocketSendBuffer)
	}
	return d.XFRM.validate()
}

func (x *XFRMConfig) validate() error {
	if x.SocketRecvBuffer < 0 || x.SocketRecvBuffer > 1<<30 {
		return fieldErr("dataplane.xfrm.socket_recv_buffer", "must be 0 (system default) to 1 GiB: %d", x.SocketRecvBuffer)
	}
	if x.SocketSendBuffer < 0 || x.SocketSendBuffer > 1<<30 {
		return fieldErr("dataplane.xfrm.socket_send_buffer", "must be 0 (system default) to 1 GiB: %d", x.SocketSendBuffer)
	}
	if x.MSS != 0 && (x.MSS < 536 || x.MSS > 9000) {
		return fieldErr("dataplane.xfrm.mss", "must be 0 (default 1360) or 536 to 9000: %d", x.MSS)
	}
	if x.ReplayWindow < 32 || x.ReplayWindow > 1<<16 {
		return fieldErr("dataplane.xfrm.replay_window", "must be 32 to 65536 packets: %d", x.ReplayWindow)
	}
	if len(x.HThresh4) != 2 || x.HThresh4[0] < 0 || x.HThresh4[0] > 32 || x.HThresh4[1] < 0 || x.HThresh4[1] > 32 {
		return fieldErr("dataplane.xfrm.hthresh4", "must be two prefix lengths [local, remote] of 0 to 32: %v", x.HThresh4)
	}
	if x.UnknownSPIQueue < 1 || x.UnknownSPIQueue > 65535 {
		return fieldErr("dataplane.xfrm.unknown_spi_queue", "must be an NFQUEUE number of 1 to 65535: %d", x.UnknownSPIQueue)
	}
	return nil
}

func (p PSKConfig) secret() ([]byte, error) {
	switch {
	case p.Secret != "":
		return []byte(p.Secret), nil
	case p.SecretHex != "":
		b, err := decodeHex(p.SecretHex)
		if err != nil {
			return nil, fmt.Errorf("secret_hex: %v", err)
		}
		return b, nil
	default:
		b, err := os.ReadFile(p.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("secret_file: %v", err)
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			return nil, fmt.Errorf("secret_file %s is empty", p.SecretFile)
		}
		return b, nil
	}
}
