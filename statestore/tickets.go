package statestore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Session resumption ticket keys (RFC 5723 tickets, concentrator's
// ike.resumption): AES-256 keys shared by the cluster, so that a ticket
// one node issued opens on every node. Each lives under tickets/<id> (8
// hex digits), sealed with the cluster keyring (AAD: its name) like SA key
// material:
//
//	created (8 octets, Unix nanoseconds) | cluster key id (4) | nonce || AES-GCM(key)
//
// Whichever node first finds the newest key older than the rotation
// period creates the next id (create-if-absent: one node wins the race);
// keys older than the retention (the ticket lifetime plus a rotation
// period) are deleted.

// TicketKeyLen is the length of a ticket key (AES-256).
const TicketKeyLen = 32

// TicketKey is one ticket key of the cluster.
type TicketKey struct {
	ID      uint32
	Key     []byte
	Created time.Time
}

func (k keys) tickets() string         { return k.p + "tickets/" }
func (k keys) ticket(id uint32) string { return k.p + ticketName(id) }
func ticketName(id uint32) string      { return fmt.Sprintf("tickets/%08x", id) }

// TicketKeys returns the cluster's ticket keys, oldest first.
func (s *Store) TicketKeys(ctx context.Context) ([]TicketKey, error) {
	rc, cancel := s.rctx(ctx)
	resp, err := s.cli.Get(rc, s.k.tickets(), clientv3.WithPrefix())
	cancel()
	s.noteResult(err)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var out []TicketKey
	for _, kv := range resp.Kvs {
		name := string(kv.Key[len(s.k.p):])
		id, err := strconv.ParseUint(name[len("tickets/"):], 16, 32)
		if err != nil || len(kv.Value) < 12 {
			return nil, fmt.Errorf("statestore: malformed ticket key record %q", kv.Key)
		}
		created := time.Unix(0, int64(binary.BigEndian.Uint64(kv.Value)))
		key, err := s.codec.Keys.Open(binary.BigEndian.Uint32(kv.Value[8:]), kv.Value[12:], []byte(name))
		if err != nil {
			return nil, fmt.Errorf("statestore: ticket key %d: %w", id, err)
		}
		if len(key) != TicketKeyLen {
			return nil, fmt.Errorf("statestore: ticket key %d has %d octets", id, len(key))
		}
		out = append(out, TicketKey{ID: uint32(id), Key: key, Created: created})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// RotateTicketKeys creates the next ticket key when there is none or the
// newest is older than every (another node may create it first: then its
// key is used), deletes the keys created before now-retain (never the
// newest), and returns the keys.
func (s *Store) RotateTicketKeys(ctx context.Context, now time.Time, every, retain time.Duration) ([]TicketKey, error) {
	ks, err := s.TicketKeys(ctx)
	if err != nil {
		return nil, err
	}
	if len(ks) == 0 || now.Sub(ks[len(ks)-1].Created) >= every {
		id := uint32(1)
		if len(ks) > 0 {
			id = ks[len(ks)-1].ID + 1
		}
		if err := s.createTicketKey(ctx, id, now, rand.Reader); err != nil {
			return nil, err
		}
		if ks, err = s.TicketKeys(ctx); err != nil {
			return nil, err
		}
	}
	for len(ks) > 1 && now.Sub(ks[0].Created) > retain {
		rc, cancel := s.rctx(ctx)
		_, err := s.cli.Delete(rc, s.k.ticket(ks[0].ID))
		cancel()
		s.noteResult(err)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		s.noteWritten(0, 1)
		ks = ks[1:]
	}
	return ks, nil
}

func (s *Store) createTicketKey(ctx context.Context, id uint32, now time.Time, r io.Reader) error {
	key := make([]byte, TicketKeyLen)
	defer clear(key)
	if _, err := io.ReadFull(r, key); err != nil {
		return err
	}
	kid, sealed, err := s.codec.Keys.Seal(key, []byte(ticketName(id)))
	if err != nil {
		return err
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 12+len(sealed)), uint64(now.UnixNano()))
	v = binary.BigEndian.AppendUint32(v, kid)
	v = append(v, sealed...)
	k := s.k.ticket(id)
	rc, cancel := s.rctx(ctx)
	_, err = s.txn(rc).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(v))).Commit()
	cancel()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil // lost the race: the winner's key is read back
}
