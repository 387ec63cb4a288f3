package ike

import (
	"errors"
	"fmt"
)

// Error is an engine error that carries the Notify the peer is to be told.
// Notify is zero for errors that are answered with silence (e.g. a message
// that fails its integrity check is dropped, RFC 7296 §2.21).
type Error struct {
	Notify NotifyType
	Data   []byte // notification data, e.g. the accepted group for INVALID_KE_PAYLOAD
	Reason string
	Err    error
}

func (e *Error) Error() string {
	s := e.Reason
	if e.Notify != 0 {
		s = e.Notify.String() + ": " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(n NotifyType, format string, args ...any) *Error {
	return &Error{Notify: n, Reason: fmt.Sprintf(format, args...)}
}

// ParseError is a malformed message: the peer gets INVALID_SYNTAX (or, for
// an unknown critical payload, UNSUPPORTED_CRITICAL_PAYLOAD) once the
// message is authenticated; unauthenticated ones are dropped.
type ParseError struct {
	Payload PayloadType // payload being parsed, PayloadNone for the header
	Offset  int         // offset into the message (or the decrypted payload chain)
	Reason  string
}

func (e *ParseError) Error() string {
	if e.Payload == PayloadNone {
		return fmt.Sprintf("malformed IKE header at byte %d: %s", e.Offset, e.Reason)
	}
	return fmt.Sprintf("malformed %v payload at byte %d: %s", e.Payload, e.Offset, e.Reason)
}

// UnsupportedCriticalError is an unknown payload with the critical bit set.
type UnsupportedCriticalError struct{ Type PayloadType }

func (e *UnsupportedCriticalError) Error() string {
	return fmt.Sprintf("unsupported critical payload %d", uint8(e.Type))
}

// NotifyFor maps any engine error to the notify type the peer should get
// (0: answer nothing).
func NotifyFor(err error) NotifyType {
	var ie *Error
	if errors.As(err, &ie) {
		return ie.Notify
	}
	var uc *UnsupportedCriticalError
	if errors.As(err, &uc) {
		return UNSUPPORTED_CRITICAL_PAYLOAD
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		return INVALID_SYNTAX
	}
	return 0
}

// NotifyDataFor is the notification data that goes with NotifyFor(err):
// the one-octet payload type for UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296
// §3.10.1), the accepted group for INVALID_KE_PAYLOAD, and so on.
func NotifyDataFor(err error) []byte {
	var ie *Error
	if errors.As(err, &ie) {
		return ie.Data
	}
	var uc *UnsupportedCriticalError
	if errors.As(err, &uc) {
		return []byte{uint8(uc.Type)}
	}
	return nil
}

// Sentinel errors for conditions handled silently.
var (
	ErrNotIKEv2       = errors.New("not an IKEv2 message")
	ErrUnknownSA      = errors.New("no IKE SA for these SPIs")
	ErrTooLarge       = errors.New("message larger than ike max_message_size")
	ErrRetransmission = errors.New("retransmitted request")
	ErrStaleMessage   = errors.New("message ID outside the window")
	ErrIntegrity      = errors.New("integrity check failed")
)
