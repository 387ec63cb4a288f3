package esp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// sealN seals n packets and returns them.
func sealN(t *testing.T, o *Outbound, n int) [][]byte {
	t.Helper()
	var out [][]byte
	for i := 0; i < n; i++ {
		p, err := o.AppendSeal(nil, innerPacket(40), NextHeaderIPv4)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		out = append(out, p)
	}
	return out
}

// TestOutSeqStart: an SA configured with OutSeq=N sends N+1 first, with
// and without ESN, and its AEAD IV is that number (so a restored SA never
// reuses a nonce below its reservation).
func TestOutSeqStart(t *testing.T) {
	for _, sc := range suites {
		for _, esn := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/esn=%v", sc.name, esn), func(t *testing.T) {
				c := sc.config(esn)
				c.OutSeq = 1000
				if esn {
					c.OutSeq = 5<<32 + 1000
				}
				o, err := NewOutbound(c)
				if err != nil {
					t.Fatal(err)
				}
				rc := sc.config(esn)
				rc.InSeqLow = c.OutSeq - 10 // the receiver saw the run-up
				in, err := NewInbound(rc)
				if err != nil {
					t.Fatal(err)
				}
				pkt := sealN(t, o, 1)[0]
				if got := binary.BigEndian.Uint32(pkt[4:]); got != uint32(c.OutSeq+1) {
					t.Fatalf("first packet carries %d, want %d", got, uint32(c.OutSeq+1))
				}
				if sc.encr != EncrAESCBC {
					if iv := binary.BigEndian.Uint64(pkt[8:]); iv != c.OutSeq+1 {
						t.Fatalf("AEAD IV %d, want the sequence number %d", iv, c.OutSeq+1)
					}
				}
				if _, _, seq, err := in.Open(pkt); err != nil || seq != c.OutSeq+1 {
					t.Fatalf("open: seq %d err %v, want %d", seq, err, c.OutSeq+1)
				}
				if o.Seq() != c.OutSeq+1 {
					t.Fatalf("Seq() %d", o.Seq())
				}
			})
		}
	}
}

// TestOutSeqLimit: Seal refuses numbers above the limit with ErrSeqLimit
// without using one, and carries on after the limit is raised.
func TestOutSeqLimit(t *testing.T) {
	for _, esn := range []bool{false, true} {
		t.Run(fmt.Sprintf("esn=%v", esn), func(t *testing.T) {
			c := suites[0].config(esn)
			c.OutSeq, c.OutSeqLimit = 100, 103
			o, in := pair(t, c)
			sealN(t, o, 3) // 101, 102, 103
			for i := 0; i < 2; i++ {
				if _, err := o.AppendSeal(nil, innerPacket(40), NextHeaderIPv4); !errors.Is(err, ErrSeqLimit) {
					t.Fatalf("past the limit: %v, want ErrSeqLimit", err)
				}
			}
			if o.Seq() != 103 || ErrSeqLimit.Reason() != "sequence number limit" {
				t.Fatalf("Seq() %d after refusals, want 103", o.Seq())
			}
			o.SetSeqLimit(105)
			if o.SeqLimit() != 105 {
				t.Fatal("SeqLimit")
			}
			pkts := sealN(t, o, 2)
			if got := binary.BigEndian.Uint32(pkts[0][4:]); got != 104 {
				t.Fatalf("after raising the limit the next packet carries %d, want 104", got)
			}
			if _, _, seq, err := in.Open(pkts[1]); err != nil || seq != 105 {
				t.Fatalf("open: %d %v", seq, err)
			}
			o.SetSeqLimit(0) // no limit
			sealN(t, o, 10)
		})
	}
}

// TestSeqLimitAtWrap: with ESN a limit at and across 2^32 works like any
// other; without ESN the 32-bit end comes first and is an overflow.
func TestSeqLimitAtWrap(t *testing.T) {
	c := suites[0].config(true)
	c.OutSeq, c.OutSeqLimit = 1<<32-2, 1<<32
	o, err := NewOutbound(c)
	if err != nil {
		t.Fatal(err)
	}
	pkts := sealN(t, o, 2) // 2^32-1, 2^32 (low bits 0 on the wire)
	if binary.BigEndian.Uint32(pkts[1][4:]) != 0 {
		t.Fatal("2^32 carries low bits 0")
	}
	if _, err := o.AppendSeal(nil, innerPacket(1), NextHeaderIPv4); err != ErrSeqLimit {
		t.Fatalf("at the limit 2^32: %v", err)
	}
	rc := suites[0].config(true)
	rc.InSeqLow = 1<<32 - 3
	in, err := NewInbound(rc)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pkts {
		if _, _, seq, err := in.Open(p); err != nil || seq != 1<<32-1+uint64(i) {
			t.Fatalf("packet %d: seq %x err %v", i, seq, err)
		}
	}

	c = suites[0].config(false)
	c.OutSeq, c.OutSeqLimit = 1<<32-2, 1<<40 // a limit past the space changes nothing
	if _, err := NewOutbound(c); err != nil {
		t.Fatal(err)
	}
	o, _ = NewOutbound(c)
	sealN(t, o, 1)
	if _, err := o.AppendSeal(nil, innerPacket(1), NextHeaderIPv4); err != ErrSeqOverflow {
		t.Fatalf("past 2^32-1 without ESN: %v, want ErrSeqOverflow", err)
	}
}

