package concentrator

// Operator actions on a running node, for the admin API: SA listings with
// traffic counters, terminate, rekey, drain, credential reload, and a feed
// of SA events. Everything that touches an engine runs on its shard's
// goroutine (Node.do).

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/statestore"
)

// Errors of operator actions.
var (
	ErrNoSA           = errors.New("no such IKE SA on this node")
	ErrNoChild        = errors.New("no such CHILD SA")
	ErrNotEstablished = errors.New("IKE SA is not established")
	// ErrBusy: the SA has an exchange under way (one at a time, RFC 7296
	// §2.3); try again in a moment.
	ErrBusy = errors.New("IKE SA has an exchange under way")
	// ErrAmbiguousChild: a rekey named no CHILD SA and the IKE SA has
	// several.
	ErrAmbiguousChild = errors.New("IKE SA has several CHILD SAs: name one")
)

// ops is the node's state for operator actions.
type ops struct {
	draining   atomic.Bool
	drainDrop  atomic.Bool   // draining: drop IKE_SA_INIT instead of answering TEMPORARY_FAILURE
	refused    atomic.Uint64 // IKE_SA_INITs refused while draining (since start)
	drainStart atomic.Uint64 // refused when the current drain began

	feed eventFeed

	reloadMu sync.Mutex
	loader   func() (Config, error)
}

// ID is the node's id (node.id, or the host name).
func (n *Node) ID() string { return n.nodeID }

// Shards is the number of engine shards.
func (n *Node) Shards() int { return len(n.shards) }

// StateStoreMode is statestore.mode: embedded, external or none.
func (n *Node) StateStoreMode() string { return n.cfg.StateStore.Mode }

// ---- SA views ----

// ChildView is a CHILD SA as operators see it: no keys.
type ChildView struct {
	InSPI, OutSPI     uint32
	Proposal          string
	LocalTS, RemoteTS []string
	VirtualIP         netip.Addr
	Encap             bool
	Created           time.Time
	RekeyAt           time.Time // zero: the peer rekeys it
	Counters          *dataplane.Counters
}

// SAView is an IKE SA as operators see it.
type SAView struct {
	SPI         uint64 // ours
	SPIi, SPIr  uint64
	State       string
	Initiator   bool
	Local       netip.AddrPort
	Remote      netip.AddrPort
	PeerID      string
	Policy      string // the policy the peer was matched to
	Proposal    string
	VirtualIP   netip.Addr
	Created     time.Time // GetSA only (established SAs)
	Established time.Time
	Children    []ChildView
}

// wallOffset converts the node's monotonic-derived times (the engine's)
// to wall dates for display: wall = mono + offset.
func (n *Node) wallOffset() time.Duration { return n.clock.Now().Sub(n.clock.Mono()) }

// wallOf is t, a monotonic-derived time, as a wall date (zero stays zero).
func wallOf(t time.Time, off time.Duration) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(off)
}

// childView describes c; off is the node's wallOffset.
func childView(c *ike.ChildSA, off time.Duration) ChildView {
	v := ChildView{InSPI: c.InSPI, OutSPI: c.OutSPI, Proposal: c.Proposal.String(), VirtualIP: c.VirtualIP,
		Encap: c.Encap, Created: wallOf(c.Created, off), RekeyAt: wallOf(c.RekeyAt(), off)}
	for _, t := range c.LocalTS {
		v.LocalTS = append(v.LocalTS, t.String())
	}
	for _, t := range c.RemoteTS {
		v.RemoteTS = append(v.RemoteTS, t.String())
	}
	return v
}

func ourSPI(sa *ike.IKESA) uint64 {
	if sa.IsInitiator() {
		return sa.SPIi
	}
	return sa.SPIr
}

// saView describes sa; off is the node's wallOffset.
func saView(sa *ike.IKESA, off time.Duration) SAView {
	v := SAView{SPI: ourSPI(sa), SPIi: sa.SPIi, SPIr: sa.SPIr, State: sa.State(), Initiator: sa.IsInitiator(),
		Local: sa.Local, Remote: sa.Remote, PeerID: sa.PeerID.String(), Policy: sa.PolicyName(), Established: wallOf(sa.EstablishedAt(), off)}
	if sa.PeerID.IsZero() {
		v.PeerID = ""
	}
	if p := sa.Proposal(); p != nil {
		v.Proposal = p.String()
	}
	for _, c := range sa.Children() {
		v.Children = append(v.Children, childView(c, off))
		if !v.VirtualIP.IsValid() && c.VirtualIP.IsValid() {
			v.VirtualIP = c.VirtualIP
		}
	}
	return v
}

