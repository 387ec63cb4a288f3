package esp

// window is the anti-replay window of RFC 4303 §3.4.3 and Appendix A: a
// bitmap of the last size sequence numbers up to the highest authenticated
// one, kept as a ring of 64-bit blocks. Blocks are cleared lazily as the
// top advances, so advancing by any amount costs at most one pass over the
// ring. The ring is allocated by the first packet accepted (256 bytes at
// the default size, which an idle SA does without): until then every
// number up to top counts as seen, as after setTop.
type window struct {
	top  uint64   // highest authenticated sequence number; 0 = none yet
	size uint64   // bits: top-size+1 .. top are tracked
	ring []uint64 // power-of-two number of blocks, at least ceil(size/64)+1; nil until the first accept
	mask uint64   // len(ring)-1
}

func newWindow(size int) window {
	// One block more than the window covers: the top block is partly
	// in the future.
	blocks := (uint64(size)+63)/64 + 1
	n := uint64(1)
	for n < blocks {
		n <<= 1
	}
	return window{size: uint64(size), mask: n - 1}
}

// setTop restarts the window at top with every number up to top marked as
// seen: a restored SA refuses whatever it may have accepted before.
func (w *window) setTop(top uint64) {
	w.top, w.ring = top, nil
}

// fill allocates the ring in the state setTop describes. Bits above top
// in its block stay clear (they are numbers still to come); the other
// blocks are either below top or cleared before top reaches them.
func (w *window) fill() {
	w.ring = make([]uint64, w.mask+1)
	top := w.top
	if top == 0 {
		return
	}
	for i := range w.ring {
		w.ring[i] = ^uint64(0)
	}
	b := top & 63
	var upTo uint64 = ^uint64(0) // bits 0..b
	if b < 63 {
		upTo = 1<<(b+1) - 1
	}
	w.ring[(top>>6)&w.mask] = upTo
}

// check reports whether seq may be accepted (before its ICV is verified).
func (w *window) check(seq uint64) bool {
	if seq == 0 {
		return false
	}
	if seq > w.top {
		return true
	}
	if w.top-seq >= w.size || w.ring == nil {
		return false
	}
	return w.ring[(seq>>6)&w.mask]&(1<<(seq&63)) == 0
}

// accept records an authenticated seq; it returns false if seq was already
// recorded or has fallen out of the window since check.
func (w *window) accept(seq uint64) bool {
	if !w.check(seq) {
		return false
	}
	if w.ring == nil {
		w.fill()
	}
	if seq > w.top {
		cur, next := w.top>>6, seq>>6
		if d := next - cur; d > w.mask {
			clear(w.ring)
		} else {
			for i := uint64(1); i <= d; i++ { // counts, so next = 2^64-1 cannot loop forever
				w.ring[(cur+i)&w.mask] = 0
			}
		}
		w.top = seq
	}
	w.ring[(seq>>6)&w.mask] |= 1 << (seq & 63)
	return true
}

// inferESN reconstructs the 64-bit sequence number from its low 32 bits
// relative to the window (RFC 4303 Appendix A.2.2). ok is false when the
// number would lie before the start of the sequence space.
func (w *window) inferESN(low uint32) (seq uint64, ok bool) {
	tl, th := uint32(w.top), uint32(w.top>>32)
	wsz := uint32(w.size)
	var hi uint32
	if tl >= wsz-1 { // Case A: the window is within one subspace
		if low >= tl-wsz+1 {
			hi = th
		} else {
			hi = th + 1
		}
	} else { // Case B: the window spans two subspaces
		if low >= tl-wsz+1 { // (mod 2^32): the previous subspace
			if th == 0 {
				return 0, false
			}
			hi = th - 1
		} else {
			hi = th
		}
	}
	return uint64(hi)<<32 | uint64(low), true
}
