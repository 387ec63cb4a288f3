package ike

import (
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// reassembly collects the SKF fragments of one message (RFC 7383 §2.6).
// Every fragment is authenticated before it is kept, and the number, total
// size and age of what is kept are bounded, so unauthenticated or
// endless fragments cannot exhaust memory.
type reassembly struct {
	msgID   uint32
	total   uint16
	first   PayloadType
	chunks  [][]byte
	have    int
	bytes   int
	started time.Time
}

// reassemblyTimeout bounds how long an incomplete message is kept.
const reassemblyTimeout = 30 * time.Second

// reassemble adds the fragment in m. It returns done with the inner
// payloads parsed into m.Payloads when the message is complete.
func (sa *IKESA) reassemble(now time.Time, e *Engine, m *Message, in *suite.SKCipher) (bool, error) {
	f := m.skf
	if f.Total > MaxFragments {
		return false, &ParseError{Payload: PayloadSKF, Reason: "too many fragments"}
	}
	pt, err := m.DecryptFragment(in)
	if err != nil {
		return false, err
	}
	r := sa.frags
	if r != nil && (r.msgID != m.MessageID || now.Sub(r.started) > reassemblyTimeout) {
		r = nil // a new message (or a stale one): start over
	}
	if r == nil {
		r = &reassembly{msgID: m.MessageID, total: f.Total, chunks: make([][]byte, f.Total), started: now}
		sa.frags = r
	}
	if f.Total != r.total {
		// RFC 7383 §2.6.1: a different total means the sender refragmented
		// with a smaller size; keep only the newer set.
		if f.Total < r.total {
			return false, nil
		}
		*r = reassembly{msgID: m.MessageID, total: f.Total, chunks: make([][]byte, f.Total), started: now}
	}
	i := int(f.Number) - 1
	if r.chunks[i] != nil {
		return false, nil // duplicate
	}
	if r.bytes+len(pt) > MaxReassemblyBytes {
		sa.frags = nil
		return false, &ParseError{Payload: PayloadSKF, Reason: "reassembled message too large"}
	}
	if f.Number == 1 {
		r.first = f.Inner
	}
	r.chunks[i] = pt
	r.have++
	r.bytes += len(pt)
	if r.have < int(r.total) {
		return false, nil
	}
	sa.frags = nil
	buf := make([]byte, 0, r.bytes)
	for _, c := range r.chunks {
		buf = append(buf, c...)
	}
	if err := m.ParseInner(r.first, buf); err != nil {
		return false, err
	}
	return true, nil
}
