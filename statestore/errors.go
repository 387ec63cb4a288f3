package statestore

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors; the typed errors below match them with errors.Is.
var (
	ErrUnknownVersion = errors.New("statestore: unknown record version")
	ErrCorrupt        = errors.New("statestore: corrupt record")
	ErrUnknownKey     = errors.New("statestore: unknown cluster key")
	ErrSeal           = errors.New("statestore: sealed key material does not open")
	ErrNotFound       = errors.New("statestore: no such SA")
	ErrNotOwner       = errors.New("statestore: SA owned by another node")
	ErrExists         = errors.New("statestore: SA already stored")
	ErrSPIInUse       = errors.New("statestore: SPI in use")
	ErrFenced         = errors.New("statestore: node fenced (lease lost); not registered")
	ErrUnavailable    = errors.New("statestore: etcd unavailable")
	ErrQueueFull      = errors.New("statestore: persist queue full")
	ErrClosed         = errors.New("statestore: closed")
)

// VersionError is a record written in a layout this build does not know.
type VersionError struct {
	Key     string
	Version uint32
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("statestore: record %s: unknown version %d (this build reads %d)", e.Key, e.Version, RecordVersion)
}

func (e *VersionError) Is(target error) bool { return target == ErrUnknownVersion }

// CorruptError is a record that does not decode or is inconsistent.
type CorruptError struct {
	Key    string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("statestore: corrupt record %s: %s", e.Key, e.Reason)
}

func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// UnknownKeyError is a record sealed with a cluster key this node lacks.
type UnknownKeyError struct {
	Key   string
	KeyID uint32
}

func (e *UnknownKeyError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("statestore: unknown cluster key id %d", e.KeyID)
	}
	return fmt.Sprintf("statestore: record %s sealed with unknown cluster key id %d", e.Key, e.KeyID)
}

func (e *UnknownKeyError) Is(target error) bool { return target == ErrUnknownKey }

// SealError is sealed key material that fails authentication: the wrong
// key under a known id, tampering, or a record copied to another key.
type SealError struct {
	Key    string
	KeyID  uint32
	Reason string
}

func (e *SealError) Error() string {
	return fmt.Sprintf("statestore: record %s (cluster key %d): %s", e.Key, e.KeyID, e.Reason)
}

func (e *SealError) Is(target error) bool { return target == ErrSeal }

// OwnerError says who owns an SA that this node tried to write or take.
type OwnerError struct {
	SPI   uint64
	Owner Owner // zero when the SA has no owner record
}

func (e *OwnerError) Error() string {
	if e.Owner.Node == "" {
		return fmt.Sprintf("statestore: SA %016x: not owned by this node (no owner)", e.SPI)
	}
	return fmt.Sprintf("statestore: SA %016x: owned by %s", e.SPI, e.Owner)
}

func (e *OwnerError) Is(target error) bool { return target == ErrNotOwner }

// ErrAddressTaken: a virtual IP lease failed; the address is another
// identity's (or, for a held lease, no longer the identity's).
var ErrAddressTaken = errors.New("statestore: virtual IP leased to another identity")

// AddressTakenError is an Established change refused because its address
// lease (Change.Lease) did not hold. Holder is the address's holder at the
// time ("" if none).
type AddressTakenError struct {
	Addr   netip.Addr
	Holder string
}

func (e *AddressTakenError) Error() string {
	if e.Holder == "" {
		return fmt.Sprintf("statestore: virtual IP %s no longer leased", e.Addr)
	}
	return fmt.Sprintf("statestore: virtual IP %s leased to %q", e.Addr, e.Holder)
}

func (e *AddressTakenError) Is(target error) bool { return target == ErrAddressTaken }

// ErrRollback: a sealed record that opens but was written for another
// revision of its etcd key: an older value copied back over the current
// one, or put back after the key was deleted. The SA is not restored from
// it (its reservations would reuse ESP sequence numbers or message IDs).
var ErrRollback = errors.New("statestore: sealed record rolled back")

// RollbackError is a record whose binding (Bound: the key's create
// revision and version when it was written) is not the key's metadata as
// read (Found).
type RollbackError struct {
	Key          string
	Bound, Found Binding
	Reason       string // set when there is no record to compare: it is missing
}

func (e *RollbackError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("statestore: record %s rolled back: %s", e.Key, e.Reason)
	}
	return fmt.Sprintf("statestore: record %s rolled back: written as create revision %d version %d, found at create revision %d version %d",
		e.Key, e.Bound.CreateRevision, e.Bound.Version, e.Found.CreateRevision, e.Found.Version)
}

func (e *RollbackError) Is(target error) bool { return target == ErrRollback }
