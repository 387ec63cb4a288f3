package statestore

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"google.golang.org/protobuf/proto"
)

// RecordVersion is the record layout this build writes. It also reads
// legacyRecordVersion, the layout before records were bound to their
// key's revision (rewritten in this one on the next write, or by Rewrap).
const RecordVersion = 2

const legacyRecordVersion = 1

// Binding is the etcd metadata a sealed record is bound to: the create
// revision of the key it is stored under and the version of that key the
// write gives it. Both are in the AAD; a reader compares them with the
// key's metadata as read, so that an older value copied back over the
// current one (the key's version moved on) or a key deleted and created
// again (its create revision moved on) gives *RollbackError.
type Binding struct {
	CreateRevision int64
	Version        int64
}

// next is the binding of the write that follows one at b.
func (b Binding) next() Binding { return Binding{b.CreateRevision, b.Version + 1} }

// Suite names negotiated algorithms by their IKEv2 transform IDs.
type Suite struct {
	Encr       uint16    // ENCR transform ID
	EncrKeyLen uint16    // bits; 0 for fixed-length ciphers
	Integ      uint16    // 0 for AEAD
	PRF        uint16    // IKE SA only
	Group      uint16    // key exchange; 0: none
	ESN        uint16    // CHILD SA only
	AddKE      [7]uint16 // additional key exchanges ADDKE1..7 (RFC 9370); 0: none
}

// Identity is a peer identity (IKEv2 ID type and data).
type Identity struct {
	Type uint8
	Data []byte
}

// CertAttrs are the attributes of a peer's authenticated certificate that
// policies match (the engine's CertAttrs).
type CertAttrs struct {
	Issuer, Subject string
	SANs            []string
	EKUs, Policies  []string
}

// TrafficSelector is one IKEv2 traffic selector.
type TrafficSelector struct {
	IPProto            uint8
	StartPort, EndPort uint16
	Start, End         netip.Addr
}

// ChildKeys are one direction's ESP keys.
type ChildKeys struct {
	Encr  []byte // with the salt for AEAD ciphers
	Integ []byte
}

// ChildRecord is a CHILD SA pair as stored.
type ChildRecord struct {
	InSPI, OutSPI     uint32 // InSPI is ours (owned cluster-wide)
	Suite             Suite
	KeyIn, KeyOut     ChildKeys // sealed in etcd
	LocalTS, RemoteTS []TrafficSelector
	Encap             bool
	// OutSeqReserved: every outbound ESP sequence number ever used with
	// KeyOut is <= this (committed); a restored CHILD SA sends from
	// OutSeqReserved+1. InSeqLow: the highest authenticated inbound
	// sequence number when written; a restored CHILD SA refuses <= this.
	// SeqBlock: the size of the next reservation block (0: initial).
	OutSeqReserved, InSeqLow, SeqBlock uint64
	Local, Remote                      netip.AddrPort // zero: the IKE SA's addresses
	Created                            time.Time
	RekeyAt                            time.Time // zero: none scheduled
}

// SARecord is everything a node needs to continue an IKE SA that another
// node (or its own previous life) established: no re-authentication.
// Nonces and the IKE_SA_INIT messages are not kept; they are not needed
// once the SA is authenticated.
type SARecord struct {
	SPIi, SPIr             uint64
	Initiator              bool  // we are the original initiator
	State                  uint8 // the engine's state code
	Suite                  Suite
	SKd, SKai, SKar        []byte // sealed in etcd
	SKei, SKer, SKpi, SKpr []byte // sealed in etcd
	NextIn, NextOut        uint32 // message IDs: peer's next request, our next request
	NextOutReserved        uint32 // every request ID we ever sent is below this
	Local, Remote          netip.AddrPort
	NATLocal, NATRemote    bool
	Flags                  uint32 // peer capabilities, engine-defined bits
	PeerID                 Identity
	PeerCert               *CertAttrs // nil: the peer authenticated without a certificate
	VirtualIP              netip.Addr
	VirtualIP6             netip.Addr // a dual-stack peer's virtual IPv6 address
	Created, Established   time.Time
	RekeyAt                time.Time // zero: none scheduled
	Children               []ChildRecord
}

// LocalSPI is our IKE SPI, the SA's name in the store.
func (r *SARecord) LocalSPI() uint64 {
	if r.Initiator {
		return r.SPIi
	}
	return r.SPIr
}

