package ike

import (
	"fmt"
	"net/netip"
	"time"
)

// Packet is an IKE message as it arrived: the UDP payload without the
// non-ESP marker, and the addresses it travelled between.
type Packet struct {
	Local, Remote netip.AddrPort
	Data          []byte
}

// Ready is what one engine step asks its caller to do, in the manner of
// etcd raft's Ready: commit Persist first; once every change of the batch
// is committed, apply DataPlane, then send Send. Events may be reported at
// any time. When a write fails, nothing of DataPlane and Send goes out and
// the caller tells the engine (Engine.PersistFailed); when it succeeds, it
// says so too (Engine.Committed). Batches of one engine are released in the
// order they were made; a batch with nothing to persist and no data-plane
// action whose messages are only IKE_SA_INIT responses or NAT-T keepalives
// reveals no persisted state and may go ahead of batches still waiting.
// Engine entry points append to a Ready; the caller reuses one with Reset.
type Ready struct {
	Persist   []Persist
	DataPlane []Action // InstallChild, RemoveChild, UpdateChild, SetSeqLimit, SkipSeq, CheckTraffic
	Send      []Send   // IKE messages and NAT-T keepalives
	Events    []Event
	EAP       []EAPRequest // for the EAP backend (eap.go)
}

// Reset empties the batch, keeping its storage.
func (r *Ready) Reset() {
	clear(r.Persist)
	clear(r.DataPlane)
	clear(r.Send)
	clear(r.Events)
	clear(r.EAP)
	r.Persist, r.DataPlane, r.Send, r.Events, r.EAP = r.Persist[:0], r.DataPlane[:0], r.Send[:0], r.Events[:0], r.EAP[:0]
}

// Empty reports a batch with nothing in it.
func (r *Ready) Empty() bool {
	return len(r.Persist) == 0 && len(r.DataPlane) == 0 && len(r.Send) == 0 && len(r.Events) == 0 && len(r.EAP) == 0
}

// Action is a data-plane change of a Ready batch: InstallChild,
// RemoveChild, UpdateChild, SetSeqLimit or SkipSeq; or a question to the
// data plane, CheckTraffic.
type Action interface{ isAction() }

// Send asks to send IKE messages (several for a fragmented message) from
// Local to Remote. On the NAT-T port the caller prepends the non-ESP
// marker. A Keepalive is a NAT-T keepalive instead (the single octet 0xFF
// from the NAT-T socket at Local, no marker); it has no Messages.
type Send struct {
	Local, Remote netip.AddrPort
	Messages      [][]byte
	Keepalive     bool
}

// InstallChild asks the data plane to install a CHILD_SA pair. Replaces
// is the inbound SPI of the SA this one rekeys, when we rekeyed it: the
// caller reports the new SA's first inbound traffic (Engine.ChildActive) so
// the old one goes only once the new one is in use.
//
// Sequence numbers (the reservation of ChildSA.OutSeqReserved): the first
// outbound packet carries OutSeq+1 (OutSeq is 0 for a new SA); the data
// plane never sends above OutSeqLimit and reports its progress
// (Engine.SeqProgress) once outbound crosses OutSeqLimit-OutSeqMargin.
// Inbound packets with a sequence number <= InSeqLow are refused (the
// replay window starts with its top at InSeqLow and every bit set).
type InstallChild struct {
	SPIi, SPIr   uint64
	PeerID       Identity
	Child        *ChildSA
	Replaces     uint32
	OutSeq       uint64
	OutSeqLimit  uint64
	OutSeqMargin uint64
	InSeqLow     uint64
}

// CheckTraffic asks for the inbound ESP packets of the IKE SA with our
// SPI SPI, each of its CHILD SAs' (by inbound SPI) counted since it was
// installed: its liveness check is due, and inbound ESP would make it
// needless. The caller answers with Engine.Traffic, at once or within
// Config.RetransmitTimeout (after that the check goes out unanswered).
// Only with Config.TrafficLiveness.
type CheckTraffic struct {
	SPI    uint64
	InSPIs []uint32
}

