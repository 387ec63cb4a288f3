package concentrator

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"path/filepath"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/secretfile"
)

// perPacketKind says whether an engine event is one a flood can produce
// once per packet (drops, cookie demands, failed IKE_SA_INIT requests,
// half-open SAs of unauthenticated peers that fail or time out: a
// spoofing flood leaves up to ike.cookie_threshold of them every
// half_open_timeout), and under which kind it is rate-limited
// (log.per_event_rate).
func perPacketKind(ev ike.Event) (kind string, level slog.Level, ok bool) {
	switch ev.Kind {
	case ike.EventDropped:
		return "dropped", slog.LevelDebug, true
	case ike.EventCookieSent:
		return "cookie", slog.LevelInfo, true
	case ike.EventIKEFailed:
		if ev.SPIr == 0 { // IKE_SA_INIT answered with an error: unauthenticated
			return "init-failed/" + ev.Notify.String(), slog.LevelWarn, true
		}
		if ev.PeerID.IsZero() && !ev.Initiator { // a half-open SA nobody authenticated
			return "half-open-failed", slog.LevelWarn, true
		}
	}
	return "", 0, false
}

// flushSuppressed reports the suppressed per-packet lines of kinds gone
// quiet once a second, so a flood that stops is still accounted for (one
// that goes on reports them on its next line), and all of them at the end.
func (n *Node) flushSuppressed(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			n.plog.FlushAll(context.Background())
			return
		case <-t.C:
			n.plog.Flush(ctx)
		}
	}
}

func (c *IKEConfig) validateAdmission() error {
	switch {
	case c.MaxMessageSize < 1280 || c.MaxMessageSize > 65535:
		return fieldErr("ike.max_message_size", "must be 1280 to 65535: %d", c.MaxMessageSize)
	case c.MaxInitMessageSize < 1024 || c.MaxInitMessageSize > c.MaxMessageSize:
		return fieldErr("ike.max_init_message_size", "must be 1024 to ike.max_message_size: %d", c.MaxInitMessageSize)
	case c.MaxHalfOpen < 1:
		return fieldErr("ike.max_half_open", "must be positive: %d", c.MaxHalfOpen)
	case c.MaxHalfOpenPerPrefix < 1:
		return fieldErr("ike.max_half_open_per_prefix", "must be positive: %d", c.MaxHalfOpenPerPrefix)
	case c.MaxHalfOpenBytes < 1<<20:
		return fieldErr("ike.max_half_open_bytes", "must be at least 1 MiB: %d", c.MaxHalfOpenBytes)
	case c.HalfOpenPrefix4 < 8 || c.HalfOpenPrefix4 > 32:
		return fieldErr("ike.half_open_prefix4", "must be 8 to 32: %d", c.HalfOpenPrefix4)
	case c.HalfOpenPrefix6 < 16 || c.HalfOpenPrefix6 > 128:
		return fieldErr("ike.half_open_prefix6", "must be 16 to 128: %d", c.HalfOpenPrefix6)
	case c.MaxSAs < 0:
		return fieldErr("ike.max_sas", "must not be negative (0: no cap): %d", c.MaxSAs)
	}
	// One cookie-proven prefix filling its quota with requests of the
	// largest size must leave at least half of the half-open memory to
	// everyone else: else one address fills the cap and genuine gateways
	// wait for half_open_timeout.
	if worst := int64(c.MaxHalfOpenPerPrefix) * ike.HalfOpenWorstCost(c.MaxInitMessageSize); worst > c.MaxHalfOpenBytes/2 {
		return fieldErr("ike.max_half_open_per_prefix", "%d half-open SAs of up to %d bytes each (2 x ike.max_init_message_size + state) may hold %d bytes, more than half of ike.max_half_open_bytes (%d): one source prefix could fill it; lower the quota or the message size, or raise the memory",
			c.MaxHalfOpenPerPrefix, ike.HalfOpenWorstCost(c.MaxInitMessageSize), worst, c.MaxHalfOpenBytes)
	}
	return nil
}

// shareAdmission gives one of ns shards its share of the node-wide
// admission limits (new IKE_SA_INITs spread over shards by SPI).
func shareAdmission(sc *ike.Config, ns int) {
	share := func(v int) int {
		if v <= 0 {
			return v
		}
		return (v + ns - 1) / ns
	}
	sc.MaxHalfOpen = share(sc.MaxHalfOpen)
	sc.MaxHalfOpenPerPrefix = share(sc.MaxHalfOpenPerPrefix)
	sc.MaxSAs = share(sc.MaxSAs)
	if sc.MaxHalfOpenBytes > 0 {
		sc.MaxHalfOpenBytes = (sc.MaxHalfOpenBytes + int64(ns) - 1) / int64(ns)
	}
}

