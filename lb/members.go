package lb

// Membership by gossip (hashicorp/memberlist, SWIM): every node learns the
// others' peer API and unicast addresses, their load and health within a
// second or two, and notices a dead node before its etcd lease expires.
// It is advice only: the state store stays the authority on who owns an
// SA; membership picks redirect targets and feeds operators.

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/ikefleet/ikefleet/internal/secretfile"
)

// Meta is what a node gossips about itself.
type Meta struct {
	PeerAddr string  `json:"p,omitempty"` // its peer API (host:port)
	Unicast  string  `json:"u,omitempty"` // its own address, for redirects
	Healthy  bool    `json:"h"`
	Draining bool    `json:"d,omitempty"`
	SAs      int     `json:"s"`
	CPU      float64 `json:"c"` // cores busy (process CPU time per second)
}

// Member is one node of the membership.
type Member struct {
	Name  string
	Addr  string // gossip address
	Alive bool
	Self  bool
	Meta
}

// Members is this node's membership.
type Members struct {
	ml   *memberlist.Memberlist
	name string
	log  *slog.Logger

	mu      sync.Mutex
	meta    Meta
	sent    Meta
	sentAt  time.Time
	cpuAt   time.Time
	cpuUsed time.Duration
	closed  bool

	// view is the membership as memberlist's events reported it: copies
	// made in the callbacks, which run under memberlist's node lock. The
	// *memberlist.Node values that Members and LocalNode return point
	// into its state and are rewritten under that lock, so reading them
	// outside it is a data race.
	view *memberView
}

// memberView holds a copy of every member not known dead or gone, kept
// by the event delegate. Events do not report suspicion: a suspect member
// stays Alive here until it is declared dead (seconds later).
type memberView struct {
	mu    sync.Mutex
	nodes map[string]memberlist.Node
}

func (v *memberView) set(n *memberlist.Node) {
	c := *n
	c.Addr = slices.Clone(n.Addr)
	c.Meta = slices.Clone(n.Meta)
	v.mu.Lock()
	v.nodes[n.Name] = c
	v.mu.Unlock()
}

func (v *memberView) remove(name string) {
	v.mu.Lock()
	delete(v.nodes, name)
	v.mu.Unlock()
}

// metaDelegate hands memberlist our meta.
type metaDelegate struct{ m *Members }

func (d metaDelegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	b, _ := json.Marshal(d.m.meta)
	d.m.mu.Unlock()
	if len(b) > limit {
		return nil
	}
	return b
}
func (metaDelegate) NotifyMsg([]byte)                {}
func (metaDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (metaDelegate) LocalState(bool) []byte          { return nil }
func (metaDelegate) MergeRemoteState([]byte, bool)   {}

// NewMembers starts gossip on cfg.Listen as name (the node id) and joins
// through cfg.Join (members not reachable yet are not an error: they join
// us later).
func NewMembers(cfg MembersConfig, name string, self Meta, logger *slog.Logger) (*Members, error) {
	lp, err := hostPort(cfg.Listen, true)
	if err != nil {
		return nil, fieldErr("members.listen", "%v", err)
	}
	m := &Members{name: name, log: logger, meta: self, sent: self, cpuAt: time.Now(), cpuUsed: cpuTime(),
		view: &memberView{nodes: map[string]memberlist.Node{}}}
	c := memberlist.DefaultLANConfig()
	if lp.Addr().IsLoopback() {
		c = memberlist.DefaultLocalConfig()
	}
	c.Name = name
	c.BindAddr = lp.Addr().String()
	c.BindPort = int(lp.Port())
	if cfg.Advertise != "" {
		ap, err := hostPort(cfg.Advertise, false)
		if err != nil {
			return nil, fieldErr("members.advertise", "%v", err)
		}
		c.AdvertiseAddr, c.AdvertisePort = ap.Addr().String(), int(ap.Port())
	}
	if cfg.SecretKeyFile != "" {
		if err := secretfile.Check(cfg.SecretKeyFile); err != nil {
			return nil, fieldErr("members.secret_key_file", "%v", err)
		}
		raw, err := os.ReadFile(cfg.SecretKeyFile)
		if err != nil {
			return nil, fieldErr("members.secret_key_file", "%v", err)
		}
		key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
			return nil, fieldErr("members.secret_key_file", "must hold a hex AES key of 16, 24 or 32 bytes")
		}
		c.SecretKey = key
	}
	c.Delegate = metaDelegate{m}
	c.Events = &eventLog{log: logger, view: m.view}
	c.Logger = log.New(io.Discard, "", 0) // its own lines are noise; events are logged
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("members: %w", err)
	}
	m.ml = ml
	if len(cfg.Join) > 0 {
		if n, err := ml.Join(cfg.Join); err != nil {
			logger.Warn("members: join", "joined", n, "err", err)
		}
	}
	return m, nil
}

