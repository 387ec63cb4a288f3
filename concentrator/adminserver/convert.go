package adminserver

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func childPB(c *concentrator.ChildView) *adminv1.ChildSA {
	out := &adminv1.ChildSA{InSpi: c.InSPI, OutSpi: c.OutSPI, Proposal: c.Proposal, LocalTs: c.LocalTS,
		RemoteTs: c.RemoteTS, Encap: c.Encap, Created: ts(c.Created), RekeyAt: ts(c.RekeyAt)}
	if c.VirtualIP.IsValid() {
		out.VirtualIp = c.VirtualIP.String()
	}
	if k := c.Counters; k != nil {
		out.HasCounters = true
		out.InBytes, out.OutBytes, out.InPackets, out.OutPackets = k.InBytes, k.OutBytes, k.InPackets, k.OutPackets
	}
	return out
}

func saPB(v *concentrator.SAView, node string) *adminv1.SA {
	out := &adminv1.SA{SpiI: v.SPIi, SpiR: v.SPIr, Spi: v.SPI, Node: node, State: v.State, Initiator: v.Initiator,
		Local: v.Local.String(), Remote: v.Remote.String(), PeerId: v.PeerID, Proposal: v.Proposal, Policy: v.Policy,
		Created: ts(v.Created), Established: ts(v.Established)}
	if v.VirtualIP.IsValid() {
		out.VirtualIp = v.VirtualIP.String()
	}
	for i := range v.Children {
		out.Children = append(out.Children, childPB(&v.Children[i]))
	}
	return out
}

var eventKinds = map[ike.EventKind]adminv1.EventKind{
	ike.EventIKEEstablished: adminv1.EventKind_EVENT_KIND_IKE_ESTABLISHED,
	ike.EventIKEDeleted:     adminv1.EventKind_EVENT_KIND_IKE_DELETED,
	ike.EventIKEFailed:      adminv1.EventKind_EVENT_KIND_IKE_FAILED,
	ike.EventChildInstalled: adminv1.EventKind_EVENT_KIND_CHILD_INSTALLED,
	ike.EventChildDeleted:   adminv1.EventKind_EVENT_KIND_CHILD_DELETED,
	ike.EventChildFailed:    adminv1.EventKind_EVENT_KIND_CHILD_FAILED,
	ike.EventCookieSent:     adminv1.EventKind_EVENT_KIND_COOKIE_SENT,
	ike.EventDropped:        adminv1.EventKind_EVENT_KIND_DROPPED,
	ike.EventChildRekeyed:   adminv1.EventKind_EVENT_KIND_CHILD_REKEYED,
	ike.EventIKERekeyed:     adminv1.EventKind_EVENT_KIND_IKE_REKEYED,
	ike.EventAddressChanged: adminv1.EventKind_EVENT_KIND_ADDRESS_CHANGED,
}

func eventPB(e *concentrator.SAEvent) *adminv1.Event {
	out := &adminv1.Event{Time: ts(e.Time), Kind: eventKinds[e.Kind], Node: e.Node, SpiI: e.SPIi, SpiR: e.SPIr,
		PeerId: e.PeerID, Proposal: e.Proposal, Reason: e.Reason, Initiator: e.Initiator}
	if e.Local.IsValid() {
		out.Local = e.Local.String()
	}
	if e.Remote.IsValid() {
		out.Remote = e.Remote.String()
	}
	if e.Notify != 0 {
		out.Notify = e.Notify.String()
	}
	if e.Child != nil {
		out.Child = childPB(e.Child)
	}
	return out
}
