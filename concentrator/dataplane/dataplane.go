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

	// ESP sequence numbers of an SA that is restored or moved with its
	// keys (with AES-GCM and ChaCha20-Poly1305 the IV is the sequence
	// number, so a number must never be used twice with one key). All are
	// 64-bit; without ESN they must fit in 32 bits.
	//
	// OutSeq is the last outbound sequence number assumed used: the first
	// packet carries OutSeq+1 (0 for a new SA). OutSeqLimit is the highest
	// number the SA may send (the committed reservation; 0: no limit, for
	// callers that reserve nothing); SetSeqLimit raises it. OutSeqMargin
	// tells when to report progress (SeqReporter): see SeqProgress.
	// InSeqLow is the highest inbound number authenticated before: the
	// replay window starts with its top there and every bit set, so
	// inbound packets with a number <= InSeqLow are refused.
	OutSeq, OutSeqLimit, OutSeqMargin uint64
	InSeqLow                          uint64
}

// SeqLimiter is implemented by data planes that honour OutSeqLimit. The
// user-space data plane refuses to send above the limit; the kernel (xfrm)
// cannot, so there the margin between the progress report and the limit is
// the time the node has to commit the next reservation. SetSeqLimit also
// re-arms the outbound progress report (see SeqProgress).
type SeqLimiter interface {
	SetSeqLimit(ctx context.Context, inSPI uint32, limit uint64) error
}

// SeqProgress reports a CHILD SA's sequence numbers: OutSeq is the last
// outbound number used, InSeq the highest inbound number authenticated.
//
// When reports come: let base be the outbound number of the SA's last
// outbound report (OutSeq before the first), grant = limit-base and
// margin = max(OutSeqMargin, grant/2). The outbound report comes once when
// the outbound number reaches limit-margin (once per limit: SetSeqLimit
// re-arms it; no limit, or a limit not above base, no report). The inbound
// report comes each time the inbound number has advanced by 2*margin since
// InSeqLow or the last inbound report. So when each report is answered
// with limit = OutSeq + block, the margin is block/2 however the block
// grows, the next report comes block/2 numbers later, and the inbound step
// is one block. A report carries both current numbers, whichever caused it.
type SeqProgress struct {
	InSPI         uint32
	OutSeq, InSeq uint64
}

// SeqReporter is implemented by data planes that report SeqProgress. The
// channel is buffered; a data plane that finds it full tries again later
// (user space: at the next packet) rather than block the packet path.
type SeqReporter interface {
	SeqProgress() <-chan SeqProgress
}

// SeqMargin returns the effective reporting margin of the rule above for
// an SA with OutSeqMargin margin, base and limit, and the outbound number
// at which progress is reported (0: none: no limit, or nothing granted).
func SeqMargin(margin, base, limit uint64) (eff, threshold uint64) {
	if limit == 0 || limit <= base {
		return margin, 0
	}
	eff = max(margin, (limit-base)/2)
	if eff >= limit {
		return eff, 1
	}
	return eff, limit - eff
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
// succeeds. List may leave the keys out (the user-space plane does not
// keep them twice). Implementations are safe for concurrent use.
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

// TrafficCounter is implemented by data planes that count each CHILD
// SA's authenticated inbound ESP and read many counts at once cheaply (the
// kernel's in one netlink datagram): the node asks it when liveness checks
// are due (ike.CheckTraffic), and a peer whose ESP keeps coming gets none.
type TrafficCounter interface {
	// InboundPackets sets packets[i] to the inbound ESP packets
	// authenticated for the CHILD SA with inbound SPI inSPIs[i] since it
	// was installed, or to ^uint64(0) where it cannot tell.
	InboundPackets(ctx context.Context, inSPIs []uint32, packets []uint64)
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

// Fencer is implemented by data planes that can stop outbound ESP at
// once: a node whose state store lease is about to lapse must not send for
// the SAs it owns (another node may take them over and continue their
// sequence numbers). SetFenced(false) resumes after the node registered
// again and reclaimed its SAs.
type Fencer interface {
	SetFenced(fenced bool)
}

// UnknownSPIReporter is implemented by data planes that see inbound ESP
// in user space: f is called (on the receive path: it must not block) for
// every ESP packet whose SPI has no CHILD SA here, so that the node can
// claim the SA from the node that owns it.
type UnknownSPIReporter interface {
	OnUnknownSPI(f func(spi uint32))
}

// Mapping is authenticated ESP-in-UDP for a CHILD SA that came from
// another address or port than the SA sends to: the peer's NAT re-mapped
// it. The kernel reports such changes as XFRM_MSG_MAPPING events.
type Mapping struct {
	InSPI  uint32         // the CHILD SA's inbound SPI
	Remote netip.AddrPort // where the packet came from
}

// MappingReporter is implemented by data planes that report NAT mapping
// changes: f is called (it must not block) at most about once a second per
// CHILD SA while its ESP keeps coming from the new address. The node asks
// the engine to confirm the new address (ike.Engine.PeerMoved).
type MappingReporter interface {
	OnMapping(f func(Mapping))
}
