package concentrator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The node's persistence (DESIGN.md "Cluster semantics"): every state
// change of an established SA goes to the state store; at start the node
// registers (slot, epoch), puts its slot into the SPIs it allocates, and
// restores the SAs it owns, so they survive a crash without
// re-authentication.

const (
	slotBits  = 12 // IKE SPI bits 52..63 carry the node's slot
	slotShift = 64 - slotBits
	slotMask  = uint64(1<<slotBits-1) << slotShift
)

// SPI pools: each shard keeps SPIs reserved in the state store ahead of
// need, refilled when half empty.
const (
	spiPoolLen        = 256
	spiRefillInterval = 100 * time.Millisecond
)

// refillSPIs tops up every shard's pools with SPIs reserved cluster-wide
// (create-if-absent): IKE SPIs carry our slot and the shard, inbound ESP
// SPIs the shard.
func (n *Node) refillSPIs(ctx context.Context) {
	if n.persist == nil || !n.persist.store.CanSend() {
		return
	}
	_, slot := n.persist.store.Registration()
	var b [8]byte
	for i, s := range n.shards {
		if want := spiPoolLen - len(s.ikeSPIs); want >= spiPoolLen/2 {
			cand := make([]uint64, want)
			for k := range cand {
				rand.Read(b[:])
				r := binary.BigEndian.Uint64(b[:])&^(slotMask|spiShardMask) | uint64(i)<<spiShardShift
				cand[k] = uint64(slot)<<slotShift | r
			}
			ok, err := n.persist.store.ReserveIKESPIs(ctx, cand)
			if err != nil {
				n.log.Debug("IKE SPI reservation failed", "err", err)
				return
			}
			for k, got := range ok {
				if got {
					select {
					case s.ikeSPIs <- cand[k]:
					default:
					}
				}
			}
		}
		if want := spiPoolLen - len(s.espSPIs); want >= spiPoolLen/2 {
			cand := make([]uint32, 0, want)
			for len(cand) < want {
				rand.Read(b[:4])
				spi := binary.BigEndian.Uint32(b[:4])
				if n.espBits > 0 {
					spi = spi&^(uint32(1<<n.espBits-1)<<(32-n.espBits)) | uint32(i)<<(32-n.espBits)
				}
				if spi >= 256 {
					cand = append(cand, spi)
				}
			}
			ok, err := n.persist.store.ReserveESPSPIs(ctx, cand)
			if err != nil {
				n.log.Debug("ESP SPI reservation failed", "err", err)
				return
			}
			for k, got := range ok {
				if got {
					select {
					case s.espSPIs <- cand[k]:
					default:
					}
				}
			}
		}
	}
}

