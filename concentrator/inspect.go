package concentrator

// Logs of engine events, and snapshots of SAs and counters for operators.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/evlog"
	"github.com/ikefleet/ikefleet/internal/hexid"
)

func (n *Node) logEvent(s *shard, ev ike.Event) {
	n.obs.events.Observe(ev)
	n.publishEvent(ev) // the admin API's event feed (events.go)
	ctx := context.Background()
	if kind, level, ok := perPacketKind(ev); ok {
		// Formatted only when not suppressed: under a flood the socket
		// loop logs a cookie demand per datagram.
		n.plog.LogLazy(ctx, level, kind, ev.Kind.String(), func() []slog.Attr { return eventAttrs(s, ev) })
		return
	}
	level := slog.LevelInfo
	if ev.Kind == ike.EventIKEFailed || ev.Kind == ike.EventChildFailed {
		level = slog.LevelWarn
	}
	if !n.log.Enabled(ctx, level) {
		return // a level the log leaves out costs no formatting
	}
	// The record copies the attributes (slog.Record.AddAttrs), so the
	// shard's list is free again once the line is written; events logged
	// here come from perform, on the shard's goroutine (the socket loop's
	// are per-packet kinds, above).
	s.logAttrs = appendEventAttrs(s.logAttrs[:0], s, ev)
	evlog.Attrs(ctx, n.log, level, ev.Kind.String(), s.logAttrs...)
	clear(s.logAttrs) // nothing of the event kept until the next
}

// eventAttrs are an event's log attributes. It runs for every SA's
// events on the shard's goroutine: typed attributes, no fmt.
func eventAttrs(s *shard, ev ike.Event) []slog.Attr {
	return appendEventAttrs(make([]slog.Attr, 0, eventAttrsCap), s, ev)
}

// eventAttrsCap: room for every attribute an event can have.
const eventAttrsCap = 18

// appendEventAttrs appends eventAttrs(s, ev) to attrs.
func appendEventAttrs(attrs []slog.Attr, s *shard, ev ike.Event) []slog.Attr {
	attrs = append(attrs, slog.String("spi_i", hexid.String(ev.SPIi, 16)), slog.String("spi_r", hexid.String(ev.SPIr, 16)),
		slog.String("peer", ev.Remote.String()), slog.Int("shard", s.id))
	if !ev.PeerID.IsZero() {
		attrs = append(attrs, slog.String("peer_id", ev.PeerID.String()))
	}
	if ev.Proposal != "" {
		attrs = append(attrs, slog.String("proposal", ev.Proposal))
	}
	if ev.Notify != 0 {
		attrs = append(attrs, slog.String("notify", ev.Notify.String()))
	}
	if why := ev.Why(); why != "" {
		attrs = append(attrs, slog.String("reason", why))
	}
	if c := ev.Child; c != nil {
		attrs = append(attrs, slog.String("spi_in", hexid.String(uint64(c.InSPI), 8)), slog.String("spi_out", hexid.String(uint64(c.OutSPI), 8)),
			slog.String("ts_local", ike.FormatSelectors(c.LocalTS)), slog.String("ts_remote", ike.FormatSelectors(c.RemoteTS)),
			slog.String("esp", c.Proposal.String()), slog.Bool("encap", c.Encap))
		if c.VirtualIP.IsValid() {
			attrs = append(attrs, slog.String("vip", c.VirtualIP.String()))
		}
	}
	return attrs
}

func childAttrs(spii, spir uint64, peer ike.Identity, c *ike.ChildSA, extra ...any) []any {
	a := []any{"spi_i", fmt.Sprintf("%016x", spii), "spi_r", fmt.Sprintf("%016x", spir),
		"spi_in", fmt.Sprintf("%08x", c.InSPI), "spi_out", fmt.Sprintf("%08x", c.OutSPI)}
	if !peer.IsZero() {
		a = append(a, "peer_id", peer.String())
	}
	return append(a, extra...)
}

// SAInfo is a snapshot of one IKE SA for operators and tests.
type SAInfo struct {
	SPIi, SPIr uint64
	State      string
	Initiator  bool
	Local      netip.AddrPort
	Remote     netip.AddrPort
	PeerID     string
	Policy     string // the policy the peer was matched to (ike.IKESA.PolicyName)
	Proposal   string
	Children   []ike.ChildSA
}

// SAs returns a snapshot of every IKE SA on every shard.
func (n *Node) SAs(ctx context.Context) ([]SAInfo, error) {
	var out []SAInfo
	for _, s := range n.shards {
		err := n.do(ctx, s, func() {
			s.eng.Each(func(sa *ike.IKESA) bool {
				info := SAInfo{SPIi: sa.SPIi, SPIr: sa.SPIr, State: sa.State(), Initiator: sa.IsInitiator(),
					Local: sa.Local, Remote: sa.Remote, PeerID: sa.PeerID.String(), Policy: sa.PolicyName()}
				if p := sa.Proposal(); p != nil {
					info.Proposal = p.String()
				}
				for _, c := range sa.Children() {
					info.Children = append(info.Children, *c)
				}
				out = append(out, info)
				return true
			})
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Stats sums the engine counters of all shards.
func (n *Node) Stats(ctx context.Context) (ike.Stats, error) {
	total := ike.Stats{Failed: map[ike.NotifyType]uint64{}, Dropped: n.headerDrops.Load()}
	for _, s := range n.shards {
		var st ike.Stats
		if err := n.do(ctx, s, func() { st = s.eng.Stats() }); err != nil {
			return total, err
		}
		total.HalfOpen += st.HalfOpen
		total.Established += st.Established
		total.CookiesSent += st.CookiesSent
		total.Dropped += st.Dropped
		total.Retransmits += st.Retransmits
		total.DuplicateRequests += st.DuplicateRequests
		total.UnreservedSPIs += st.UnreservedSPIs
		total.ReturnedSPIs += st.ReturnedSPIs
		total.ChildRekeys += st.ChildRekeys
		total.IKERekeys += st.IKERekeys
		total.DPDSent += st.DPDSent
		total.DPDTraffic += st.DPDTraffic
		total.DPDDead += st.DPDDead
		total.RekeyCollisions += st.RekeyCollisions
		total.PersistFailures += st.PersistFailures
		total.HeldRetransmits += st.HeldRetransmits
		total.MsgIDReservations += st.MsgIDReservations
		total.MsgIDProbes += st.MsgIDProbes
		total.MsgIDSyncs += st.MsgIDSyncs
		total.MsgIDSyncsAnswered += st.MsgIDSyncsAnswered
		total.SeqReservations += st.SeqReservations
		total.HalfOpenBytes += st.HalfOpenBytes
		total.Oversized += st.Oversized
		total.RefusedHalfOpen += st.RefusedHalfOpen
		total.RefusedPrefix += st.RefusedPrefix
		total.RefusedMemory += st.RefusedMemory
		total.RefusedSAs += st.RefusedSAs
		total.MovesRefused += st.MovesRefused
		total.SelectorsRefused += st.SelectorsRefused
		total.MappingChecks += st.MappingChecks
		total.TicketsIssued += st.TicketsIssued
		total.Resumed += st.Resumed
		total.ResumesRefused += st.ResumesRefused
		for k, v := range st.Failed {
			total.Failed[k] += v
		}
	}
	return total, nil
}
