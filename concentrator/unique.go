package concentrator

// Unique identities (auth.unique_ids, docs/architecture.md "Unique
// identities"): a gateway's new IKE SA deletes the older IKE SAs of its
// identity wherever they are in the cluster. The new SA's Established
// write reads the identity index (statestore/identity.go) in its own
// transaction; once it is committed the older SAs go: on this node at
// once, on a live node through its peer API (DeleteIdentity), and those
// of a dead node straight from the state store under the fencing rules.
// Each older SA goes in a transaction of its own: an error leaves it
// whole (it stays until its peer's liveness check fails) and is counted.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	peerv1 "github.com/ikefleet/ikefleet/api/peer/v1"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

type uniqueStats struct {
	local, remote, dead, failed, refused atomic.Uint64
}

// UniqueStats are the node's unique identity counters.
type UniqueStats struct {
	Local, Remote, Dead, Failed, Refused uint64
}

// UniqueStats returns the node's unique identity counters.
func (n *Node) UniqueStats() UniqueStats {
	u := &n.unique
	return UniqueStats{Local: u.local.Load(), Remote: u.remote.Load(), Dead: u.dead.Load(),
		Failed: u.failed.Load(), Refused: u.refused.Load()}
}

// identityStore is the state store's side (statestore.Store).
type identityStore interface {
	Registration() (statestore.Owner, int)
	Owners(ctx context.Context, spis []uint64) ([]statestore.OwnerState, error)
	DeleteOrphan(ctx context.Context, spi uint64, from statestore.Owner, id string) error
	DropStaleIdentity(ctx context.Context, id string, spis []uint64) error
}

// uniqueChange fills the identity index fields of a change from the
// engine's write p.
func (n *Node) uniqueChange(c *statestore.Change, p *ike.Persist) {
	if n.ecfg.UniqueIDs == ike.UniqueNever || p.PeerID.IsZero() {
		return
	}
	if _, ok := n.persist.store.(identityStore); !ok {
		return
	}
	switch p.Kind {
	case ike.PersistEstablished:
		switch p.Unique {
		case ike.UniqueNone:
			return
		case ike.UniqueDeleteOlder:
			c.Unique = statestore.UniqueReplace
			c.Others = new([]statestore.IdentitySA)
		case ike.UniqueRefuse:
			c.Unique = statestore.UniqueKeep
		}
	case ike.PersistIKERekeyed, ike.PersistDeleted:
	default:
		return
	}
	c.Identity = p.PeerID.String()
}

// uniqueCommitted acts on the answer to an Established write with an
// identity: deletes the older SAs it found, or cleans up after a refusal.
// On the state store's goroutine: the work goes elsewhere.
func (n *Node) uniqueCommitted(c *statestore.Change, err error) {
	if c.Identity == "" || c.Kind != statestore.Established {
		return
	}
	var held *statestore.IdentityHeldError
	switch {
	case err == nil && c.Others != nil && len(*c.Others) > 0:
		others := *c.Others
		go n.replace(c.Identity, others, false, false)
	case errors.As(err, &held):
		n.unique.refused.Add(1)
		// The SAs that hold the identity may be a dead node's or gone:
		// clear those, so that the gateway's next attempt gets in.
		go n.replace(c.Identity, held.SAs, true, false)
	}
}

// replace deletes the SAs others of identity id, wherever they are.
// gone: delete only those of dead nodes and drop stale entries (keep mode
// after a refusal). retried: a second attempt (replaceWhenGone).
func (n *Node) replace(id string, others []statestore.IdentitySA, gone, retried bool) {
	st, ok := n.persist.store.(identityStore)
	if !ok || len(others) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.runCtx, 2*peerCallTimeout)
	defer cancel()
	spis := make([]uint64, len(others))
	for i, o := range others {
		spis[i] = o.SPI
	}
	owners, err := st.Owners(ctx, spis)
	if err != nil {
		if !gone {
			n.unique.failed.Add(uint64(len(spis)))
		}
		n.log.Warn("older IKE SAs of an identity not replaced: state store", "identity", id, "sas", len(spis), "err", err)
		return
	}
	me, _ := st.Registration()
	var stale, local []uint64
	remote := map[statestore.Owner][]uint64{}
	for i, o := range owners {
		switch {
		case !o.Found:
			stale = append(stale, spis[i])
		case !o.Live:
			err := st.DeleteOrphan(ctx, spis[i], o.Owner, id)
			var taken *statestore.OwnerError
			switch {
			case errors.As(err, &taken) && taken.Owner.Node != "" && (!retried || taken.Owner == me):
				// Taken over meanwhile (its gateway's packets reached a
				// node, this one or another): no longer an orphan, and
				// being restored where it is now. Unless it only had to
				// be gone, it is deleted there once restored. Taken over
				// by this node, it is deleted here even on a second
				// attempt (replaceWhenGone's, after its owner died while
				// asked): the owners read then finds it local.
				n.log.Debug("a dead node's IKE SA of an identity taken over before its deletion", "identity", id,
					"spi", fmt.Sprintf("%016x", spis[i]), "owner", taken.Owner.String())
				if !gone {
					n.replaceLater(id, statestore.IdentitySA{SPI: spis[i], Node: taken.Owner.Node})
				}
				continue
			case err != nil && !errors.Is(err, statestore.ErrNotFound):
				n.unique.failed.Add(1)
				n.log.Warn("a dead node's IKE SA of an identity not deleted", "identity", id, "spi", fmt.Sprintf("%016x", spis[i]), "owner", o.Owner.String(), "err", err)
				continue
			}
			n.unique.dead.Add(1)
			n.log.Info("IKE SA replaced: a dead node's SA of the identity deleted", "identity", id, "spi", fmt.Sprintf("%016x", spis[i]), "owner", o.Owner.String())
		case gone:
		case o.Owner == me:
			local = append(local, spis[i])
		default:
			remote[o.Owner] = append(remote[o.Owner], spis[i])
		}
	}
	if len(stale) > 0 {
		if err := st.DropStaleIdentity(ctx, id, stale); err != nil {
			n.log.Debug("stale identity index entries not dropped", "identity", id, "err", err)
		}
	}
	if len(local) > 0 {
		k := n.replaceLocal(ctx, id, local)
		n.unique.local.Add(uint64(k))
		if k < len(local) {
			n.unique.failed.Add(uint64(len(local) - k))
		}
	}
	for o, spis := range remote {
		k, err := n.askDeleteIdentity(ctx, o, id, spis)
		n.unique.remote.Add(uint64(k))
		if k < len(spis) && !retried {
			// The owner did not answer or did not hold them all: it may
			// be dying or stopping. Once its registration ends (within
			// the lease TTL) its SAs are deleted from the state store;
			// while it lives, it is asked again.
			n.log.Debug("older IKE SAs of an identity not deleted by their node: asking again later", "identity", id, "node", o.String(), "asked", len(spis), "deleted", k, "err", err)
			go n.replaceWhenGone(o, id, spis)
			continue
		}
		if k < len(spis) {
			n.unique.failed.Add(uint64(len(spis) - k))
			n.log.Warn("older IKE SAs of an identity on another node not all deleted", "identity", id, "node", o.String(), "asked", len(spis), "deleted", k, "err", err)
		}
	}
}