// MinPSKLength is the shortest pre-shared key accepted without
// ike.allow_weak: a PSK is open to offline guessing by anyone who sees one
// IKE_AUTH exchange (RFC 7296 §2.15).
const MinPSKLength = 16

func checkPSKLength(s []byte, allowWeak bool) error {
	if len(s) < MinPSKLength && !allowWeak {
		return fmt.Errorf("%d bytes is too short to resist offline guessing: at least %d (or set ike.allow_weak)", len(s), MinPSKLength)
	}
	return nil
}

// validateExternalTLS: a node talks to an external etcd with mutual TLS —
// the records hold sealed key material and the cluster's SA state, and the
// client certificate is what lets etcd refuse strangers. Plain http:// is
// accepted only when every endpoint is on this host: on loopback (an etcd
// on the same host, as tests and single-host clusters use) or a unix
// socket (unix:///path: another node's embedded member, which only its
// user may connect to); then the TLS files are optional.
func (s *StateStoreConfig) validateExternalTLS() error {
	plainLocal := true
	for i, ep := range s.Endpoints {
		field := fmt.Sprintf("statestore.endpoints[%d]", i)
		u, err := url.Parse(ep)
		if err != nil {
			return fieldErr(field, "not a URL (https://host:port): %q", ep)
		}
		switch u.Scheme {
		case "https":
			plainLocal = false
		case "http":
			if !isLoopbackHost(u.Hostname()) {
				return fieldErr(field, "plain http to a non-loopback etcd: use https:// (%q)", ep)
			}
		case "unix":
			if u.Host != "" || !filepath.IsAbs(u.Path) {
				return fieldErr(field, "a unix socket is unix:///absolute/path, not %q", ep)
			}
			continue
		default:
			return fieldErr(field, "scheme must be https (or http for loopback, unix for a socket): %q", ep)
		}
		if u.Host == "" {
			return fieldErr(field, "not a URL (https://host:port): %q", ep)
		}
	}
	if plainLocal {
		return nil
	}
	if s.CAFile == "" {
		return fieldErr("statestore.ca_file", "required with mode external over https (the etcd servers' CA)")
	}
	if s.CertFile == "" {
		return fieldErr("statestore.cert_file", "required with mode external over https (etcd client certificate)")
	}
	if s.KeyFile == "" {
		return fieldErr("statestore.key_file", "required with mode external over https (etcd client key)")
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// checkSecretFiles refuses, naming the field, any configured file of
// secrets the group or others may read, beyond those read with the
// credentials (identity.key, auth.psks[].secret_file) and the cluster
// key: the TLS keys of the admin API, the peer API and the etcd client,
// and the RADIUS servers' shared secrets. New runs it, so --check too.
func (c *Config) checkSecretFiles() error {
	type secretFile struct{ field, path string }
	files := []secretFile{{"admin.key_file", c.Admin.KeyFile}, {"cluster.key_file", c.Cluster.KeyFile}}
	if c.StateStore.Mode == "external" {
		files = append(files, secretFile{"statestore.key_file", c.StateStore.KeyFile})
	}
	for i, s := range c.Auth.EAP.RADIUS.Servers {
		files = append(files, secretFile{fmt.Sprintf("auth.eap.radius.servers[%d].secret_file", i), s.SecretFile})
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := checkPrivateKeyFile(f.field, f.path); err != nil {
			return err
		}
	}
	return nil
}

// InlineSecrets names the fields of c that hold a secret in the
// configuration file itself (a PSK, a RADIUS shared secret, a BGP TCP MD5
// password) rather than in a file of its own: the configuration file is
// then as secret as they are.
func (c *Config) InlineSecrets() []string {
	var out []string
	for i, p := range c.Auth.PSKs {
		if p.Secret != "" || p.SecretHex != "" {
			out = append(out, fmt.Sprintf("auth.psks[%d].secret", i))
		}
	}
	for i, s := range c.Auth.EAP.RADIUS.Servers {
		if s.Secret != "" {
			out = append(out, fmt.Sprintf("auth.eap.radius.servers[%d].secret", i))
		}
	}
	for i, nb := range c.Anycast.BGP.Neighbors {
		if nb.Password != "" {
			out = append(out, fmt.Sprintf("anycast.bgp.neighbors[%d].password", i))
		}
	}
	return out
}

// checkPrivateKeyFile refuses a private key (or cluster key, or PSK file)
// that the group or others may read: whoever reads it can impersonate the
// node or open every sealed record.
func checkPrivateKeyFile(field, path string) error {
	if err := secretfile.Check(path); err != nil {
		return fieldErr(field, "%v", err)
	}
	return nil
}