// TrafficUnknown is a count Engine.Traffic takes for a CHILD SA whose
// inbound packets the data plane could not count.
const TrafficUnknown = ^uint64(0)

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

// SetSeqLimit raises the outbound sequence number limit of the installed
// CHILD SA with inbound SPI InSPI to OutSeqLimit, a reservation that is
// committed once the batch's Persist is; OutSeqMargin is how far below the
// limit the data plane reports progress from now on.
type SetSeqLimit struct {
	InSPI        uint32
	OutSeqLimit  uint64
	OutSeqMargin uint64
}

// SkipSeq moves the outbound sequence number of the installed CHILD SA
// with inbound SPI InSPI on by Delta (never beyond its limit): a peer
// restored from persisted state asked for it (RFC 6311
// IPSEC_REPLAY_COUNTER_SYNC) so its replay window need not accept what it
// may have seen. It comes after the SetSeqLimit that makes room for it; a
// data plane that cannot do it may ignore it (strongSwan does).
type SkipSeq struct {
	InSPI uint32
	Delta uint64
}

// Persist asks the caller to record a state change of an established SA
// (one transaction each; docs/architecture.md, "Cluster semantics"). State is the SA
// after the change; it is nil for PersistDeleted. Version numbers the SA's
// persisted states (per SPI, increasing); the caller reports the outcome
// with Engine.Committed or Engine.PersistFailed. Nothing is persisted for
// liveness checks or keepalives unless they need a new message ID
// reservation.
type Persist struct {
	Kind     PersistKind
	SPI      uint64   // our IKE SPI
	OldSPI   uint64   // PersistIKERekeyed: our SPI of the replaced IKE SA
	Version  uint64   // the SA's state version (Engine.Committed)
	State    *SAState // nil for PersistDeleted
	Released []uint32 // inbound ESP SPIs no longer in use
	// PeerID is the SA's peer identity (the identity index, unique.go).
	PeerID Identity
	// Unique (PersistEstablished of an SA the peer started): what the
	// write does about the older SAs of PeerID (Config.UniqueIDs and the
	// peer's INITIAL_CONTACT).
	Unique UniqueAction
	// ExclusiveSelectors: the SA holds selectors in Config.Selectors (its
	// policy makes them its own, PeerPolicy.Exclusive); Selectors are the
	// ranges it holds after the change, for the other nodes of a cluster
	// (SelectorRegistry.SetRemote). Not set for other SAs.
	ExclusiveSelectors bool
	Selectors          []SelectorRange
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
	// PersistReserved: new ESP sequence number reservations (SeqProgress,
	// Restore).
	PersistReserved
	// PersistUpdated: anything else: a new message ID reservation, message
	// IDs learnt after a restore, or the full state again after a failed
	// write.
	PersistUpdated
)

var persistNames = [...]string{"", "established", "child-created", "child-rekeyed", "child-deleted",
	"ike-rekeyed", "address-changed", "deleted", "reserved", "updated"}

func (k PersistKind) String() string {
	if int(k) < len(persistNames) && persistNames[k] != "" {
		return persistNames[k]
	}
	return "persist"
}

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
	// Err, when Reason is empty, is the error behind the event, formatted
	// only by a consumer that reports it (Why): a flood's dropped
	// datagrams are counted, and their errors mostly never read.
	Err       error
	Child     *ChildSA
	Initiator bool // we are the original initiator of this IKE_SA
}

// Why is the event's reason: Reason, or else Err's text.
func (ev *Event) Why() string {
	if ev.Reason == "" && ev.Err != nil {
		return ev.Err.Error()
	}
	return ev.Reason
}