// replaceTakenOverDelay: how long a dead node's SA of an identity, taken
// over while it was being deleted, is given to be restored by its new
// owner before that owner is asked to delete it (claims restore within
// milliseconds; their retries come after claimRetry).
var replaceTakenOverDelay = 2 * claimRetry

// replaceLater replaces SA sa of identity id once more, after
// replaceTakenOverDelay: its new owner, live now, is asked as any other.
func (n *Node) replaceLater(id string, sa statestore.IdentitySA) {
	time.AfterFunc(replaceTakenOverDelay, func() {
		if n.runCtx.Err() == nil {
			n.replace(id, []statestore.IdentitySA{sa}, false, true)
		}
	})
}

// replaceWhenGone waits until owner o's registration ends or the lease TTL
// has passed (at most twice), then replaces its SAs spis of identity id
// once more.
func (n *Node) replaceWhenGone(o statestore.Owner, id string, spis []uint64) {
	wait := 2 * n.cfg.StateStore.LeaseTTL
	if wait <= 0 {
		wait = 2 * statestore.DefaultLeaseTTL
	}
	octx, cancel := n.ownerCtx(n.runCtx, o)
	t := time.NewTimer(wait)
	select {
	case <-octx.Done():
	case <-t.C:
	}
	t.Stop()
	cancel()
	if n.runCtx.Err() != nil {
		return
	}
	others := make([]statestore.IdentitySA, len(spis))
	for i, spi := range spis {
		others[i] = statestore.IdentitySA{SPI: spi, Node: o.Node}
	}
	n.replace(id, others, false, true)
}

// askDeleteIdentity asks live node o to delete its SAs spis of identity id.
func (n *Node) askDeleteIdentity(ctx context.Context, o statestore.Owner, id string, spis []uint64) (int, error) {
	if n.peer == nil {
		return 0, errors.New("cluster.peer_listen is not set")
	}
	info, ok := n.peerOf(o)
	if !ok {
		return 0, errors.New("no peer address for the node")
	}
	cli, err := n.peer.client(info.PeerAddr)
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	resp, err := cli.DeleteIdentity(cctx, &peerv1.DeleteIdentityRequest{Identity: id, IkeSpis: spis})
	if err != nil {
		return 0, err
	}
	return int(resp.GetDeleted()), nil
}

// replaceLocal deletes this node's SAs spis of identity id (others are
// left alone): their CHILD SAs, records and one Delete to their peers.
func (n *Node) replaceLocal(ctx context.Context, id string, spis []uint64) int {
	byShard := map[*shard][]uint64{}
	for _, spi := range spis {
		if s := n.shardOfSPI(spi); s != nil {
			byShard[s] = append(byShard[s], spi)
		}
	}
	var deleted atomic.Int64
	for s, spis := range byShard {
		n.do(ctx, s, func() {
			for _, spi := range spis {
				sa := s.eng.SA(spi)
				if sa == nil || sa.PeerID.String() != id {
					continue
				}
				var rd ike.Ready
				if s.eng.Replace(n.clock.Mono(), spi, true, &rd) {
					deleted.Add(1)
					n.log.Info("IKE SA replaced by a newer one of its identity", "identity", id, "spi", fmt.Sprintf("%016x", spi))
				}
				n.perform(ctx, s, &rd)
			}
		})
	}
	return int(deleted.Load())
}

// DeleteIdentity deletes SAs this node holds for an identity: a newer SA
// of it was established on the requester (unique identities).
func (ps *peerServer) DeleteIdentity(ctx context.Context, req *peerv1.DeleteIdentityRequest) (*peerv1.DeleteIdentityResponse, error) {
	n := ps.n
	spis := req.GetIkeSpis()
	if req.GetIdentity() == "" || len(spis) == 0 || !n.listening() {
		return &peerv1.DeleteIdentityResponse{}, nil
	}
	if len(spis) > maxHandOffMany {
		spis = spis[:maxHandOffMany]
	}
	ctx, cancel := context.WithCancel(ctx)
	defer context.AfterFunc(n.runCtx, cancel)()
	defer cancel()
	k := n.replaceLocal(ctx, req.GetIdentity(), spis)
	return &peerv1.DeleteIdentityResponse{Deleted: uint32(k)}, nil
}