// TestInSeqLow: a restored inbound SA refuses every number up to InSeqLow
// (inside the window: as replayed; below it: as too old) and accepts the
// numbers above, including those in the top's own 64-bit block and those
// arriving out of order afterwards.
func TestInSeqLow(t *testing.T) {
	for _, low := range []uint64{1, 63, 64, 100, 127, 128, 1000, 4096} {
		t.Run(fmt.Sprint(low), func(t *testing.T) {
			c := suites[0].config(false)
			c.ReplayWindow = 128
			o, _ := pair(t, c)
			pkts := sealN(t, o, int(low)+140)
			rc := c
			rc.InSeqLow = low
			in, err := NewInbound(rc)
			if err != nil {
				t.Fatal(err)
			}
			if in.Seq() != low {
				t.Fatalf("top %d, want %d", in.Seq(), low)
			}
			open := func(seq uint64) error {
				_, _, _, err := in.Open(bytes.Clone(pkts[seq-1]))
				return err
			}
			for _, s := range []uint64{low, low - low/2, 1} {
				if err := open(s); err != ErrReplay {
					t.Fatalf("seq %d <= InSeqLow %d: %v, want ErrReplay", s, low, err)
				}
			}
			// Out of order above low, within the top's block and beyond.
			for _, s := range []uint64{low + 3, low + 1, low + 2, low + 70, low + 5, low + 69} {
				if err := open(s); err != nil {
					t.Fatalf("seq %d above InSeqLow %d: %v", s, low, err)
				}
			}
			for _, s := range []uint64{low + 3, low + 70, low} {
				if err := open(s); err != ErrReplay {
					t.Fatalf("replayed seq %d: %v", s, err)
				}
			}
		})
	}
}

// TestInSeqLowModel checks setTop against the map model over random
// traffic, for window sizes around block boundaries.
func TestInSeqLowModel(t *testing.T) {
	for _, size := range []int{1, 32, 64, 65, 1024} {
		for _, low := range []uint64{1, 62, 63, 64, 65, 1000, 1<<32 - 1} {
			w := newWindow(size)
			w.setTop(low)
			top := low
			seen := map[uint64]bool{}
			x := uint64(low*31 + uint64(size))
			for i := 0; i < 3000; i++ {
				x = x*6364136223846793005 + 1442695040888963407
				seq := top + 1 + (x>>33)%uint64(2*size+2) - uint64(size+1)
				want := seq != 0 && seq > low && !seen[seq] && (seq > top || top-seq < uint64(size))
				if got := w.accept(seq); got != want {
					t.Fatalf("size %d low %d step %d: seq %d top %d: accept %v, want %v", size, low, i, seq, top, got, want)
				}
				if want {
					seen[seq] = true
					top = max(top, seq)
				}
			}
		}
	}
}

// TestInSeqLowESN: the window restarts at a 64-bit top: the high bits of
// arriving packets are inferred from it (both the same subspace and the
// window spanning the previous one), numbers up to the top are refused.
func TestInSeqLowESN(t *testing.T) {
	for _, low := range []uint64{3<<32 + 5000, 3<<32 + 5, 1<<32 - 1, 1 << 32} {
		t.Run(fmt.Sprintf("%x", low), func(t *testing.T) {
			c := suites[2].config(true)
			c.ReplayWindow = 1024
			o, _ := pair(t, c)
			o.SetSeq(low - 20)
			pkts := sealN(t, o, 40) // low-19 .. low+20
			at := func(seq uint64) []byte { return bytes.Clone(pkts[seq-(low-19)]) }
			rc := c
			rc.InSeqLow = low
			in, err := NewInbound(rc)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []uint64{low, low - 1, low - 19} {
				if _, _, _, err := in.Open(at(s)); err != ErrReplay {
					t.Fatalf("seq %x <= InSeqLow: %v", s, err)
				}
			}
			for _, s := range []uint64{low + 2, low + 1, low + 20} {
				if _, _, seq, err := in.Open(at(s)); err != nil || seq != s {
					t.Fatalf("seq %x: got %x %v", s, seq, err)
				}
			}
		})
	}
}

func TestSeqConfigErrors(t *testing.T) {
	c := suites[0].config(false)
	c.OutSeq = 1 << 32
	if _, err := NewOutbound(c); err == nil {
		t.Error("OutSeq above 32 bits without ESN accepted")
	}
	c = suites[0].config(false)
	c.InSeqLow = 1 << 32
	if _, err := NewInbound(c); err == nil {
		t.Error("InSeqLow above 32 bits without ESN accepted")
	}
	c.ESN = true
	if _, err := NewInbound(c); err != nil {
		t.Error(err)
	}
}
