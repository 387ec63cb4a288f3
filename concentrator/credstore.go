package concentrator

// The node's copy of the credential store (statestore/credentials.go):
// per-device PSKs and raw public keys kept in etcd, loaded at start and
// followed with a watch, so that adding, rotating or revoking a device
// takes effect on every node within a watch round trip and without a
// restart. Credentials in the configuration file come first; the store
// answers for identities the file does not name.

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// credentialBackend is the part of the state store the credential store
// needs (*statestore.Store).
type credentialBackend interface {
	PutCredentials(ctx context.Context, cs []statestore.Credential) (int, error)
	DeleteCredential(ctx context.Context, id string) (bool, error)
	GetCredential(ctx context.Context, id string) (statestore.Credential, error)
	ListCredentials(ctx context.Context, after string, limit int) ([]statestore.Credential, int64, error)
	LoadCredentials(ctx context.Context, f func(statestore.Credential), bad func(key string, err error)) (int64, error)
	WatchCredentials(ctx context.Context, rev int64, f func(rev int64, id string, c *statestore.Credential), bad func(key string, err error)) error
}

// credCache holds the store's credentials in memory; the engines read it
// from every shard.
type credCache struct {
	mu   sync.RWMutex
	psks map[string][]byte
	pubs map[string]crypto.PublicKey
	rev  int64

	loaded  atomic.Bool
	updates atomic.Uint64 // changes applied from the watch
	bad     atomic.Uint64 // records that did not open or parse
}

func newCredCache() *credCache {
	return &credCache{psks: map[string][]byte{}, pubs: map[string]crypto.PublicKey{}}
}

func (c *credCache) PSK(id ike.Identity) ([]byte, bool) {
	c.mu.RLock()
	k, ok := c.psks[id.String()]
	c.mu.RUnlock()
	return k, ok
}

func (c *credCache) PublicKey(id ike.Identity) (crypto.PublicKey, bool) {
	c.mu.RLock()
	k, ok := c.pubs[id.String()]
	c.mu.RUnlock()
	return k, ok
}

// counts returns the number of PSKs and public keys held.
func (c *credCache) counts() (psks, pubs int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.psks), len(c.pubs)
}

// set applies one credential (nil: the identity's credential is gone).
// The caller holds mu.
func (c *credCache) set(id string, cr *statestore.Credential) error {
	delete(c.psks, id)
	delete(c.pubs, id)
	if cr == nil {
		return nil
	}
	switch cr.Kind {
	case statestore.CredentialPSK:
		c.psks[id] = cr.Secret
	case statestore.CredentialPubKey:
		k, err := x509.ParsePKIXPublicKey(cr.Secret)
		if err != nil {
			return fmt.Errorf("public key of %s: %w", id, err)
		}
		c.pubs[id] = k
	}
	return nil
}

// layeredPSKs asks the configuration's PSKs first, then the store's.
type layeredPSKs struct {
	static ike.PSKStore
	store  *credCache
}

func (l layeredPSKs) PSK(id ike.Identity) ([]byte, bool) {
	if l.static != nil {
		if k, ok := l.static.PSK(id); ok {
			return k, true
		}
	}
	return l.store.PSK(id)
}

type layeredPublicKeys struct {
	static ike.PublicKeyStore
	store  *credCache
}

func (l layeredPublicKeys) PublicKey(id ike.Identity) (crypto.PublicKey, bool) {
	if l.static != nil {
		if k, ok := l.static.PublicKey(id); ok {
			return k, true
		}
	}
	return l.store.PublicKey(id)
}

// withCredentialStore layers the store under the configuration's
// credentials in an engine configuration (auth.credential_store).
func (n *Node) withCredentialStore(ec *ike.Config) {
	if !n.cfg.Auth.CredentialStore {
		return
	}
	ec.PSKs = layeredPSKs{static: ec.PSKs, store: n.creds}
	ec.PublicKeys = layeredPublicKeys{static: ec.PublicKeys, store: n.creds}
}

// ErrNoCredentialStore: the node keeps no credentials in the store.
var ErrNoCredentialStore = errors.New("the credential store is off: set auth.credential_store (it needs statestore.mode embedded or external)")

func (n *Node) credentialBackend() (credentialBackend, error) {
	if !n.cfg.Auth.CredentialStore {
		return nil, ErrNoCredentialStore
	}
	if n.persist == nil {
		return nil, errors.New("the state store is not open yet")
	}
	b, ok := n.persist.store.(credentialBackend)
	if !ok {
		return nil, fmt.Errorf("state store %T keeps no credentials", n.persist.store)
	}
	return b, nil
}

