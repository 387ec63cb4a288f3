package ike

import (
	"net/netip"
	"time"
)

// Packet is an IKE message as it arrived: the UDP payload without the
// non-ESP marker, and the addresses it travelled between.
type Packet struct {
	Local, Remote netip.AddrPort
	Data          []byte
}

// Action is what the engine asks its caller to do. The caller performs
// actions in order; persistence (later) precedes sends.
type Action interface{ isAction() }

// Send asks to send IKE messages (several for a fragmented message) from
// Local to Remote. On the NAT-T port the caller prepends the non-ESP marker.
type Send struct {
	Local, Remote netip.AddrPort
	Messages      [][]byte
}

// InstallChild asks the data plane to install a CHILD_SA pair. Replaces
// is the inbound SPI of the SA this one rekeys, when we rekeyed it: the
// caller reports the new SA's first inbound traffic (Engine.ChildActive) so
// the old one goes only once the new one is in use.
type InstallChild struct {
	SPIi, SPIr uint64
	PeerID     Identity
	Child      *ChildSA
	Replaces   uint32
}

// Keepalive asks to send a NAT-T keepalive (the single octet 0xFF) from
// the NAT-T socket at Local to Remote.
type Keepalive struct {
	Local, Remote netip.AddrPort
}

// RemoveChild asks the data plane to remove a CHILD_SA pair.
type RemoveChild struct {
	SPIi, SPIr uint64
	Child      *ChildSA
}

// UpdateChild asks the data plane to move an installed CHILD SA to the
// outer addresses now in Child.Local/Child.Remote (NAT rebinding, MOBIKE).
type UpdateChild struct {
	SPIi, SPIr uint64
	PeerID     Identity
	Child      *ChildSA
}

// Persist asks the caller to record a state change of an established SA
// (one transaction each; DESIGN.md "What is persisted"). State is the SA
// after the change; it is nil for PersistDeleted. Nothing is persisted for
// liveness checks or keepalives.
type Persist struct {
	Kind     PersistKind
	SPI      uint64   // our IKE SPI
	OldSPI   uint64   // PersistIKERekeyed: our SPI of the replaced IKE SA
	State    *SAState // nil for PersistDeleted
	Released []uint32 // inbound ESP SPIs no longer in use
}

// PersistKind names the state change.
type PersistKind uint8

const (
	PersistEstablished PersistKind = iota + 1
	PersistChildCreated
	PersistChildRekeyed
	PersistChildDeleted
	PersistIKERekeyed
	PersistAddressChanged
	PersistDeleted
)

// Event reports something worth a log line and a metric.
type Event struct {
	Kind       EventKind
	SPIi, SPIr uint64
	Local      netip.AddrPort
	Remote     netip.AddrPort
	PeerID     Identity
	Proposal   string
	Notify     NotifyType // the notify sent or received, if any
	Reason     string
	Child      *ChildSA
	Initiator  bool // we are the original initiator of this IKE_SA
}

func (Send) isAction()         {}
func (InstallChild) isAction() {}
func (RemoveChild) isAction()  {}
func (Event) isAction()        {}
func (UpdateChild) isAction()  {}
func (Keepalive) isAction()    {}
func (Persist) isAction()      {}

// EventKind names an Event.
type EventKind uint8

const (
	EventIKEEstablished EventKind = iota + 1
	EventIKEDeleted
	EventIKEFailed // a handshake that did not complete
	EventChildInstalled
	EventChildDeleted
	EventChildFailed
	EventCookieSent
	EventDropped // a message dropped (malformed, unknown SA, integrity)
	EventChildRekeyed
	EventIKERekeyed
	EventAddressChanged
)

var eventNames = [...]string{
	EventIKEEstablished: "IKE_SA established",
	EventIKEDeleted:     "IKE_SA deleted",
	EventIKEFailed:      "IKE_SA failed",
	EventChildInstalled: "CHILD_SA installed",
	EventChildDeleted:   "CHILD_SA deleted",
	EventChildFailed:    "CHILD_SA failed",
	EventCookieSent:     "cookie demanded",
	EventDropped:        "message dropped",
	EventChildRekeyed:   "CHILD_SA rekeyed",
	EventIKERekeyed:     "IKE_SA rekeyed",
	EventAddressChanged: "IKE_SA addresses updated",
}

func (k EventKind) String() string {
	if int(k) < len(eventNames) && eventNames[k] != "" {
		return eventNames[k]
	}
	return "event"
}

// ChildKeys are one direction's ESP keys.
type ChildKeys struct {
	Encr  []byte // with the 4-byte salt for AEAD ciphers
	Integ []byte
}

// ChildSA is a negotiated ESP SA pair in tunnel mode.
type ChildSA struct {
	InSPI, OutSPI     uint32 // InSPI is ours (the peer sends with it)
	Proposal          Selected
	KeyIn, KeyOut     ChildKeys
	LocalTS, RemoteTS []TrafficSelector
	Local, Remote     netip.AddrPort // outer addresses; ports are the UDP encapsulation ports
	Encap             bool
	VirtualIP         netip.Addr // the peer's virtual IP, if one was assigned
	Created           time.Time

	rekeyAt    time.Time // when we start rekeying it; zero: not us
	rekeying   bool      // our CREATE_CHILD_SA for it is outstanding
	replacedBy *ChildSA  // rekeyed: the successor; this one awaits its Delete
	retireAt   time.Time // we delete it then (or once the successor carries traffic)
	collision  *ChildSA  // the peer rekeyed it while we were rekeying it too
	// collisionNonce is the lower nonce of the peer's colliding exchange.
	collisionNonce []byte
}

// RekeyAt returns when the engine will rekey the CHILD SA (zero: not scheduled).
func (c *ChildSA) RekeyAt() time.Time { return c.rekeyAt }
