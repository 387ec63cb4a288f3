package statestore

import (
	"context"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RewrapStats is what a Rewrap pass did.
type RewrapStats struct {
	Scanned   int // records read (sa/ and seq/)
	Rewritten int // sealed under an older key, rewritten under the current one
	Raced     int // changed while being rewritten: the writer sealed them under the current key
	Failed    int // could not be opened (unknown key, corrupt, rolled back): left as they are
}

// reseal returns data (a record or reservation record stored under name,
// whose key has the metadata at) sealed under the keyring's current key
// (bound to the key's next version), or nil if it already is. A legacy
// record keeps its layout; a rolled-back one is refused (*RollbackError),
// never bound anew.
func (c Codec) reseal(name string, data []byte, at Binding) ([]byte, error) {
	rec, err := splitRecord(data)
	if err != nil {
		return nil, &CorruptError{Key: name, Reason: err.Error()}
	}
	plain, err := c.open(name, rec, at)
	if err != nil {
		return nil, err
	}
	if rec.keyID == c.Keys.Current() {
		return nil, nil
	}
	if rec.version == legacyRecordVersion {
		// Kept in its layout: a record is upgraded only with its
		// reservations, by its owner's next write.
		id, resealed, err := c.Keys.Seal(plain, aad(name, rec.body))
		if err != nil {
			return nil, err
		}
		return assembleLayout(legacyRecordVersion, rec.body, id, resealed), nil
	}
	next := at.next()
	id, resealed, err := c.Keys.Seal(plain, aadAt(name, rec.body, next))
	if err != nil {
		return nil, err
	}
	return assemble(rec.body, id, resealed, next), nil
}

// Rewrap rewrites every SA and reservation record sealed under an older
// cluster key under the current one (key rotation), a page at a time, each
// record only if it did not change meanwhile. progress, if not nil, is
// called after each page. Any node may run it, any number of times.
func (s *Store) Rewrap(ctx context.Context, progress func(RewrapStats)) (RewrapStats, error) {
	var st RewrapStats
	for _, dir := range []string{"sa/", "seq/"} {
		from, end := s.k.p+dir, clientv3.GetPrefixRangeEnd(s.k.p+dir)
		for {
			rc, cancel := s.rctx(ctx)
			resp, err := s.cli.Get(rc, from, clientv3.WithRange(end), clientv3.WithLimit(500))
			cancel()
			if err != nil {
				return st, err
			}
			for _, kv := range resp.Kvs {
				st.Scanned++
				name := strings.TrimPrefix(string(kv.Key), s.k.p)
				if len(kv.Value) == 0 {
					continue // a placeholder (revs.go)
				}
				b, err := s.codec.reseal(name, kv.Value, bindingOf(kv))
				if err != nil {
					st.Failed++
					continue
				}
				if b == nil {
					continue
				}
				rc, cancel := s.rctx(ctx)
				tr, err := s.txn(rc).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
					Then(clientv3.OpPut(string(kv.Key), string(b))).Commit()
				cancel()
				switch {
				case err != nil:
					return st, err
				case tr.Succeeded:
					st.Rewritten++
				default:
					st.Raced++
				}
			}
			if progress != nil {
				progress(st)
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	return st, nil
}