// loadCredentials reads the whole store into the cache (at start, and
// again when the watch fell behind a compaction).
func (n *Node) loadCredentials(ctx context.Context, b credentialBackend) error {
	t0 := time.Now()
	psks, pubs := map[string][]byte{}, map[string]crypto.PublicKey{}
	fresh := &credCache{psks: psks, pubs: pubs}
	bad := func(key string, err error) {
		n.creds.bad.Add(1)
		n.log.Warn("credential not loaded", "key", key, "err", err)
	}
	rev, err := b.LoadCredentials(ctx, func(c statestore.Credential) {
		if err := fresh.set(c.ID, &c); err != nil {
			bad(c.ID, err)
		}
	}, bad)
	if err != nil {
		return err
	}
	n.creds.mu.Lock()
	n.creds.psks, n.creds.pubs, n.creds.rev = psks, pubs, rev
	n.creds.mu.Unlock()
	n.creds.loaded.Store(true)
	n.log.Info("credentials loaded", "psks", len(psks), "pubkeys", len(pubs), "revision", rev, "took", time.Since(t0).Round(time.Millisecond).String())
	return nil
}

// followCredentials applies the store's changes until ctx ends.
func (n *Node) followCredentials(ctx context.Context, b credentialBackend) {
	for ctx.Err() == nil {
		n.creds.mu.RLock()
		rev := n.creds.rev
		n.creds.mu.RUnlock()
		err := b.WatchCredentials(ctx, rev, func(rev int64, id string, c *statestore.Credential) {
			n.creds.mu.Lock()
			err := n.creds.set(id, c)
			n.creds.rev = rev
			n.creds.mu.Unlock()
			n.creds.updates.Add(1)
			if err != nil {
				n.creds.bad.Add(1)
				n.log.Warn("credential not applied", "id", id, "err", err)
			}
		}, func(key string, err error) {
			n.creds.bad.Add(1)
			n.log.Warn("credential not applied", "key", key, "err", err)
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, statestore.ErrCompacted) {
			if err := n.loadCredentials(ctx, b); err != nil {
				n.log.Warn("credentials not reloaded after compaction", "err", err)
			}
			continue
		}
		n.log.Warn("credential watch ended; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// CredentialInputError is a credential the admin API was given that
// cannot be stored.
type CredentialInputError struct {
	Index  int // in the request
	ID     string
	Reason string
}

func (e *CredentialInputError) Error() string {
	return fmt.Sprintf("credential %d (%q): %s", e.Index, e.ID, e.Reason)
}

// PutCredentials adds or replaces credentials in the store (at most
// statestore.MaxCredentialBatch a call; all or nothing). Identities are
// canonicalised; PSKs must be 16 bytes or more unless ike.allow_weak;
// public keys may be DER or PEM and must parse.
func (n *Node) PutCredentials(ctx context.Context, cs []statestore.Credential) (int, error) {
	b, err := n.credentialBackend()
	if err != nil {
		return 0, err
	}
	if len(cs) > statestore.MaxCredentialBatch {
		return 0, &CredentialInputError{Index: statestore.MaxCredentialBatch, Reason: fmt.Sprintf("more than %d credentials in one call", statestore.MaxCredentialBatch)}
	}
	out := make([]statestore.Credential, len(cs))
	for i, c := range cs {
		id, err := ike.ParseIdentity(c.ID)
		if err != nil {
			return 0, &CredentialInputError{Index: i, ID: c.ID, Reason: err.Error()}
		}
		c.ID = id.String()
		switch c.Kind {
		case statestore.CredentialPSK:
			if err := checkPSKLength(c.Secret, n.cfg.IKE.AllowWeak); err != nil {
				return 0, &CredentialInputError{Index: i, ID: c.ID, Reason: err.Error()}
			}
		case statestore.CredentialPubKey:
			der := c.Secret
			if blk, _ := pem.Decode(c.Secret); blk != nil {
				der = blk.Bytes
			}
			if _, err := x509.ParsePKIXPublicKey(der); err != nil {
				return 0, &CredentialInputError{Index: i, ID: c.ID, Reason: "public key: " + err.Error()}
			}
			c.Secret = der
		default:
			return 0, &CredentialInputError{Index: i, ID: c.ID, Reason: "kind must be psk or pubkey"}
		}
		out[i] = c
	}
	return b.PutCredentials(ctx, out)
}

// DeleteCredential revokes a device's stored credential.
func (n *Node) DeleteCredential(ctx context.Context, id string) (bool, error) {
	b, err := n.credentialBackend()
	if err != nil {
		return false, err
	}
	pid, err := ike.ParseIdentity(id)
	if err != nil {
		return false, &CredentialInputError{ID: id, Reason: err.Error()}
	}
	return b.DeleteCredential(ctx, pid.String())
}

// ListCredentials lists stored credentials without secrets, after the
// identity after, and their total.
func (n *Node) ListCredentials(ctx context.Context, after string, limit int) ([]statestore.Credential, int64, error) {
	b, err := n.credentialBackend()
	if err != nil {
		return nil, 0, err
	}
	return b.ListCredentials(ctx, after, limit)
}

// CredentialCounts is this node's copy of the store: PSKs and public keys.
func (n *Node) CredentialCounts() (psks, pubkeys int) { return n.creds.counts() }