// Reconciler is implemented by data planes that keep state across
// restarts (the kernel): at start they are told what to keep.
type Reconciler interface {
	Reconcile(ctx context.Context, want []*dataplane.ChildSA) (adopted, removed int, err error)
}

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
			ClientAddr: client, PeerAddr: peer})
		if err != nil {
			return nil, fmt.Errorf("statestore: embedded etcd: %w", err)
		}
		p.etcd = e
		cc = e.Client()
		n.log.Info("embedded etcd ready", "dir", c.DataDir, "endpoint", cc.Endpoints[0], "took", time.Since(start).Round(time.Millisecond).String())
	case "external":
		cc = statestore.ClientConfig{Endpoints: c.Endpoints, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
	}
	keys, err := clusterKeys(c)
	if err != nil {
		p.close()
		return nil, err
	}
	if p.cli, err = statestore.Dial(cc); err != nil {
		p.close()
		return nil, fmt.Errorf("statestore.endpoints: %w", err)
	}
	p.store, err = statestore.Open(ctx, p.cli, statestore.Config{
		NodeID: n.nodeID, Keys: keys, LeaseTTL: c.LeaseTTL,
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

// restore puts back the SAs this node owns, before any packet is served,
// and tells the data plane which CHILD SAs to keep.
func (n *Node) restore(ctx context.Context) error {
	var want []*dataplane.ChildSA
	var rd ike.Ready
	rest := make([]ike.Ready, len(n.shards)) // what the restores write and send, per shard
	restored := 0
	if n.persist != nil {
		recs, err := n.persist.store.LoadOwned(ctx)
		if err != nil {
			return fmt.Errorf("statestore: loading owned SAs: %w", err)
		}
		now := time.Now()
		for _, r := range recs {
			st := stateOf(r)
			s := n.shardOfSPI(r.LocalSPI())
			if s == nil {
				n.log.Warn("stored SA with a foreign shard number", "spi", fmt.Sprintf("%016x", r.LocalSPI()))
				continue
			}
			rd.Reset()
			_, err = s.eng.Restore(now, st, &rd)
			if err != nil {
				n.log.Warn("stored SA not restored", "spi", fmt.Sprintf("%016x", r.LocalSPI()), "err", err)
				continue
			}
			restored++
			r := &rest[s.id]
			for _, a := range rd.DataPlane {
				if ic, ok := a.(ike.InstallChild); ok {
					want = append(want, toDataplane(ic))
				} else {
					r.DataPlane = append(r.DataPlane, a)
				}
			}
			r.Persist = append(r.Persist, rd.Persist...)
			r.Send = append(r.Send, rd.Send...)
			r.Events = append(r.Events, rd.Events...)
		}
	}
	if r, ok := n.dp.(Reconciler); ok {
		adopted, removed, err := r.Reconcile(ctx, want)
		if err != nil {
			return fmt.Errorf("dataplane: reconcile: %w", err)
		}
		n.log.Info("data plane reconciled", "dataplane", n.dp.Name(), "adopted", adopted, "removed_strays", removed, "wanted", len(want))
	} else {
		for _, c := range want {
			if err := n.dp.Install(ctx, c); err != nil {
				n.log.Error("CHILD_SA restore failed", "spi_in", fmt.Sprintf("%08x", c.InSPI), "err", err)
			}
		}
	}
	// The restored SAs' fresh reservations and message ID
	// synchronisations (the shards do not run yet).
	for i, s := range n.shards {
		n.perform(ctx, s, &rest[i])
	}
	if n.persist != nil {
		n.log.Info("SAs restored", "count", restored, "children", len(want))
	}
	return nil
}

// shardOfSPI is the shard whose bits our SPI carries.
func (n *Node) shardOfSPI(spi uint64) *shard {
	i := (spi & spiShardMask) >> spiShardShift
	if i >= uint64(len(n.shards)) {
		return nil
	}
	return n.shards[i]
}

// onReclaimed: after a fence, the store re-registered and reclaimed these
// SAs; the others went to other nodes meanwhile and are dropped here
// without a word to their peers.
func (n *Node) onReclaimed(me statestore.Owner, owned []uint64, err error) {
	if err != nil {
		n.log.Warn("statestore: reclaim incomplete", "err", err)
		return
	}
	keep := make(map[uint64]bool, len(owned))
	for _, s := range owned {
		keep[s] = true
	}
	ctx := n.runCtx
	for _, s := range n.shards {
		n.do(ctx, s, func() {
			var gone []uint64
			s.eng.Each(func(sa *ike.IKESA) bool {
				spi := sa.SPIr
				if sa.IsInitiator() {
					spi = sa.SPIi
				}
				if sa.Established() && !keep[spi] {
					gone = append(gone, spi)
				}
				return true
			})
			var rd ike.Ready
			for _, spi := range gone {
				s.eng.Forget(spi, &rd)
			}
			n.perform(ctx, s, &rd)
			if len(gone) > 0 {
				n.log.Warn("SAs taken over by other nodes dropped", "count", len(gone), "epoch", me.Epoch)
			}
		})
	}
}

var persistKinds = map[ike.PersistKind]statestore.ChangeKind{
	ike.PersistEstablished: statestore.Established, ike.PersistChildCreated: statestore.ChildCreated,
	ike.PersistChildRekeyed: statestore.ChildRekeyed, ike.PersistChildDeleted: statestore.ChildDeleted,
	ike.PersistIKERekeyed: statestore.IKERekeyed, ike.PersistAddressChanged: statestore.AddressChanged,
	ike.PersistDeleted: statestore.Deleted, ike.PersistReserved: statestore.Updated,
	ike.PersistUpdated: statestore.Updated,
}

// sendGate holds the messages of one batch of actions until its state
// changes are persisted. A new SA whose record could not be written is not
// answered at all: the peer retries later rather than hold an SA the
// cluster does not know.
type sendGate struct {
	mu      sync.Mutex
	pending int
	sends   []ike.Send
	drop    bool
}

func (g *sendGate) hold(s ike.Send) {
	g.mu.Lock()
	g.sends = append(g.sends, s)
	g.mu.Unlock()
}

func (g *sendGate) done(n *Node, ok bool) {
	g.mu.Lock()
	g.drop = g.drop || !ok
	g.pending--
	if g.pending > 0 {
		g.mu.Unlock()
		return
	}
	sends, drop := g.sends, g.drop
	g.sends = nil
	g.mu.Unlock()
	if drop {
		return
	}
	for _, s := range sends {
		n.send(s)
	}
}

// persistChange submits one state change; gate releases the batch's
// messages when it is written. A new SA that cannot be persisted (etcd
// unreachable and statestore.queue_new off, or the write failed) is
// dropped without an answer.
func (n *Node) persistChange(s *shard, a ike.Persist, gate *sendGate) {
	if n.persist == nil {
		return
	}
	c := statestore.Change{Kind: persistKinds[a.Kind], SPI: a.SPI, OldSPI: a.OldSPI, Released: a.Released}
	if a.State != nil {
		c.Record = recordOf(a.State)
	}
	finish := func(err error) {
		ok := err == nil
		if err != nil {
			n.persistFailures.Add(1)
			n.log.Warn("SA state not persisted", "spi", fmt.Sprintf("%016x", a.SPI), "change", c.Kind.String(), "err", err)
		}
		// From a store goroutine or this shard's: hand the outcome to the
		// shard without waiting on it here. A new SA whose write failed is
		// forgotten by the engine; another one writes its state again.
		go n.do(n.runCtx, s, func() {
			if ok {
				s.eng.Committed(a.SPI, a.Version)
				return
			}
			var rd ike.Ready
			s.eng.PersistFailed(a.SPI, a.Version, &rd)
			n.perform(n.runCtx, s, &rd)
		})
		if gate != nil {
			gate.done(n, ok)
		}
	}
	if err := n.persist.store.Submit(c, finish); err != nil {
		finish(err)
	}
}

// ---- conversions between the engine's state and the store's records ----

func recordOf(st *ike.SAState) *statestore.SARecord {
	r := &statestore.SARecord{
		SPIi: st.SPIi, SPIr: st.SPIr, Initiator: st.Initiator, State: 1,
		Suite: statestore.Suite{Encr: st.Proposal.Encr.ID, EncrKeyLen: st.Proposal.Encr.KeyLen,
			Integ: st.Proposal.Integ, PRF: st.Proposal.PRF, Group: st.Proposal.Group},
		SKd: st.SKd, SKai: st.SKai, SKar: st.SKar, SKei: st.SKei, SKer: st.SKer,
		NextIn: st.NextIn, NextOut: st.NextOut, Local: st.Local, Remote: st.Remote,
		NATLocal: st.NATLocal, NATRemote: st.NATRemote,
		PeerID:    statestore.Identity{Type: st.PeerID.Type, Data: st.PeerID.Data},
		VirtualIP: st.VirtualIP, Created: st.Created, Established: st.Established,
	}
	if st.PeerFrag {
		r.Flags |= flagPeerFrag
	}
	if st.MOBIKE {
		r.Flags |= flagMOBIKE
	}
	for _, c := range st.Children {
		r.Children = append(r.Children, statestore.ChildRecord{
			InSPI: c.InSPI, OutSPI: c.OutSPI,
			Suite: statestore.Suite{Encr: c.Proposal.Encr.ID, EncrKeyLen: c.Proposal.Encr.KeyLen,
				Integ: c.Proposal.Integ, Group: c.Proposal.Group, ESN: c.Proposal.ESN},
			KeyIn:   statestore.ChildKeys{Encr: c.KeyIn.Encr, Integ: c.KeyIn.Integ},
			KeyOut:  statestore.ChildKeys{Encr: c.KeyOut.Encr, Integ: c.KeyOut.Integ},
			LocalTS: tsRecord(c.LocalTS), RemoteTS: tsRecord(c.RemoteTS), Encap: c.Encap,
			Created: c.Created, RekeyAt: c.RekeyAt,
		})
	}
	return r
}

// Engine-defined record flags.
const (
	flagPeerFrag uint32 = 1 << iota
	flagMOBIKE
)

func stateOf(r *statestore.SARecord) ike.SAState {
	st := ike.SAState{
		Initiator: r.Initiator, SPIi: r.SPIi, SPIr: r.SPIr, Local: r.Local, Remote: r.Remote,
		Proposal: ike.Selected{Protocol: ike.ProtoIKE, Encr: ike.EncrAlg{ID: r.Suite.Encr, KeyLen: r.Suite.EncrKeyLen},
			Integ: r.Suite.Integ, PRF: r.Suite.PRF, Group: r.Suite.Group},
		SKd: r.SKd, SKai: r.SKai, SKar: r.SKar, SKei: r.SKei, SKer: r.SKer,
		NextIn: r.NextIn, NextOut: r.NextOut, NATLocal: r.NATLocal, NATRemote: r.NATRemote,
		PeerFrag: r.Flags&flagPeerFrag != 0, MOBIKE: r.Flags&flagMOBIKE != 0,
		PeerID:    ike.Identity{Type: r.PeerID.Type, Data: r.PeerID.Data},
		VirtualIP: r.VirtualIP, Created: r.Created, Established: r.Established,
	}
	for _, c := range r.Children {
		st.Children = append(st.Children, ike.ChildState{
			InSPI: c.InSPI, OutSPI: c.OutSPI,
			Proposal: ike.Selected{Protocol: ike.ProtoESP, Encr: ike.EncrAlg{ID: c.Suite.Encr, KeyLen: c.Suite.EncrKeyLen},
				Integ: c.Suite.Integ, Group: c.Suite.Group, ESN: c.Suite.ESN},
			KeyIn:   ike.ChildKeys{Encr: c.KeyIn.Encr, Integ: c.KeyIn.Integ},
			KeyOut:  ike.ChildKeys{Encr: c.KeyOut.Encr, Integ: c.KeyOut.Integ},
			LocalTS: tsState(c.LocalTS), RemoteTS: tsState(c.RemoteTS), Encap: c.Encap,
			Created: c.Created, RekeyAt: c.RekeyAt,
		})
	}
	return st
}

func tsRecord(ts []ike.TrafficSelector) []statestore.TrafficSelector {
	out := make([]statestore.TrafficSelector, len(ts))
	for i, t := range ts {
		out[i] = statestore.TrafficSelector{IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort, Start: t.Start, End: t.End}
	}
	return out
}

func tsState(ts []statestore.TrafficSelector) []ike.TrafficSelector {
	out := make([]ike.TrafficSelector, len(ts))
	for i, t := range ts {
		out[i] = ike.TrafficSelector{IPProto: t.IPProto, StartPort: t.StartPort, EndPort: t.EndPort, Start: t.Start, End: t.End}
	}
	return out
}

// Health is the node's view of its own state, for probes and operators.
type Health struct {
	StateStore      *statestore.Health // nil without a state store
	Fenced          bool               // not allowed to send for its SAs now
	PersistFailures uint64
}

// Health reports the node's health.
func (n *Node) Health() Health {
	h := Health{PersistFailures: n.persistFailures.Load()}
	if n.persist != nil {
		sh := n.persist.store.Health()
		h.StateStore = &sh
		h.Fenced = !n.persist.store.CanSend()
	}
	return h
}

// watchStore logs when the state store becomes unreachable or reachable
// again, and when the node starts or stops refusing new SAs.
func (n *Node) watchStore(ctx context.Context) {
	if n.persist == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := n.persist.store.Health()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h := n.persist.store.Health()
		switch {
		case last.Reachable && !h.Reachable:
			n.log.Warn("state store unreachable: serving established SAs, new ones refused unless statestore.queue_new",
				"err", h.LastError, "queued", h.Queued, "refuse_new", h.RefuseNew)
		case !last.Reachable && h.Reachable:
			n.log.Info("state store reachable again", "queued", h.Queued)
		}
		if last.Registered && !h.Registered {
			n.log.Warn("fenced: lease lost, not sending for our SAs until re-registered")
		} else if !last.Registered && h.Registered {
			n.log.Info("re-registered", "epoch", h.Owner.Epoch, "slot", h.Slot)
		}
		last = h
	}
}