// InSPIs lists the inbound ESP SPIs of the CHILD SAs.
func (r *SARecord) InSPIs() []uint32 {
	s := make([]uint32, len(r.Children))
	for i := range r.Children {
		s[i] = r.Children[i].InSPI
	}
	return s
}

// Codec turns records into sealed bytes and back.
type Codec struct {
	Keys *Keyring
}

// Marshal encodes r for the record key name (the key within the cluster
// prefix, such as "sa/00000000000000ff"), sealing its key material.
//
// at is the binding the write gives the record: the key's create
// revision and the version it has once written (see Binding).
func (c Codec) Marshal(name string, r *SARecord, at Binding) ([]byte, error) {
	return c.marshal(name, r, at, false)
}

// MarshalInline is Marshal for a record that holds all of the SA's
// reservations (store layout 5): readers then neither need nor expect a
// seq/<spi> key (decodeRec). The mark is in the authenticated clear part.
func (c Codec) MarshalInline(name string, r *SARecord, at Binding) ([]byte, error) {
	return c.marshal(name, r, at, true)
}

func (c Codec) marshal(name string, r *SARecord, at Binding, inline bool) ([]byte, error) {
	sa := toPB(r)
	sa.ReservationsInline = inline
	pub, err := proto.MarshalOptions{Deterministic: true}.Marshal(sa)
	if err != nil {
		return nil, err
	}
	sec, err := proto.Marshal(secretsToPB(r))
	if err != nil {
		return nil, err
	}
	id, sealed, err := c.Keys.Seal(sec, aadAt(name, pub, at))
	if err != nil {
		return nil, err
	}
	return assemble(pub, id, sealed, at), nil
}

// assemble writes Record{version, sa, key_id, sealed} (or SeqRecord, laid
// out alike) by hand so that the authenticated bytes of the body are
// exactly the stored ones.
func assemble(body []byte, keyID uint32, sealed []byte, at Binding) []byte {
	out := assembleLayout(RecordVersion, body, keyID, sealed)
	out = appendTag(out, 5, 0)
	out = appendVarint(out, uint64(at.CreateRevision))
	out = appendTag(out, 6, 0)
	return appendVarint(out, uint64(at.Version))
}

// assembleLayout writes the fields common to both layouts.
func assembleLayout(version uint32, body []byte, keyID uint32, sealed []byte) []byte {
	out := make([]byte, 0, len(body)+len(sealed)+40)
	out = appendTag(out, 1, 0)
	out = appendVarint(out, uint64(version))
	out = appendTag(out, 2, 2)
	out = appendVarint(out, uint64(len(body)))
	out = append(out, body...)
	out = appendTag(out, 3, 0)
	out = appendVarint(out, uint64(keyID))
	out = appendTag(out, 4, 2)
	out = appendVarint(out, uint64(len(sealed)))
	return append(out, sealed...)
}

// Unmarshal decodes and opens a record stored under name, whose key has
// the metadata at as read. Errors: *VersionError, *CorruptError,
// *UnknownKeyError, *SealError, *RollbackError (the record opens but was
// written for another revision of the key: an older value put back).
// Records in the legacy layout carry no binding and are accepted.
func (c Codec) Unmarshal(name string, data []byte, at Binding) (*SARecord, error) {
	r, _, err := c.unmarshal(name, data, at)
	return r, err
}

// unmarshal is Unmarshal, also telling whether the record holds all of
// its SA's reservations (MarshalInline).
func (c Codec) unmarshal(name string, data []byte, at Binding) (*SARecord, bool, error) {
	rec, err := splitRecord(data)
	if err != nil {
		return nil, false, &CorruptError{Key: name, Reason: err.Error()}
	}
	pub := rec.body
	var sa pb.IKESA
	if err := proto.Unmarshal(pub, &sa); err != nil {
		return nil, false, &CorruptError{Key: name, Reason: "SA: " + err.Error()}
	}
	plain, err := c.open(name, rec, at)
	if err != nil {
		return nil, false, err
	}
	if sa.ReservationsInline && rec.version != RecordVersion {
		// Only bound records hold their reservations alone: a legacy
		// record could be put back over a newer one unnoticed.
		return nil, false, &CorruptError{Key: name, Reason: "reservations inline in an unbound record"}
	}
	var sec pb.Secrets
	if err := proto.Unmarshal(plain, &sec); err != nil {
		return nil, false, &CorruptError{Key: name, Reason: "secrets: " + err.Error()}
	}
	r, err := fromPB(&sa, &sec)
	if err != nil {
		return nil, false, &CorruptError{Key: name, Reason: err.Error()}
	}
	return r, sa.ReservationsInline, nil
}

