package statestore

// The credential store: per-device pre-shared keys and raw public keys in
// etcd, indexed by identity, so that a fleet's 100,000 devices need no
// configuration file and no restart. PSKs are sealed under the cluster
// keyring like SA keys (the AAD is the record's name: a record copied under
// another identity does not open). Every node keeps the whole set in
// memory and follows changes with a watch (concentrator/credstore.go).
//
// Key layout: <prefix>creds/<identity> → JSON credRecord.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// CredentialKind is what a stored credential is.
type CredentialKind string

const (
	CredentialPSK    CredentialKind = "psk"    // a pre-shared key
	CredentialPubKey CredentialKind = "pubkey" // a raw public key (DER SubjectPublicKeyInfo, RFC 7670)
)

// Credential is one device's credential.
type Credential struct {
	ID      string // the device's IKE identity, canonical (ike.Identity.String)
	Kind    CredentialKind
	Secret  []byte    // the PSK, or the public key's DER; nil in listings
	Updated time.Time // set by the store
}

// MaxCredentialBatch is the most credentials PutCredentials writes in one
// etcd transaction (one put each: etcd's default limit).
const MaxCredentialBatch = EtcdDefaultMaxTxnOps

// credRecord is a credential as stored.
type credRecord struct {
	V       int            `json:"v"`
	Kind    CredentialKind `json:"kind"`
	KeyID   uint32         `json:"key,omitempty"`    // sealing key (PSKs)
	Sealed  []byte         `json:"sealed,omitempty"` // PSK: nonce || ciphertext
	Public  []byte         `json:"public,omitempty"` // public key DER (not secret)
	Updated int64          `json:"updated_ms"`
}

func (k keys) creds() string            { return k.p + "creds/" }
func (k keys) cred(id string) string    { return k.p + credName(id) }
func credName(id string) string         { return "creds/" + id }
func (k keys) credID(key string) string { return strings.TrimPrefix(key, k.creds()) }

// CredentialError is an invalid credential given to the store.
type CredentialError struct {
	ID     string
	Reason string
}

func (e *CredentialError) Error() string {
	return fmt.Sprintf("statestore: credential %q: %s", e.ID, e.Reason)
}

func checkCredential(c Credential) error {
	switch {
	case c.ID == "" || len(c.ID) > 1024 || strings.ContainsAny(c.ID, "\x00\n"):
		return &CredentialError{ID: c.ID, Reason: "identity empty, longer than 1024 bytes or with NUL/newline"}
	case c.Kind != CredentialPSK && c.Kind != CredentialPubKey:
		return &CredentialError{ID: c.ID, Reason: fmt.Sprintf("kind %q (want psk or pubkey)", c.Kind)}
	case len(c.Secret) == 0 || len(c.Secret) > 8192:
		return &CredentialError{ID: c.ID, Reason: fmt.Sprintf("%d bytes of key material", len(c.Secret))}
	}
	return nil
}

func (s *Store) encodeCredential(c Credential, now time.Time) (string, error) {
	r := credRecord{V: 1, Kind: c.Kind, Updated: now.UnixMilli()}
	if c.Kind == CredentialPSK {
		id, sealed, err := s.cfg.Keys.Seal(c.Secret, []byte(credName(c.ID)))
		if err != nil {
			return "", err
		}
		r.KeyID, r.Sealed = id, sealed
	} else {
		r.Public = c.Secret
	}
	b, err := json.Marshal(r)
	return string(b), err
}

func (s *Store) decodeCredential(kv *mvccpb.KeyValue) (Credential, error) {
	id := s.k.credID(string(kv.Key))
	var r credRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.V != 1 {
		return Credential{}, &CorruptError{Key: string(kv.Key), Reason: fmt.Sprintf("credential record (v%d): %v", r.V, err)}
	}
	c := Credential{ID: id, Kind: r.Kind, Updated: time.UnixMilli(r.Updated)}
	switch r.Kind {
	case CredentialPSK:
		psk, err := s.cfg.Keys.Open(r.KeyID, r.Sealed, []byte(credName(id)))
		if err != nil {
			return Credential{}, err
		}
		c.Secret = psk
	case CredentialPubKey:
		c.Secret = r.Public
	default:
		return Credential{}, &CorruptError{Key: string(kv.Key), Reason: fmt.Sprintf("credential kind %q", r.Kind)}
	}
	return c, nil
}