func (InstallChild) isAction() {}
func (RemoveChild) isAction()  {}
func (UpdateChild) isAction()  {}
func (SetSeqLimit) isAction()  {}
func (SkipSeq) isAction()      {}
func (CheckTraffic) isAction() {}

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
	InSPI, OutSPI uint32 // InSPI is ours (the peer sends with it)
	Proposal      Selected
	// keys holds both directions' keys (KeyIn, KeyOut) in one array:
	// encryption then integrity key of one direction, then of the other,
	// the inbound first if inFirst. One slice instead of four.
	keys              []byte
	LocalTS, RemoteTS []TrafficSelector
	Local, Remote     netip.AddrPort // outer addresses; ports are the UDP encapsulation ports
	Encap             bool           // UDP encapsulation (NAT-T)
	rekeying          bool           // our CREATE_CHILD_SA for it is outstanding
	overdue           bool           // restored past its rekey time: the scheduler places it at the first Tick
	inFirst           bool           // keys: the inbound direction's come first
	encrLen, integLen uint8          // keys: one direction's key lengths
	VirtualIP         netip.Addr     // the peer's virtual IP, if one was assigned
	Created           time.Time
	// The committed ESP sequence number reservation (seq.go): every
	// outbound number ever used is <= OutSeqReserved; InSeqLow is the
	// highest inbound number authenticated at the last write.
	OutSeqReserved, InSeqLow uint64

	seq        childSeq
	inSeen     uint64   // inbound ESP packets as the last liveness check counted them (Engine.Traffic)
	rekeyAt    stamp    // when we start rekeying it; zero: not us
	replacedBy *ChildSA // rekeyed: the successor; this one awaits its Delete
	retireAt   stamp    // we delete it then (or once the successor carries traffic)
	collision  *ChildSA // the peer rekeyed it while we were rekeying it too
	// collisionNonce is the lower nonce of the peer's colliding exchange.
	collisionNonce []byte
}

// KeyIn returns the keys the peer protects its ESP packets to us with.
func (c *ChildSA) KeyIn() ChildKeys { return c.half(c.inFirst) }

// KeyOut returns the keys we protect our ESP packets with.
func (c *ChildSA) KeyOut() ChildKeys { return c.half(!c.inFirst) }

func (c *ChildSA) half(first bool) ChildKeys {
	e, n := int(c.encrLen), int(c.encrLen)+int(c.integLen)
	if len(c.keys) != 2*n {
		return ChildKeys{}
	}
	k := c.keys[n : 2*n : 2*n]
	if first {
		k = c.keys[:n:n]
	}
	ck := ChildKeys{Encr: k[:e:e]}
	if c.integLen > 0 {
		ck.Integ = k[e:]
	}
	return ck
}

// setKeys keeps keys, both directions' keys laid out as the field keys
// holds them: each direction's encryption key (encrLen octets), then its
// integrity key (integLen), the inbound direction first if inFirst.
// prf+'s output for a CHILD SA is laid out so (childKeys).
func (c *ChildSA) setKeys(keys []byte, encrLen, integLen int, inFirst bool) error {
	if encrLen > 0xff || integLen > 0xff || len(keys) != 2*(encrLen+integLen) {
		return fmt.Errorf("ike: CHILD SA keys of %d octets for two directions of %d+%d", len(keys), encrLen, integLen)
	}
	c.keys, c.encrLen, c.integLen, c.inFirst = keys, uint8(encrLen), uint8(integLen), inFirst
	return nil
}

// RekeyAt returns when the engine will rekey the CHILD SA (zero: not scheduled).
func (c *ChildSA) RekeyAt() time.Time { return c.rekeyAt.Time() }

// event, send, persist and action append an engine product to the batch
// it belongs in (typed: an Event boxed in an interface cost an allocation
// per dropped datagram of a flood).
func (r *Ready) event(ev Event)    { r.Events = append(r.Events, ev) }
func (r *Ready) send(s Send)       { r.Send = append(r.Send, s) }
func (r *Ready) persist(p Persist) { r.Persist = append(r.Persist, p) }
func (r *Ready) action(a Action)   { r.DataPlane = append(r.DataPlane, a) }