// Reservations are an SA's sequence number and message ID reservations,
// stored apart from its record (under seq/<spi>) so that renewing them is
// a small write; from store layout 5 records hold them (MarshalInline).
type Reservations struct {
	NextOutReserved uint32
	NextIn, NextOut uint32 // the message IDs when written
	Children        []ChildReservation
}

// ChildReservation is one CHILD SA's part of Reservations.
type ChildReservation struct {
	InSPI                              uint32
	OutSeqReserved, InSeqLow, SeqBlock uint64
}

// ReservationsOf takes the reservations out of a record.
func ReservationsOf(r *SARecord) *Reservations {
	res := &Reservations{NextOutReserved: r.NextOutReserved, NextIn: r.NextIn, NextOut: r.NextOut,
		Children: make([]ChildReservation, len(r.Children))}
	for i := range r.Children {
		c := &r.Children[i]
		res.Children[i] = ChildReservation{InSPI: c.InSPI, OutSeqReserved: c.OutSeqReserved, InSeqLow: c.InSeqLow, SeqBlock: c.SeqBlock}
	}
	return res
}

// Apply raises r's reservations and message IDs to those of res where
// they are higher (they only ever grow, so the higher one is the later);
// CHILD SAs that r does not hold are ignored.
func (r *SARecord) Apply(res *Reservations) {
	if res == nil {
		return
	}
	r.NextOutReserved = max(r.NextOutReserved, res.NextOutReserved)
	r.NextIn = max(r.NextIn, res.NextIn)
	r.NextOut = max(r.NextOut, res.NextOut)
	for _, cr := range res.Children {
		for i := range r.Children {
			if c := &r.Children[i]; c.InSPI == cr.InSPI {
				c.OutSeqReserved = max(c.OutSeqReserved, cr.OutSeqReserved)
				c.InSeqLow = max(c.InSeqLow, cr.InSeqLow)
				c.SeqBlock = max(c.SeqBlock, cr.SeqBlock)
			}
		}
	}
}

// MarshalReservations encodes res for the key name ("seq/<spi>"),
// authenticated with the cluster key: a lowered reservation would make a
// restored SA reuse sequence numbers, that is AES-GCM nonces.
// at is the binding the write gives it, as for Marshal.
func (c Codec) MarshalReservations(name string, res *Reservations, at Binding) ([]byte, error) {
	m := &pb.Reservations{NextOutReserved: res.NextOutReserved, NextIn: res.NextIn, NextOut: res.NextOut,
		Children: make([]*pb.ChildReservation, len(res.Children))}
	for i, cr := range res.Children {
		m.Children[i] = &pb.ChildReservation{SpiIn: cr.InSPI, OutSeqReserved: cr.OutSeqReserved, InSeqLow: cr.InSeqLow, SeqBlock: cr.SeqBlock}
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	id, tag, err := c.Keys.Seal(nil, aadAt(name, body, at))
	if err != nil {
		return nil, err
	}
	return assemble(body, id, tag, at), nil
}

// UnmarshalReservations decodes and authenticates reservations stored
// under name, whose key has the metadata at as read. Errors as Unmarshal.
func (c Codec) UnmarshalReservations(name string, data []byte, at Binding) (*Reservations, error) {
	rec, err := splitRecord(data)
	if err != nil {
		return nil, &CorruptError{Key: name, Reason: err.Error()}
	}
	body := rec.body
	if _, err := c.open(name, rec, at); err != nil {
		return nil, err
	}
	var m pb.Reservations
	if err := proto.Unmarshal(body, &m); err != nil {
		return nil, &CorruptError{Key: name, Reason: "reservations: " + err.Error()}
	}
	res := &Reservations{NextOutReserved: m.NextOutReserved, NextIn: m.NextIn, NextOut: m.NextOut,
		Children: make([]ChildReservation, len(m.Children))}
	for i, cr := range m.Children {
		res.Children[i] = ChildReservation{InSPI: cr.SpiIn, OutSeqReserved: cr.OutSeqReserved, InSeqLow: cr.InSeqLow, SeqBlock: cr.SeqBlock}
	}
	return res, nil
}

// open authenticates a split record stored under name (key metadata at)
// and returns its sealed plaintext: first the seal (a record that does not
// open is tampered with, whatever its binding), then the binding.
func (c Codec) open(name string, rec splitRec, at Binding) ([]byte, error) {
	if rec.version != RecordVersion && rec.version != legacyRecordVersion {
		return nil, &VersionError{Key: name, Version: rec.version}
	}
	a := aad(name, rec.body)
	if rec.version == RecordVersion {
		a = aadAt(name, rec.body, rec.at)
	}
	plain, err := c.Keys.Open(rec.keyID, rec.sealed, a)
	if err != nil {
		switch e := err.(type) {
		case *UnknownKeyError:
			e.Key = name
		case *SealError:
			e.Key = name
		}
		return nil, err
	}
	if rec.version == RecordVersion && rec.at != at {
		return nil, &RollbackError{Key: name, Bound: rec.at, Found: at}
	}
	return plain, nil
}

// aadAt is the AAD of a record in the current layout: the legacy AAD and
// the binding, fixed-size at the end.
func aadAt(name string, pub []byte, at Binding) []byte {
	a := aad(name, pub)
	a = binary.BigEndian.AppendUint64(a, uint64(at.CreateRevision))
	return binary.BigEndian.AppendUint64(a, uint64(at.Version))
}

func aad(name string, pub []byte) []byte {
	a := make([]byte, 0, len(name)+1+len(pub))
	a = append(a, name...)
	a = append(a, 0)
	return append(a, pub...)
}

// Wire helpers: the outer Record is tiny and fixed, so it is written and
// read by hand; this keeps the authenticated SA bytes byte-exact.

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, field, wire int) []byte { return appendVarint(b, uint64(field<<3|wire)) }

func readVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("bad varint")
}

// splitRec is a Record or SeqRecord split into its outer fields.
type splitRec struct {
	version uint32
	body    []byte // the SA, or the reservations
	keyID   uint32
	sealed  []byte
	at      Binding // RecordVersion: the binding (fields 5 and 6)
}

func splitRecord(b []byte) (splitRec, error) {
	var r splitRec
	var seen [7]bool
	for len(b) > 0 {
		tag, n, err := readVarint(b)
		if err != nil {
			return r, err
		}
		b = b[n:]
		field, wire := tag>>3, tag&7
		var v uint64
		var bytes []byte
		switch wire {
		case 0:
			if v, n, err = readVarint(b); err != nil {
				return r, err
			}
			b = b[n:]
		case 1, 5:
			n = 8
			if wire == 5 {
				n = 4
			}
			if len(b) < n {
				return r, fmt.Errorf("field %d truncated", field)
			}
			b = b[n:]
		case 2:
			l, n, err := readVarint(b)
			if err != nil {
				return r, err
			}
			b = b[n:]
			if l > uint64(len(b)) {
				return r, fmt.Errorf("field %d truncated", field)
			}
			bytes, b = b[:l], b[l:]
		default:
			return r, fmt.Errorf("field %d: bad wire type %d", field, wire)
		}
		if field == 0 {
			return r, fmt.Errorf("field number 0")
		}
		if field > 6 || field > 4 && wire != 0 {
			// A later version's field (5 and 6 other than ours: then a
			// binding is missing, below); the version check decides.
			continue
		}
		want := uint64(0)
		if field == 2 || field == 4 {
			want = 2
		}
		if wire != want {
			return r, fmt.Errorf("field %d: wire type %d", field, wire)
		}
		if seen[field] {
			return r, fmt.Errorf("field %d repeated", field)
		}
		seen[field] = true
		switch field {
		case 1, 3:
			if v > 1<<32-1 {
				return r, fmt.Errorf("field %d out of range", field)
			}
			if field == 1 {
				r.version = uint32(v)
			} else {
				r.keyID = uint32(v)
			}
		case 2:
			r.body = bytes
		case 4:
			r.sealed = bytes
		case 5, 6:
			if v > 1<<63-1 {
				return r, fmt.Errorf("field %d out of range", field)
			}
			if field == 5 {
				r.at.CreateRevision = int64(v)
			} else {
				r.at.Version = int64(v)
			}
		}
	}
	if !seen[1] {
		return r, fmt.Errorf("no version")
	}
	if (r.version == RecordVersion || r.version == legacyRecordVersion) && (!seen[2] || !seen[4]) {
		return r, fmt.Errorf("missing SA or sealed secrets")
	}
	if r.version == RecordVersion && (!seen[5] || !seen[6]) {
		return r, fmt.Errorf("missing revision binding")
	}
	return r, nil
}
