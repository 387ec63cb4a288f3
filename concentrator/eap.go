package concentrator

// EAP via RADIUS: gateways that send no AUTH in IKE_AUTH authenticate with
// EAP, which the engine relays (ike/eap.go) and this file passes through
// to the RADIUS servers of auth.eap.radius, as strongSwan's eap-radius
// does. The EAP method (EAP-TLS, EAP-MSCHAPv2, PEAP, TTLS …) runs between
// the gateway and the RADIUS server; the node only carries the messages
// and takes the MSK from the Access-Accept.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/radius"
)

// EAPConfig is auth.eap.
type EAPConfig struct {
	// Identities that may authenticate with EAP (shell patterns over the
	// identity as written in the configuration, e.g. "*@iot.example");
	// empty: any identity.
	Identities []string        `yaml:"identities"`
	RADIUS     EAPRADIUSConfig `yaml:"radius"`
	MaxRounds  int             `yaml:"max_rounds"`
}

// EAPRADIUSConfig is auth.eap.radius.
type EAPRADIUSConfig struct {
	Servers       []RADIUSServerConfig `yaml:"servers"`
	Timeout       time.Duration        `yaml:"timeout"`
	Retries       int                  `yaml:"retries"`
	NASIdentifier string               `yaml:"nas_identifier"`
	// MaxPending bounds the EAP messages waiting for RADIUS at once;
	// beyond it a gateway's message is refused (TEMPORARY: it retries).
	MaxPending int `yaml:"max_pending"`
}

// RADIUSServerConfig is one of auth.eap.radius.servers.
type RADIUSServerConfig struct {
	Address    string `yaml:"address"`
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
}

// enabled reports whether EAP is configured.
func (c EAPConfig) enabled() bool { return len(c.RADIUS.Servers) > 0 }

func (c *Config) validateEAP() error {
	e := c.Auth.EAP
	for i, p := range e.Identities {
		if _, err := path.Match(p, ""); err != nil {
			return fieldErr(fmt.Sprintf("auth.eap.identities[%d]", i), "bad pattern %q: %v", p, err)
		}
	}
	if !e.enabled() {
		if len(e.Identities) > 0 {
			return fieldErr("auth.eap.radius.servers", "auth.eap.identities is set but no RADIUS server is configured")
		}
		return nil
	}
	if e.MaxRounds < 0 || e.MaxRounds > 1000 {
		return fieldErr("auth.eap.max_rounds", "must be 0 (default %d) to 1000: %d", ike.DefaultEAPMaxRounds, e.MaxRounds)
	}
	if e.RADIUS.Timeout < 0 || e.RADIUS.Timeout > time.Minute {
		return fieldErr("auth.eap.radius.timeout", "must be 0 (default 2s) to 1m: %s", e.RADIUS.Timeout)
	}
	if e.RADIUS.Retries < 0 || e.RADIUS.Retries > 10 {
		return fieldErr("auth.eap.radius.retries", "must be 0 (default 3) to 10: %d", e.RADIUS.Retries)
	}
	if e.RADIUS.MaxPending < 0 {
		return fieldErr("auth.eap.radius.max_pending", "must not be negative")
	}
	for i, s := range e.RADIUS.Servers {
		f := fmt.Sprintf("auth.eap.radius.servers[%d]", i)
		if s.Address == "" {
			return fieldErr(f+".address", "required (host:port, e.g. 10.0.0.5:1812)")
		}
		if (s.Secret == "") == (s.SecretFile == "") {
			return fieldErr(f+".secret", "set exactly one of secret and secret_file")
		}
		if s.Secret != "" && len(s.Secret) < 16 && !c.IKE.AllowWeak {
			return fieldErr(f+".secret", "a RADIUS shared secret of %d bytes is too short: use 16 or more (or ike.allow_weak)", len(s.Secret))
		}
	}
	if c.Identity.Cert == "" {
		return fieldErr("identity.cert", "EAP peers authenticate this node by its certificate: set identity.cert and identity.key")
	}
	return nil
}

// radiusServers resolves the servers' secrets (files are read here).
func (c EAPRADIUSConfig) radiusServers() ([]radius.Server, error) {
	var out []radius.Server
	for i, s := range c.Servers {
		secret := []byte(s.Secret)
		if s.SecretFile != "" {
			b, err := os.ReadFile(s.SecretFile)
			if err != nil {
				return nil, fieldErr(fmt.Sprintf("auth.eap.radius.servers[%d].secret_file", i), "%v", err)
			}
			if secret = bytes.TrimRight(b, "\r\n"); len(secret) == 0 {
				return nil, fieldErr(fmt.Sprintf("auth.eap.radius.servers[%d].secret_file", i), "%s is empty", s.SecretFile)
			}
		}
		out = append(out, radius.Server{Address: s.Address, Secret: secret})
	}
	return out, nil
}

// eapEngineConfig is the engine's EAP policy for auth.eap.
func (c *Config) eapEngineConfig() *ike.EAPConfig {
	if !c.Auth.EAP.enabled() {
		return nil
	}
	pats := c.Auth.EAP.Identities
	ec := &ike.EAPConfig{MaxRounds: c.Auth.EAP.MaxRounds}
	if len(pats) > 0 {
		ec.Allowed = func(id ike.Identity) bool {
			s := string(id.Data)
			for _, p := range pats {
				if ok, _ := path.Match(p, s); ok {
					return true
				}
			}
			return false
		}
	}
	return ec
}

