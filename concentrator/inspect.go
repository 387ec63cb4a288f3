package concentrator

// Logs of engine events, and snapshots of SAs and counters for operators.

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func (n *Node) logEvent(s *shard, ev ike.Event) {
	n.obs.events.Observe(ev)
	n.publishEvent(ev) // the admin API's event feed (events.go)
	if kind, level, ok := perPacketKind(ev); ok {
		// Formatted only when not suppressed: under a flood the socket
		// loop logs a cookie demand per datagram.
		n.plog.LogLazy(context.Background(), level, kind, ev.Kind.String(), func() []any { return eventAttrs(s, ev) })
		return
	}
	attrs := eventAttrs(s, ev)
	switch ev.Kind {
	case ike.EventIKEFailed, ike.EventChildFailed:
		n.log.Warn(ev.Kind.String(), attrs...)
	default:
		n.log.Info(ev.Kind.String(), attrs...)
	}
}

// eventAttrs are an event's log attributes.
func eventAttrs(s *shard, ev ike.Event) []any {
	attrs := []any{"spi_i", fmt.Sprintf("%016x", ev.SPIi), "spi_r", fmt.Sprintf("%016x", ev.SPIr),
		"peer", ev.Remote.String(), "shard", s.id}
	if !ev.PeerID.IsZero() {
		attrs = append(attrs, "peer_id", ev.PeerID.String())
	}
	if ev.Proposal != "" {
		attrs = append(attrs, "proposal", ev.Proposal)
	}
	if ev.Notify != 0 {
		attrs = append(attrs, "notify", ev.Notify.String())
	}
	if why := ev.Why(); why != "" {
		attrs = append(attrs, "reason", why)
	}
	if c := ev.Child; c != nil {
		attrs = append(attrs, "spi_in", fmt.Sprintf("%08x", c.InSPI), "spi_out", fmt.Sprintf("%08x", c.OutSPI),
			"ts_local", ike.FormatSelectors(c.LocalTS), "ts_remote", ike.FormatSelectors(c.RemoteTS),
			"esp", c.Proposal.String(), "encap", c.Encap)
		if c.VirtualIP.IsValid() {
			attrs = append(attrs, "vip", c.VirtualIP.String())
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
		total.ChildRekeys += st.ChildRekeys
		total.IKERekeys += st.IKERekeys
		total.DPDSent += st.DPDSent
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