// ListSAs returns every IKE SA of this node that match accepts (nil: all),
// ordered by our SPI. match runs on the shard goroutines.
func (n *Node) ListSAs(ctx context.Context, match func(*SAView) bool) ([]SAView, error) {
	var out []SAView
	for _, s := range n.shards {
		err := n.do(ctx, s, func() {
			seen := map[*ike.IKESA]bool{} // an SA being rekeyed holds its successor's SPI too
			off := n.wallOffset()
			s.eng.Each(func(sa *ike.IKESA) bool {
				if seen[sa] {
					return true
				}
				seen[sa] = true
				v := saView(sa, off)
				if match == nil || match(&v) {
					out = append(out, v)
				}
				return true
			})
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SPI < out[j].SPI })
	return out, nil
}

// findSA runs f on the shard goroutine holding the IKE SA named by spi
// (our SPI, or else the peer's). f gets nil if there is none.
func (n *Node) findSA(ctx context.Context, spi uint64, f func(s *shard, sa *ike.IKESA)) error {
	if s := n.shardOfSPI(spi); s != nil {
		found := false
		err := n.do(ctx, s, func() {
			if sa := s.eng.SA(spi); sa != nil && ourSPI(sa) == spi {
				found = true
				f(s, sa)
			}
		})
		if err != nil || found {
			return err
		}
	}
	for _, s := range n.shards {
		found := false
		err := n.do(ctx, s, func() {
			s.eng.Each(func(sa *ike.IKESA) bool {
				if sa.SPIi == spi || sa.SPIr == spi {
					found = true
					f(s, sa)
					return false
				}
				return true
			})
		})
		if err != nil || found {
			return err
		}
	}
	f(nil, nil)
	return nil
}

// GetSA returns one IKE SA (named by our SPI or the peer's) with its CHILD
// SAs' traffic counters from the data plane.
func (n *Node) GetSA(ctx context.Context, spi uint64) (SAView, error) {
	var v SAView
	var ok bool
	err := n.findSA(ctx, spi, func(_ *shard, sa *ike.IKESA) {
		if sa == nil {
			return
		}
		ok = true
		v = saView(sa, n.wallOffset())
		if st, err := sa.Snapshot(); err == nil {
			v.Created = st.Created
			if st.VirtualIP.IsValid() {
				v.VirtualIP = st.VirtualIP
			}
		}
	})
	if err != nil {
		return v, err
	}
	if !ok {
		return v, fmt.Errorf("%w: %016x", ErrNoSA, spi)
	}
	n.addCounters(ctx, v.Children)
	return v, nil
}

// addCounters fills in the data plane's counters of the CHILD SAs.
func (n *Node) addCounters(ctx context.Context, cs []ChildView) {
	if len(cs) == 0 {
		return
	}
	if sc, ok := n.dp.(dataplane.SACounter); ok {
		for i := range cs {
			if c, err := sc.Counter(ctx, cs[i].InSPI); err == nil {
				cs[i].Counters = &c
			}
		}
		return
	}
	all, err := n.dp.Counters(ctx)
	if err != nil {
		return
	}
	by := make(map[uint32]dataplane.Counters, len(all))
	for _, c := range all {
		by[c.InSPI] = c
	}
	for i := range cs {
		if c, ok := by[cs[i].InSPI]; ok {
			cs[i].Counters = &c
		}
	}
}

// HasSA reports whether an IKE SA with our SPI spi is in the tables.
func (n *Node) HasSA(ctx context.Context, spi uint64) (bool, error) {
	s := n.shardOfSPI(spi)
	if s == nil {
		return false, nil
	}
	var ok bool
	err := n.do(ctx, s, func() { ok = s.eng.SA(spi) != nil })
	return ok, err
}

// ---- terminate and rekey ----

// Terminate starts deleting the IKE SA with our SPI spi: an INFORMATIONAL
// Delete to the peer; the SA goes when the peer answers or the request
// times out (at once if it was not established).
func (n *Node) Terminate(ctx context.Context, spi uint64) error {
	s := n.shardOfSPI(spi)
	if s == nil {
		return fmt.Errorf("%w: %016x", ErrNoSA, spi)
	}
	found := false
	err := n.do(ctx, s, func() {
		if s.eng.SA(spi) == nil {
			return
		}
		found = true
		var rd ike.Ready
		s.eng.Delete(n.clock.Mono(), spi, &rd)
		n.perform(ctx, s, &rd)
	})
	if err == nil && !found {
		err = fmt.Errorf("%w: %016x", ErrNoSA, spi)
	}
	return err
}

// RekeyChild starts rekeying the CHILD SA with inbound SPI inSPI of the IKE
// SA with our SPI spi; inSPI 0 names the IKE SA's only CHILD SA. It returns
// the inbound SPI of the CHILD SA being rekeyed.
func (n *Node) RekeyChild(ctx context.Context, spi uint64, inSPI uint32) (uint32, error) {
	var rerr error
	err := n.findSA(ctx, spi, func(s *shard, sa *ike.IKESA) {
		switch {
		case sa == nil:
			rerr = fmt.Errorf("%w: %016x", ErrNoSA, spi)
			return
		case !sa.Established():
			rerr = fmt.Errorf("%w: %016x is %s", ErrNotEstablished, spi, sa.State())
			return
		}
		var live []*ike.ChildSA
		for _, c := range sa.Children() {
			if inSPI == 0 || c.InSPI == inSPI {
				live = append(live, c)
			}
		}
		switch {
		case len(live) == 0 && inSPI == 0:
			rerr = fmt.Errorf("%w: IKE SA %016x has none", ErrNoChild, spi)
			return
		case len(live) == 0:
			rerr = fmt.Errorf("%w: %08x in IKE SA %016x", ErrNoChild, inSPI, spi)
			return
		case len(live) > 1:
			rerr = fmt.Errorf("%w (%d)", ErrAmbiguousChild, len(live))
			return
		}
		inSPI = live[0].InSPI
		var rd ike.Ready
		s.eng.RekeyChild(n.clock.Mono(), ourSPI(sa), inSPI, &rd)
		started := len(rd.Send) > 0 // the CREATE_CHILD_SA request
		n.perform(ctx, s, &rd)
		if !started {
			rerr = fmt.Errorf("%w: %016x (or CHILD SA %08x is already replaced)", ErrBusy, spi, inSPI)
		}
	})
	if err != nil {
		return 0, err
	}
	return inSPI, rerr
}

// RekeyIKE starts rekeying the IKE SA with our SPI spi.
func (n *Node) RekeyIKE(ctx context.Context, spi uint64) error {
	var rerr error
	err := n.findSA(ctx, spi, func(s *shard, sa *ike.IKESA) {
		switch {
		case sa == nil:
			rerr = fmt.Errorf("%w: %016x", ErrNoSA, spi)
		case !sa.Established():
			rerr = fmt.Errorf("%w: %016x is %s", ErrNotEstablished, spi, sa.State())
		default:
			var rd ike.Ready
			s.eng.RekeyIKE(n.clock.Mono(), ourSPI(sa), &rd)
			started := len(rd.Send) > 0
			n.perform(ctx, s, &rd)
			if !started {
				rerr = fmt.Errorf("%w: %016x", ErrBusy, spi)
			}
		}
	})
	if err != nil {
		return err
	}
	return rerr
}

// ---- drain ----

// Drain makes the node refuse new IKE SAs: IKE_SA_INIT requests are
// answered with TEMPORARY_FAILURE, or dropped if drop is set. Established
// SAs stay. It lasts until Resume.
func (n *Node) Drain(drop bool) {
	n.ops.drainDrop.Store(drop)
	n.SetDraining(true) // /readyz fails: load balancers send new peers elsewhere
	if !n.ops.draining.Swap(true) {
		n.ops.drainStart.Store(n.ops.refused.Load())
		n.log.Info("draining: new IKE SAs refused", "node", n.nodeID, "drop", drop)
	}
	n.kickFront() // the anycast route goes (anycast.go)
}

// Resume ends a drain.
func (n *Node) Resume() {
	n.SetDraining(false)
	if n.ops.draining.Swap(false) {
		n.log.Info("drain ended: new IKE SAs accepted", "node", n.nodeID)
	}
	n.kickFront()
}

// Draining reports whether the node refuses new IKE SAs.
func (n *Node) Draining() bool { return n.ops.draining.Load() }

// RefusedWhileDraining is the number of IKE_SA_INITs refused since the
// current (or last) drain began, and since the node started.
func (n *Node) RefusedWhileDraining() (drain, total uint64) {
	t := n.ops.refused.Load()
	return t - n.ops.drainStart.Load(), t
}

// FlushState waits until every state change submitted so far is in the
// state store (nothing to do without one). It returns the changes that
// were queued when it started.
func (n *Node) FlushState(ctx context.Context) (queued int, err error) {
	if n.persist == nil {
		return 0, nil
	}
	queued = n.persist.store.Health().Queued
	return queued, n.persist.store.Flush(ctx)
}

// refuseInit answers or drops an IKE_SA_INIT request while the node
// drains (from the socket loop: b is the IKE message without the non-ESP
// marker). It reports whether the message was such a request.
func (n *Node) refuseInit(c transport.Conn, natt bool, b []byte, remote netip.AddrPort) bool {
	h, err := ike.DecodeHeader(b)
	if err != nil || (h.Exchange != ike.IKE_SA_INIT && h.Exchange != ike.IKE_SESSION_RESUME) || h.SPIr != 0 || h.Flags&ike.FlagInitiator == 0 ||
		h.Flags&ike.FlagResponse != 0 || h.MessageID != 0 {
		return false
	}
	n.ops.refused.Add(1)
	if n.ops.drainDrop.Load() {
		return true
	}
	resp := ike.Message{SPIi: h.SPIi, Exchange: h.Exchange, Flags: ike.FlagResponse,
		Payloads: []ike.Payload{&ike.Notify{NotifyType: ike.TEMPORARY_FAILURE}}}
	m := resp.Encode()
	if natt {
		m = append([]byte{0, 0, 0, 0}, m...)
	}
	if err := c.WriteTo(m, remote); err != nil {
		n.log.Debug("TEMPORARY_FAILURE not sent", "remote", remote.String(), "err", err)
	}
	return true
}

// ---- cluster ----

// ClusterNodes lists the live registrations of the state store; nil
// without one.
func (n *Node) ClusterNodes(ctx context.Context) ([]statestore.NodeInfo, error) {
	if n.persist == nil {
		return nil, nil
	}
	return n.persist.store.Nodes(ctx)
}

// ClusterKeys are the cluster keys the node holds and the one it seals
// records under; ok is false without a state store.
func (n *Node) ClusterKeys() (held []uint32, sealing uint32, ok bool) {
	if n.persist == nil || n.persist.keys == nil {
		return nil, 0, false
	}
	return n.persist.keys.IDs(), n.persist.keys.Current(), true
}

// OwnedSAs counts the IKE SAs the state store gives each node id.
func (n *Node) OwnedSAs(ctx context.Context) (map[string]int64, error) {
	if n.persist == nil {
		return nil, errors.New("no state store")
	}
	return n.persist.store.OwnedCounts(ctx)
}

// ---- credentials ----

// SetConfigLoader sets how ReloadCredentials reads the configuration
// (concentratord: the configuration file again). Without one it re-reads
// the files the current configuration names.
func (n *Node) SetConfigLoader(f func() (Config, error)) {
	n.ops.reloadMu.Lock()
	n.ops.loader = f
	n.ops.reloadMu.Unlock()
}

// ReloadResult says what a credential reload loaded and changed.
type ReloadResult struct {
	PSKs, CAs, CRLs                     int
	PSKsAdded, PSKsRemoved, PSKsChanged int
	Identity                            string
	Certificate                         bool
	NotAfter                            time.Time // of our certificate
	Changed                             []string  // psks, cas, crls, identity, certificate, cluster_keys
	Ignored                             []string  // other sections that changed: they need a restart
	// The cluster keys held after the reload (statestore.cluster_key_file
	// is read again) and the one records are sealed under: the newest
	// every live node holds. Empty without a state store.
	ClusterKeys []uint32
	SealingKey  uint32
}

// ReloadCredentials re-reads the identity and auth sections (PSKs, CA
// certificates, CRLs, our certificate and key, and the files they name)
// and the cluster key file, and gives them to every shard and the state
// store. SAs already established keep running;
// new authentications use the new credentials. On error nothing changes;
// the error names the field.
func (n *Node) ReloadCredentials(ctx context.Context) (ReloadResult, error) {
	n.ops.reloadMu.Lock()
	defer n.ops.reloadMu.Unlock()
	var res ReloadResult
	cfg := n.cfg
	if n.ops.loader != nil {
		c, err := n.ops.loader()
		if err != nil {
			return res, err
		}
		res.Ignored = changedSections(n.cfg, c)
		cfg.Identity, cfg.Auth = c.Identity, c.Auth
	}
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	ec, err := cfg.engineConfig()
	if err != nil {
		return res, err
	}
	n.withCredentialStore(&ec)
	clusterKeys, err := n.reloadClusterKeys()
	if err != nil {
		return res, err
	}
	if n.rev != nil {
		n.rev.setPolicy(&cfg)
		if ec.Verifier != nil && n.rev.policy().online() {
			ec.Verifier.Online = n.rev
		}
	}
	old := n.ecfg
	for _, s := range n.shards {
		if err := n.do(ctx, s, func() {
			// Between two calls into the engine, on its own goroutine.
			c := s.eng.Config()
			c.Local, c.PSKs, c.Verifier, c.CertReq = ec.Local, ec.PSKs, ec.Verifier, ec.CertReq
			c.PublicKeys = ec.PublicKeys
		}); err != nil {
			return res, err // Run has stopped: nothing serves with either
		}
	}
	n.ecfg.Local, n.ecfg.PSKs, n.ecfg.Verifier, n.ecfg.CertReq = ec.Local, ec.PSKs, ec.Verifier, ec.CertReq
	n.ecfg.PublicKeys = ec.PublicKeys
	n.cfg.Identity, n.cfg.Auth = cfg.Identity, cfg.Auth

	res.Identity = ec.Local.ID.String()
	res.CAs, res.CRLs = len(ec.CertReq)/20, 0
	if ec.Verifier != nil {
		res.CRLs = len(ec.Verifier.CRLs)
	}
	if len(ec.Local.Chain) > 0 {
		res.Certificate = true
		if c, err := x509.ParseCertificate(ec.Local.Chain[0]); err == nil {
			res.NotAfter = c.NotAfter
		}
	}
	oldPSK, _ := old.PSKs.(ike.PSKMap)
	newPSK, _ := ec.PSKs.(ike.PSKMap)
	res.PSKs = len(newPSK)
	for id, k := range newPSK {
		if o, ok := oldPSK[id]; !ok {
			res.PSKsAdded++
		} else if string(o) != string(k) {
			res.PSKsChanged++
		}
	}
	for id := range oldPSK {
		if _, ok := newPSK[id]; !ok {
			res.PSKsRemoved++
		}
	}
	if res.PSKsAdded+res.PSKsRemoved+res.PSKsChanged > 0 {
		res.Changed = append(res.Changed, "psks")
	}
	if string(old.CertReq) != string(ec.CertReq) {
		res.Changed = append(res.Changed, "cas")
	}
	if crlsOf(old.Verifier) != crlsOf(ec.Verifier) {
		res.Changed = append(res.Changed, "crls")
	}
	if old.Local.ID.String() != ec.Local.ID.String() {
		res.Changed = append(res.Changed, "identity")
	}
	if !reflect.DeepEqual(old.Local.Chain, ec.Local.Chain) {
		res.Changed = append(res.Changed, "certificate")
	}
	n.applyClusterKeys(ctx, clusterKeys, &res)
	n.log.Info("credentials reloaded", "node", n.nodeID, "psks", res.PSKs, "psks_added", res.PSKsAdded,
		"psks_removed", res.PSKsRemoved, "psks_changed", res.PSKsChanged, "cas", res.CAs, "crls", res.CRLs,
		"cluster_keys", fmt.Sprint(res.ClusterKeys), "sealing_key", res.SealingKey,
		"changed", strings.Join(res.Changed, ","), "needs_restart", strings.Join(res.Ignored, ","))
	return res, nil
}

// crlsOf identifies a verifier's CRLs by their bytes.
func crlsOf(v *sig.Verifier) string {
	if v == nil {
		return ""
	}
	var b strings.Builder
	for _, c := range v.CRLs {
		b.Write(c.Raw)
	}
	return b.String()
}

// changedSections names the top-level sections other than identity and
// auth that differ between a and b (by their YAML names).
func changedSections(a, b Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	t := va.Type()
	for i := 0; i < t.NumField(); i++ {
		name := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if name == "identity" || name == "auth" || name == "" {
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}

// SACounts counts the node's SAs.
type SACounts struct {
	IKE         int // IKE SAs in the tables, any state
	Established int
	Children    int
}

// CountSAs counts the node's SAs without copying them.
func (n *Node) CountSAs(ctx context.Context) (SACounts, error) {
	var c SACounts
	for _, s := range n.shards {
		err := n.do(ctx, s, func() {
			seen := map[*ike.IKESA]bool{}
			s.eng.Each(func(sa *ike.IKESA) bool {
				if !seen[sa] {
					seen[sa] = true
					c.IKE++
					if sa.Established() {
						c.Established++
					}
					c.Children += len(sa.Children())
				}
				return true
			})
		})
		if err != nil {
			return c, err
		}
	}
	return c, nil
}