// eapBackend passes the engine's EAP requests to RADIUS.
type eapBackend struct {
	cli     *radius.Client
	timeout time.Duration // for one message, all retries and servers
	nodeID  string
	pending chan struct{}

	mu        sync.Mutex
	sessions  map[uint64]*eapSession
	lastSweep time.Time
}

type eapSession struct {
	radius.Session
	used time.Time
}

// eapSessionIdle: a conversation idle this long is forgotten (its SA has
// long timed out half-open).
const eapSessionIdle = 2 * time.Minute

func newEAPBackend(cfg Config, nodeID string) (*eapBackend, error) {
	if !cfg.Auth.EAP.enabled() {
		return nil, nil
	}
	rc := cfg.Auth.EAP.RADIUS
	servers, err := rc.radiusServers()
	if err != nil {
		return nil, err
	}
	cli, err := radius.New(radius.Config{Servers: servers, Timeout: rc.Timeout, Retries: rc.Retries, NASIdentifier: cmp.Or(rc.NASIdentifier, nodeID)})
	if err != nil {
		return nil, fieldErr("auth.eap.radius.servers", "%v", err)
	}
	timeout, retries := cmp.Or(rc.Timeout, 2*time.Second), cmp.Or(rc.Retries, 3)
	maxPending := cmp.Or(rc.MaxPending, 4096)
	return &eapBackend{cli: cli, nodeID: nodeID, sessions: map[uint64]*eapSession{},
		timeout: timeout*time.Duration(retries*len(servers)) + time.Second,
		pending: make(chan struct{}, maxPending)}, nil
}

func (b *eapBackend) close() {
	if b != nil {
		b.cli.Close()
	}
}

// session returns the conversation of IKE SA spi, new if start.
func (b *eapBackend) session(r ike.EAPRequest, now time.Time) *eapSession {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.lastSweep) > eapSessionIdle/2 {
		for k, s := range b.sessions {
			if now.Sub(s.used) > eapSessionIdle {
				delete(b.sessions, k)
			}
		}
		b.lastSweep = now
	}
	s := b.sessions[r.SPI]
	if s == nil || r.Message == nil {
		s = &eapSession{Session: radius.Session{User: string(r.Peer.Data), CallingStationID: r.Remote.String(),
			NASPort: uint32(r.SPI)}}
		b.sessions[r.SPI] = s
	}
	s.used = now
	return s
}

func (b *eapBackend) forget(spi uint64) {
	b.mu.Lock()
	delete(b.sessions, spi)
	b.mu.Unlock()
}

// eapRequests starts the RADIUS exchanges of a batch of shard s; each
// answer goes back to s's engine.
func (n *Node) eapRequests(s *shard, reqs []ike.EAPRequest) {
	for _, r := range reqs {
		if n.eap == nil { // no backend: the engine has no EAP config either
			continue
		}
		select {
		case n.eap.pending <- struct{}{}:
		default:
			n.obs.eap("overload")
			go n.answerEAP(s, r, ike.EAPAnswer{Outcome: ike.EAPUnavailable, Reason: "too many EAP messages waiting for RADIUS"})
			continue
		}
		r.Message = bytes.Clone(r.Message)
		go func() {
			defer func() { <-n.eap.pending }()
			n.answerEAP(s, r, n.radiusEAP(r))
		}()
	}
}

// radiusEAP relays one message and turns the server's verdict into the
// engine's answer.
func (n *Node) radiusEAP(r ike.EAPRequest) ike.EAPAnswer {
	b := n.eap
	sess := b.session(r, time.Now())
	msg := r.Message
	if msg == nil {
		msg = radius.IdentityResponse(r.Peer.Data)
	}
	ctx, cancel := context.WithTimeout(n.runCtx, b.timeout)
	defer cancel()
	res, err := b.cli.EAP(ctx, &sess.Session, msg)
	if err != nil {
		b.forget(r.SPI)
		n.obs.eap("unavailable")
		n.plog.Log(context.Background(), slog.LevelWarn, "eap", "RADIUS did not answer", "peer", r.Peer.String(), "remote", r.Remote.String(), "err", err)
		if errors.Is(err, context.Canceled) {
			return ike.EAPAnswer{Outcome: ike.EAPUnavailable, Reason: "node stopping"}
		}
		return ike.EAPAnswer{Outcome: ike.EAPUnavailable, Reason: "RADIUS: " + err.Error()}
	}
	switch res.Code {
	case radius.CodeAccessChallenge:
		n.obs.eap("challenge")
		return ike.EAPAnswer{Outcome: ike.EAPContinue, Message: res.EAP}
	case radius.CodeAccessAccept:
		b.forget(r.SPI)
		n.obs.eap("accept")
		return ike.EAPAnswer{Outcome: ike.EAPAccept, Message: res.EAP, MSK: res.MSK}
	default:
		b.forget(r.SPI)
		n.obs.eap("reject")
		reason := "RADIUS Access-Reject"
		if res.Reason != "" {
			reason += ": " + res.Reason
		}
		return ike.EAPAnswer{Outcome: ike.EAPReject, Message: res.EAP, Reason: reason}
	}
}

// answerEAP hands an answer to the engine on shard s's goroutine.
func (n *Node) answerEAP(s *shard, r ike.EAPRequest, ans ike.EAPAnswer) {
	n.do(n.runCtx, s, func() {
		var rd ike.Ready
		if !s.eng.EAPAnswer(n.clock.Mono(), r.SPI, r.Round, ans, &rd) {
			n.eap.forget(r.SPI)
			return
		}
		n.perform(n.runCtx, s, &rd)
	})
}
