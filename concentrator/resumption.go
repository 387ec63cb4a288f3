package concentrator

import (
	"context"
	"crypto/rand"
	"io"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// ResumptionConfig is ike.resumption: IKEv2 session resumption (RFC 5723).
// Gateways that ask get a ticket at IKE_AUTH and later resume their IKE SA
// with IKE_SESSION_RESUME on any node, without a new authentication.
type ResumptionConfig struct {
	Enabled        bool          `yaml:"enabled"`
	TicketLifetime time.Duration `yaml:"ticket_lifetime"` // an issued ticket's lifetime
	KeyRotation    time.Duration `yaml:"key_rotation"`    // a new cluster ticket key this often
}

func (c *Config) validateResumption() error {
	r := c.IKE.Resumption
	if !r.Enabled {
		return nil
	}
	if r.TicketLifetime < time.Minute || r.TicketLifetime > 30*24*time.Hour {
		return fieldErr("ike.resumption.ticket_lifetime", "must be 1m to 720h: %v", r.TicketLifetime)
	}
	if r.KeyRotation < time.Minute || r.KeyRotation > r.TicketLifetime {
		return fieldErr("ike.resumption.key_rotation", "must be 1m up to ticket_lifetime (%v): %v", r.TicketLifetime, r.KeyRotation)
	}
	return nil
}

// ticketKeyStore is the state store's side (statestore.Store).
type ticketKeyStore interface {
	RotateTicketKeys(ctx context.Context, now time.Time, every, retain time.Duration) ([]statestore.TicketKey, error)
}

// resumptionSetup gives the engines their ticket key ring.
func (n *Node) resumptionSetup(ec *ike.Config) {
	if !n.cfg.IKE.Resumption.Enabled {
		return
	}
	n.tickets = ike.NewTicketRing()
	ec.Tickets, ec.TicketLifetime = n.tickets, n.cfg.IKE.Resumption.TicketLifetime
}

// ticketKeyPoll is how often a node looks for new ticket keys, and
// ticketKeyGrace how old a key must be before a node seals with it: every
// node has read it by then, so every node opens what it seals.
func (n *Node) ticketKeyTimes() (poll, grace time.Duration) {
	poll = min(n.cfg.IKE.Resumption.KeyRotation/8, 30*time.Second)
	return poll, 3 * poll
}

// syncTicketKeys rotates the cluster's ticket keys if due and loads them
// into the ring. Without a state store the node keeps its own keys (its
// tickets resume on it alone).
func (n *Node) syncTicketKeys(ctx context.Context) error {
	r := n.cfg.IKE.Resumption
	now := n.clock.Now()
	retain := r.TicketLifetime + r.KeyRotation
	var keys []statestore.TicketKey
	if n.persist != nil {
		ts, ok := n.persist.store.(ticketKeyStore)
		if !ok {
			return nil
		}
		var err error
		if keys, err = ts.RotateTicketKeys(ctx, now, r.KeyRotation, retain); err != nil {
			return err
		}
	} else {
		keys = n.localTicketKeys(now, r.KeyRotation, retain, rand.Reader)
	}
	_, grace := n.ticketKeyTimes()
	have := map[uint32]bool{}
	current, found := uint32(0), false
	for _, k := range keys {
		have[k.ID] = true
		if err := n.tickets.Add(k.ID, k.Key); err != nil {
			return err
		}
		if now.Sub(k.Created) >= grace || n.persist == nil {
			current, found = k.ID, true
		}
	}
	if !found && len(keys) > 0 {
		current, found = keys[0].ID, true // all new: the oldest (the cluster's first key)
	}
	if found {
		if err := n.tickets.SetCurrent(current); err != nil {
			return err
		}
	}
	ids, _, _ := n.tickets.IDs()
	for _, id := range ids {
		if !have[id] {
			n.tickets.Remove(id)
		}
	}
	return nil
}

// localTicketKeys is the rotation of a node without a state store.
func (n *Node) localTicketKeys(now time.Time, every, retain time.Duration, r io.Reader) []statestore.TicketKey {
	ks := n.localTickets
	if len(ks) == 0 || now.Sub(ks[len(ks)-1].Created) >= every {
		key := make([]byte, ike.TicketKeyLen)
		if _, err := io.ReadFull(r, key); err == nil {
			id := uint32(1)
			if len(ks) > 0 {
				id = ks[len(ks)-1].ID + 1
			}
			ks = append(ks, statestore.TicketKey{ID: id, Key: key, Created: now})
		}
	}
	for len(ks) > 1 && now.Sub(ks[0].Created) > retain {
		ks = ks[1:]
	}
	n.localTickets = ks
	return ks
}

// runTicketKeys keeps the ring in step with the cluster.
func (n *Node) runTicketKeys(ctx context.Context) {
	poll, _ := n.ticketKeyTimes()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := n.syncTicketKeys(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("ticket keys not refreshed", "err", err)
		}
	}
}
