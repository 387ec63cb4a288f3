package statestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// NodeIDInUseError: another live process holds the registration of this
// node id (Config.NodeID); the node must not start.
type NodeIDInUseError struct {
	NodeID     string
	PeerAddr   string    // the other process's peer address, if it published one
	Registered time.Time // when it registered
	Waited     time.Duration
}

func (e *NodeIDInUseError) Error() string {
	s := fmt.Sprintf("node id %q is in use by another live node (registered %s", e.NodeID, e.Registered.UTC().Format(time.RFC3339))
	if e.PeerAddr != "" {
		s += ", peer address " + e.PeerAddr
	}
	return s + fmt.Sprintf("; still renewed after waiting %s): give every node its own node.id", e.Waited.Round(time.Second))
}

// instanceFile is the name of the token LoadInstance keeps.
const instanceFile = "node-instance"

// LoadInstance returns this installation's instance token (Config.Instance),
// kept in dir/node-instance and created there the first time.
func LoadInstance(dir string) (string, error) {
	path := filepath.Join(dir, instanceFile)
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); len(t) >= 16 {
			return t, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	t := hex.EncodeToString(b[:])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	return t, nil
}

// replaceRegistration deals with a registration found under our node id
// (read at revision rev): our own previous life (same instance) is revoked
// at once; any other is waited out until its lease expires, and if it is
// still renewed after its TTL the node id is in use: *NodeIDInUseError.
func (s *Store) replaceRegistration(ctx context.Context, kv *mvccpb.KeyValue, rev int64) error {
	var other pb.Node
	_ = proto.Unmarshal(kv.Value, &other)
	old := clientv3.LeaseID(kv.Lease)
	if s.cfg.Instance != "" && other.Instance == s.cfg.Instance {
		s.log.Warn("statestore: replacing the registration of this node's previous life", "epoch", kv.CreateRevision)
		rc, cancel := s.rctx(ctx)
		defer cancel()
		if _, err := s.cli.Revoke(rc, old); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return err
		}
		return nil
	}
	// Another installation, or one that keeps no instance token: wait for
	// its registration to go. A process that crashed stops renewing, so the
	// key goes within its TTL; a live one keeps it.
	ttl := s.cfg.LeaseTTL
	rc, cancel := s.rctx(ctx)
	if r, err := s.cli.TimeToLive(rc, old); err == nil && r.GrantedTTL > 0 {
		ttl = time.Duration(r.GrantedTTL) * time.Second
	}
	cancel()
	wait := ttl + ttl/2 + time.Second
	s.log.Warn("statestore: node id registered by another instance; waiting for its lease to lapse",
		"epoch", kv.CreateRevision, "other_peer_addr", other.PeerAddr, "wait", wait.String())
	wctx, wcancel := context.WithTimeout(ctx, wait)
	defer wcancel()
	start := time.Now()
	for ev := range s.cli.Watch(clientv3.WithRequireLeader(wctx), s.k.node(s.cfg.NodeID), clientv3.WithRev(rev+1)) {
		for _, e := range ev.Events {
			if e.Type == clientv3.EventTypeDelete {
				return nil // it lapsed (or left): register
			}
		}
		if err := ev.Err(); err != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Look once more: the watch may have ended for another reason.
	rc, cancel = s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.node(s.cfg.NodeID))
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != kv.CreateRevision {
		return nil
	}
	return &NodeIDInUseError{NodeID: s.cfg.NodeID, PeerAddr: other.PeerAddr,
		Registered: time.UnixMilli(other.RegisteredMs), Waited: time.Since(start)}
}