// PutCredentials adds or replaces credentials, MaxCredentialBatch to an
// etcd transaction: each batch is all or nothing. It returns how many
// were written before an error.
func (s *Store) PutCredentials(ctx context.Context, cs []Credential) (int, error) {
	for _, c := range cs {
		if err := checkCredential(c); err != nil {
			return 0, err
		}
	}
	done := 0
	now := time.Now()
	for len(cs) > 0 {
		n := min(len(cs), MaxCredentialBatch)
		ops := make([]clientv3.Op, 0, n)
		seen := make(map[string]bool, n)
		for _, c := range cs[:n] {
			if seen[c.ID] {
				return done, &CredentialError{ID: c.ID, Reason: "twice in one batch"}
			}
			seen[c.ID] = true
			v, err := s.encodeCredential(c, now)
			if err != nil {
				return done, err
			}
			ops = append(ops, clientv3.OpPut(s.k.cred(c.ID), v))
		}
		rc, cancel := s.rctx(ctx)
		_, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return done, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		done += n
		cs = cs[n:]
	}
	return done, nil
}

// DeleteCredential revokes a device's credential; false if it had none.
func (s *Store) DeleteCredential(ctx context.Context, id string) (bool, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Delete(rc, s.k.cred(id))
	s.noteResult(err)
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	s.noteWritten(0, 1)
	return resp.Deleted > 0, nil
}

// GetCredential returns one credential (with its secret); ErrNotFound if
// there is none.
func (s *Store) GetCredential(ctx context.Context, id string) (Credential, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.cred(id))
	s.noteResult(err)
	if err != nil {
		return Credential{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return Credential{}, fmt.Errorf("%w: credential %q", ErrNotFound, id)
	}
	return s.decodeCredential(resp.Kvs[0])
}

// ListCredentials lists up to limit credentials after the identity after
// (in key order), without their secrets, and the total count.
func (s *Store) ListCredentials(ctx context.Context, after string, limit int) ([]Credential, int64, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	from := s.k.creds()
	if after != "" {
		from = s.k.cred(after) + "\x00"
	}
	resp, err := s.cli.Get(rc, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.k.creds())), clientv3.WithLimit(int64(limit)))
	s.noteResult(err)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	out := make([]Credential, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r credRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, 0, &CorruptError{Key: string(kv.Key), Reason: err.Error()}
		}
		out = append(out, Credential{ID: s.k.credID(string(kv.Key)), Kind: r.Kind, Updated: time.UnixMilli(r.Updated)})
	}
	cresp, err := s.cli.Get(rc, s.k.creds(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return out, 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return out, cresp.Count, nil
}

// credentialPage is how many records one read of LoadCredentials takes.
const credentialPage = 5000

// LoadCredentials calls f for every credential as of one revision, which
// it returns (WatchCredentials continues from there). A record that does
// not open (unknown key, corrupt) is reported through bad and skipped.
func (s *Store) LoadCredentials(ctx context.Context, f func(Credential), bad func(key string, err error)) (int64, error) {
	var rev int64
	from := s.k.creds()
	end := clientv3.GetPrefixRangeEnd(from)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(credentialPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.cli.Get(rc, from, opts...)
		cancel()
		s.noteResult(err)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			c, err := s.decodeCredential(kv)
			if err != nil {
				bad(string(kv.Key), err)
				continue
			}
			f(c)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// ErrCompacted: the watch's revision is gone; load again.
var ErrCompacted = errors.New("statestore: credential watch revision compacted")

// WatchCredentials follows changes after revision rev until ctx ends or
// the watch fails: f gets each change's revision and the put credential,
// or only its identity (c == nil) when it was deleted. A compacted revision returns
// ErrCompacted: the caller loads the set again.
func (s *Store) WatchCredentials(ctx context.Context, rev int64, f func(rev int64, id string, c *Credential), bad func(key string, err error)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.k.creds(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for wr := range wch {
		if wr.CompactRevision != 0 {
			return ErrCompacted
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for _, ev := range wr.Events {
			id := s.k.credID(string(ev.Kv.Key))
			if ev.Type == mvccpb.DELETE {
				f(ev.Kv.ModRevision, id, nil)
				continue
			}
			c, err := s.decodeCredential(ev.Kv)
			if err != nil {
				bad(string(ev.Kv.Key), err)
				continue
			}
			f(ev.Kv.ModRevision, id, &c)
		}
	}
	return ctx.Err()
}