// Join contacts more members (host:port).
func (m *Members) Join(addrs []string) (int, error) { return m.ml.Join(addrs) }

// Addr is our gossip address.
func (m *Members) Addr() string {
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	n, ok := m.view.nodes[m.name]
	if !ok {
		return ""
	}
	return n.Address()
}

// SetLocal updates what we gossip (the front calls it every check). A
// change of health or draining is pushed at once; load at most every two
// seconds.
func (m *Members) SetLocal(meta Meta) {
	m.mu.Lock()
	now := time.Now()
	used := cpuTime()
	if d := now.Sub(m.cpuAt); d >= time.Second {
		m.meta.CPU = float64(used-m.cpuUsed) / float64(d)
		m.cpuAt, m.cpuUsed = now, used
	}
	m.meta.Healthy, m.meta.Draining, m.meta.SAs = meta.Healthy, meta.Draining, meta.SAs
	if meta.PeerAddr != "" {
		m.meta.PeerAddr = meta.PeerAddr
	}
	if meta.Unicast != "" {
		m.meta.Unicast = meta.Unicast
	}
	push := !m.closed && (m.meta.Healthy != m.sent.Healthy || m.meta.Draining != m.sent.Draining ||
		(m.meta != m.sent && now.Sub(m.sentAt) >= 2*time.Second))
	if push {
		m.sent, m.sentAt = m.meta, now
	}
	m.mu.Unlock()
	if push {
		if err := m.ml.UpdateNode(time.Second); err != nil {
			m.log.Debug("members: update not confirmed", "err", err)
		}
	}
}

// List returns the members, this node included, by name.
func (m *Members) List() []Member {
	var out []Member
	m.view.mu.Lock()
	for _, n := range m.view.nodes {
		mb := Member{Name: n.Name, Addr: n.Address(), Alive: n.State == memberlist.StateAlive, Self: n.Name == m.name}
		_ = json.Unmarshal(n.Meta, &mb.Meta)
		out = append(out, mb)
	}
	m.view.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RedirectTarget picks where to send a new gateway: the live, healthy,
// not draining other member with a unicast address and the fewest SAs.
func (m *Members) RedirectTarget() (netip.Addr, bool) {
	var best *Member
	ms := m.List()
	for i := range ms {
		c := &ms[i]
		if c.Self || !c.Alive || !c.Healthy || c.Draining || c.Unicast == "" {
			continue
		}
		if _, err := netip.ParseAddr(c.Unicast); err != nil {
			continue
		}
		if best == nil || c.SAs < best.SAs || (c.SAs == best.SAs && c.CPU < best.CPU) {
			best = c
		}
	}
	if best == nil {
		return netip.Addr{}, false
	}
	return netip.MustParseAddr(best.Unicast), true
}

// Close leaves the membership (the others learn at once) and stops.
func (m *Members) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	_ = m.ml.Leave(time.Second)
	return m.ml.Shutdown()
}

// eventLog logs joins, leaves and failures and keeps the view (memberlist
// calls it with its node lock held).
type eventLog struct {
	log  *slog.Logger
	view *memberView
}

func (e *eventLog) NotifyJoin(n *memberlist.Node) {
	e.view.set(n)
	e.log.Info("members: joined", "member", n.Name, "addr", n.Address())
}
func (e *eventLog) NotifyLeave(n *memberlist.Node) {
	e.view.remove(n.Name)
	e.log.Info("members: left or failed", "member", n.Name, "addr", n.Address())
}
func (e *eventLog) NotifyUpdate(n *memberlist.Node) { e.view.set(n) }

// cpuTime is the process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
