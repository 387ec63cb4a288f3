package ike

import (
	"bytes"
	"crypto"
	"io"
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// Identity is an IKE identity: an ID payload's type and data.
type Identity struct {
	Type uint8
	Data []byte
}

// ParseIdentity reads an identity in strongSwan's notation (FQDN,
// user@fqdn, an IP address, or an X.500 DN such as "C=XX, O=Org, CN=gw1").
func ParseIdentity(s string) (Identity, error) {
	t, d, err := sig.ParseIdentity(s)
	return Identity{Type: t, Data: d}, err
}

func (id Identity) String() string {
	if id.Type == 0 {
		return "%any"
	}
	return sig.IdentityString(id.Type, id.Data)
}

// Equal reports whether two identities are the same type and value.
func (id Identity) Equal(o Identity) bool { return id.Type == o.Type && bytes.Equal(id.Data, o.Data) }

// IsZero reports an unset identity.
func (id Identity) IsZero() bool { return id.Type == 0 }

// PSKStore finds the pre-shared key of a peer. Implementations must be safe
// for concurrent use: every engine shard calls it.
type PSKStore interface {
	PSK(peer Identity) ([]byte, bool)
}

// PSKMap is an in-memory PSKStore keyed by identity string.
type PSKMap map[string][]byte

func (m PSKMap) PSK(peer Identity) ([]byte, bool) {
	k, ok := m[peer.String()]
	return k, ok
}

// AddressPool hands out virtual IPs (CP INTERNAL_IP4_ADDRESS). It must be
// safe for concurrent use. Claim takes an address a restored SA holds, so
// it is not handed out again: ErrAddressInUse if another peer holds it,
// ErrNotInPool if the pool does not have it (the engine then restores
// the SA without claiming it).
type AddressPool interface {
	Acquire(peer Identity) (netip.Addr, error)
	Claim(peer Identity, addr netip.Addr) error
	Release(netip.Addr)
}

// SendCertPolicy says when to send our certificate.
type SendCertPolicy uint8

const (
	SendCertAlways SendCertPolicy = iota
	SendCertIfAsked
)

// Credentials are our own identity and, for signature authentication, our
// key and certificate chain (DER, leaf first).
type Credentials struct {
	ID       Identity
	Signer   crypto.Signer
	Chain    [][]byte
	SendCert SendCertPolicy
}

// Config is an engine's configuration. It is read-only once an engine runs.
type Config struct {
	Local    Credentials
	PSKs     PSKStore
	Verifier *sig.Verifier // nil: peers cannot authenticate with certificates
	// CertReq is the CERTREQ data (SHA-1 hashes of the trusted CAs' public
	// keys) sent in IKE_SA_INIT responses; nil sends none.
	CertReq []byte

	// Tickets seals and opens session resumption tickets (RFC 5723,
	// resumption.go); nil: no tickets are issued and IKE_SESSION_RESUME is
	// refused. TicketLifetime is an issued ticket's lifetime
	// (DefaultTicketLifetime if 0).
	Tickets        TicketKeys
	TicketLifetime time.Duration

	// PublicKeys are the raw public keys (RFC 7670) of peers identified by
	// their key; nil: none.
	PublicKeys PublicKeyStore
	// EAP lets initiators that send no AUTH authenticate with EAP through
	// the backend (eap.go); nil refuses them.
	EAP *EAPConfig

	IKEProposals []ProposalSpec
	ESPProposals []ProposalSpec
	LocalTS      []TrafficSelector // our side, offered and narrowed against
	RemoteTS     []TrafficSelector // what peers may claim as theirs
	Pool         AddressPool       // nil: no virtual IPs
	Pool6        AddressPool       // nil: no virtual IPv6 addresses (CP INTERNAL_IP6_ADDRESS)
	DNS          []netip.Addr
	// Policies, when set, replace RemoteTS and Pool per peer identity
	// (policy.go): the first whose ID matches decides; a peer none matches
	// may claim no selectors.
	Policies []*PeerPolicy
	// Selectors records the selectors peers hold under exclusive policies;
	// shared by the engines of a node. nil with Policies: one per engine.
	Selectors *SelectorRegistry

	NATTPort          uint16 // our UDP encapsulation port, 4500
	ForceEncap        bool   // claim to be behind NAT so ESP is always UDP-encapsulated
	CookieThreshold   int    // half-open SAs above which IKE_SA_INIT needs a cookie; 0 = always
	HalfOpenTimeout   time.Duration
	RetransmitTimeout time.Duration
	RetransmitTries   int
	FragmentSize      int // max IKE message size before fragmenting (RFC 7383); 0 = 1280 - IP/UDP headers
	AllowSHA1Sigs     bool

	// DPDDelay: after this long without an authenticated message from the
	// peer, send a liveness check (RFC 7296 §2.4); 0 disables.
	DPDDelay time.Duration
	// TrafficLiveness: the caller counts each CHILD SA's authenticated
	// inbound ESP and answers CheckTraffic (Engine.Traffic), so that a
	// peer whose ESP keeps coming gets no liveness check (RFC 7296 §2.4:
	// one is needed when only outgoing traffic was seen).
	TrafficLiveness bool
	// ChildRekey decides when we rekey each CHILD SA we create or accept;
	// nil: we never start CHILD rekeys (the peer does).
	ChildRekey RekeyScheduler
	// IKERekeyAfter: rekey the IKE SA this long after it was established;
	// 0: never (the peer may).
	IKERekeyAfter time.Duration
	// MaxChildren bounds CHILD SAs per IKE SA (NO_ADDITIONAL_SAS beyond).
	MaxChildren int
	// MOBIKE enables RFC 4555 with peers that support it.
	MOBIKE bool
	// UniqueIDs: what a new IKE SA of a peer identity does about the older
	// ones (unique.go). The node deletes them, cluster-wide.
	UniqueIDs UniqueIDs
	// RekeyOverlap: after we rekey a CHILD SA, the old one stays until the
	// new one has received traffic or this long has passed; 0 deletes it
	// at once.
	RekeyOverlap time.Duration
	// MessageIDBlock: how many of our own IKE request message IDs are
	// reserved ahead in the persisted state (SAState.NextOutReserved), so
	// a restored SA never reuses one; 0 = DefaultMessageIDBlock.
	MessageIDBlock uint32
	// MsgIDSyncAEAD: after a restore, synchronise message IDs with RFC 6311
	// also over IKE SAs with an AEAD cipher (AES-GCM, ChaCha20-Poly1305).
	// Off by default: strongSwan (5.9 and later) derives those IVs from
	// the message ID and cannot encrypt its answer (message ID 0 once
	// more), so it deletes the IKE SA instead; such SAs probe (msgid.go).
	MsgIDSyncAEAD bool
	// KeepaliveInterval: NAT-T keepalives when we are really behind a NAT
	// (not merely claiming it to force encapsulation); 0 disables.
	KeepaliveInterval time.Duration

	// SPITag/SPITagMask fix bits of every IKE SPI this engine allocates
	// (node slot and shard: the routing hint of docs/architecture.md);
	// ESPSPITag/ESPSPITagMask the same for inbound ESP SPIs.
	SPITag, SPITagMask       uint64
	ESPSPITag, ESPSPITagMask uint32
	// IKESPIs and ESPSPIs, when set, hand out SPIs reserved cluster-wide
	// (create-if-absent in the state store) with the tag bits already in
	// them; when a pool runs dry the engine falls back to a random SPI with
	// the tag bits and counts it in Stats.UnreservedSPIs.
	IKESPIs func() (uint64, bool)
	ESPSPIs func() (uint32, bool)
	// ReturnIKESPI and ReturnESPSPI, when set, take back an SPI of those
	// pools that went out of use before any Persist named it (a half-open
	// SA that expired or failed IKE_AUTH, a rekey that failed): it is
	// still reserved for this node, so it can be handed out again.
	ReturnIKESPI func(uint64)
	ReturnESPSPI func(uint32)

	// Admission limits (admission.go); zero values take the defaults.
	MaxMessageSize       int   // any datagram larger is dropped (at most 65535)
	MaxInitSize          int   // IKE_SA_INIT requests larger are dropped
	MaxHalfOpen          int   // half-open SAs beyond which requests are dropped
	MaxHalfOpenPerPrefix int   // cookie-proven half-open SAs per source prefix
	MaxHalfOpenBytes     int64 // memory of half-open SAs
	HalfOpenPrefix4      int   // prefix length grouping IPv4 sources (32)
	HalfOpenPrefix6      int   // prefix length grouping IPv6 sources (64)
	MaxSAs               int   // IKE SAs in all (any state); 0: no cap

	Rand io.Reader

	// Wall converts an engine time to the wall date, at the wall clock's
	// offset from the monotonic one as it is now. The times the engine is
	// given (the now of Handle, Tick, …) are the caller's
	// monotonic-derived time (clock.Mono): its timers, lifetimes,
	// liveness checks and rekey schedule run on them, so a step of the
	// system clock moves none of them. Wall is used for what is compared
	// with dates from outside: certificate validity, session tickets'
	// expiry, and the times in SAState (Created, Established, RekeyAt),
	// which are wall dates as of the write and are converted back to
	// monotonic time once, in Restore. Nil: the times given are the wall
	// date too.
	Wall func(t time.Time) time.Time
}

// Defaults for unset Config fields.
const (
	DefaultHalfOpenTimeout   = 30 * time.Second
	DefaultRetransmitTimeout = 2 * time.Second
	DefaultRetransmitTries   = 5
	DefaultFragmentSize      = 1280 - 20 - 8 - 4 // IPv4 + UDP + non-ESP marker
	DefaultNATTPort          = 4500
	DefaultMaxChildren       = 8
	DefaultMessageIDBlock    = 16
)

func (c *Config) setDefaults() {
	if c.HalfOpenTimeout == 0 {
		c.HalfOpenTimeout = DefaultHalfOpenTimeout
	}
	if c.RetransmitTimeout == 0 {
		c.RetransmitTimeout = DefaultRetransmitTimeout
	}
	if c.RetransmitTries == 0 {
		c.RetransmitTries = DefaultRetransmitTries
	}
	if c.FragmentSize == 0 {
		c.FragmentSize = DefaultFragmentSize
	}
	if c.NATTPort == 0 {
		c.NATTPort = DefaultNATTPort
	}
	if c.MessageIDBlock == 0 {
		c.MessageIDBlock = DefaultMessageIDBlock
	}
	if c.MaxChildren == 0 {
		c.MaxChildren = DefaultMaxChildren
	}
	c.setAdmissionDefaults()
}
