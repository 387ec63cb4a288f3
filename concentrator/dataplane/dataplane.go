// Package dataplane defines how negotiated CHILD SAs reach the packet path.
// Implementations: memory (records only, for control-plane tests and load
// tests); kernel XFRM and user-space ESP follow.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Keys are one direction's keys. Encr includes the salt of AEAD ciphers.
type Keys struct {
	Encr  []byte
	Integ []byte
}

// ChildSA is an ESP SA pair in tunnel mode, as negotiated.
type ChildSA struct {
	InSPI, OutSPI uint32         // InSPI: the peer sends to us with it
	Local, Remote netip.AddrPort // outer addresses; UDP encapsulation ports when Encap
	Encap         bool
	EncrID        uint16 // IKEv2 transform IDs
	EncrKeyBits   uint16
	IntegID       uint16
	ESN           bool
	In, Out       Keys
	LocalTS       []Selector
	RemoteTS      []Selector
	VirtualIP     netip.Addr // the peer's virtual IP, routed to it
	PeerID        string
	IKESPIi       uint64
	IKESPIr       uint64
	Created       time.Time
}

// Selector is one traffic selector: an address range and optional
// protocol and port range.
type Selector struct {
	Start, End         netip.Addr
	IPProto            uint8
	StartPort, EndPort uint16
}

// Counters are one CHILD SA's traffic counters.
type Counters struct {
	InSPI                 uint32
	InBytes, OutBytes     uint64
	InPackets, OutPackets uint64
}

// DataPlane installs and removes CHILD SAs. Install and Remove are
// idempotent: installing what is installed, or removing what is gone,
// succeeds. Implementations are safe for concurrent use.
type DataPlane interface {
	Name() string
	Install(ctx context.Context, sa *ChildSA) error
	Remove(ctx context.Context, inSPI uint32) error
	List(ctx context.Context) ([]*ChildSA, error)
	Counters(ctx context.Context) ([]Counters, error)
	Close() error
}

// AddressUpdater is implemented by data planes that can move an installed
// CHILD SA to new outer addresses in place (NAT rebinding, MOBIKE).
type AddressUpdater interface {
	UpdateAddresses(ctx context.Context, inSPI uint32, local, remote netip.AddrPort) error
}

// SACounter is implemented by data planes that can read one CHILD SA's
// counters cheaply (the node watches a rekeyed SA's first traffic).
type SACounter interface {
	Counter(ctx context.Context, inSPI uint32) (Counters, error)
}

// Expiry is a data plane telling the node that a CHILD SA must be rekeyed
// now (soft: its sequence numbers or lifetime are nearly used up) or is
// unusable (hard).
type Expiry struct {
	InSPI  uint32
	Hard   bool
	Reason string // e.g. "sequence numbers", "packet limit", "byte limit"
}

// ExpiryReporter is implemented by data planes that report expiries; the
// node rekeys (soft) or deletes (hard) the CHILD SA.
type ExpiryReporter interface {
	Expiries() <-chan Expiry
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("dataplane: closed")

// InstallError wraps a failed install with the SA's SPIs.
type InstallError struct {
	InSPI, OutSPI uint32
	Err           error
}

func (e *InstallError) Error() string {
	return fmt.Sprintf("install CHILD_SA %08x_i %08x_o: %v", e.InSPI, e.OutSPI, e.Err)
}
func (e *InstallError) Unwrap() error { return e.Err }

// Report is a data plane's own counters since it started, for metrics:
// traffic totals that never go down (SAs that are gone included) and
// packets dropped by reason.
type Report struct {
	InBytes, OutBytes     uint64
	InPackets, OutPackets uint64
	// Drops by reason: each data plane has a fixed set of reason names
	// (no SPI, address or peer in them).
	Drops map[string]uint64
}

// Reporter is implemented by data planes that report their counters.
// Report is meant for scrape time: it may cost a walk over the SAs, never
// anything per packet.
type Reporter interface {
	Report(ctx context.Context) (Report, error)
}
