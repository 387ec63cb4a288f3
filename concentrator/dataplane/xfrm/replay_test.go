package xfrm

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// attrsOf serializes attrs and parses them back by type.
func attrsOf(t *testing.T, attrs []*nl.RtAttr) map[uint16][]byte {
	t.Helper()
	var b []byte
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	parsed, err := nl.ParseRouteAttr(b)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16][]byte{}
	for _, a := range parsed {
		if _, dup := out[a.Attr.Type]; dup {
			t.Fatalf("attribute %d twice", a.Attr.Type)
		}
		out[a.Attr.Type] = a.Value
	}
	return out
}

// TestStateAddMessageESN: an ESN state carries XFRMA_REPLAY_ESN_VAL with
// the 64-bit numbers split into low and high words, the window and (for an
// inbound state restored at InSeqLow) every bitmap bit set, the ESN flag
// and no legacy window, and the event thresholds.
func TestStateAddMessageESN(t *testing.T) {
	o := testOpts()
	sa := testSA()
	sa.OutSeq, sa.InSeqLow = 5<<32+1000, 3<<32+77
	in, out, err := BuildStates(o, sa, o.reqIDsForSlot(3))
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	for _, c := range []struct {
		st      *netlink.XfrmState
		rp      Replay
		oseq    uint64
		seq     uint64
		bmpWord uint32
		inbound bool
	}{
		{out, Replay{ESN: true, Window: o.ReplayWindow, OSeq: sa.OutSeq}, sa.OutSeq, 0, 0, false},
		{in, Replay{ESN: true, Window: o.ReplayWindow, Seq: sa.InSeqLow}, 0, sa.InSeqLow, ^uint32(0), true},
	} {
		msg, attrs, err := stateAddMessage(c.st, c.rp, 2048, c.inbound)
		if err != nil {
			t.Fatal(err)
		}
		if msg.Flags&nl.XFRM_STATE_ESN == 0 || msg.ReplayWindow != 0 || msg.Reqid != uint32(c.st.Reqid) ||
			nl.Swap32(msg.Id.Spi) != uint32(c.st.Spi) || msg.Id.Proto != unix.IPPROTO_ESP || msg.Family != unix.AF_INET ||
			msg.Mode != uint8(netlink.XFRM_MODE_TUNNEL) || !msg.Id.Daddr.ToIP().Equal(c.st.Dst) || !msg.Saddr.ToIP().Equal(c.st.Src) {
			t.Errorf("usersa_info %+v", msg)
		}
		if msg.Lft.HardPacketLimit != c.st.Limits.PacketHard || msg.Lft.SoftByteLimit != nl.XFRM_INF {
			t.Errorf("lifetime %+v, want %+v", msg.Lft, c.st.Limits)
		}
		a := attrsOf(t, attrs)
		r := a[nl.XFRMA_REPLAY_ESN_VAL]
		words := (o.ReplayWindow + 31) / 32
		if len(r) != 24+4*int(words) || ne.Uint32(r) != words || ne.Uint32(r[20:]) != o.ReplayWindow {
			t.Fatalf("ESN replay attribute %x", r)
		}
		if got := uint64(ne.Uint32(r[12:]))<<32 | uint64(ne.Uint32(r[4:])); got != c.oseq {
			t.Errorf("oseq_hi:oseq %x, want %x", got, c.oseq)
		}
		if got := uint64(ne.Uint32(r[16:]))<<32 | uint64(ne.Uint32(r[8:])); got != c.seq {
			t.Errorf("seq_hi:seq %x, want %x", got, c.seq)
		}
		for i := 0; i < int(words); i++ {
			if w := ne.Uint32(r[24+4*i:]); w != c.bmpWord {
				t.Errorf("bitmap word %d %x, want %x", i, w, c.bmpWord)
			}
		}
		if _, ok := a[nl.XFRMA_REPLAY_VAL]; ok {
			t.Error("legacy replay state on an ESN state")
		}
		if v := a[nl.XFRMA_REPLAY_THRESH]; len(v) != 4 || ne.Uint32(v) != 2048 {
			t.Errorf("replay threshold %x", v)
		}
		if v := a[nl.XFRMA_ETIMER_THRESH]; len(v) != 4 || ne.Uint32(v) != 0 {
			t.Errorf("event timer %x: want 0 (no timer events)", v)
		}
		// NAT mapping events paused per port on the inbound state only
		// (the kernel reports mappings of inbound states).
		if v, ok := a[nl.XFRMA_MTIMER_THRESH]; ok != c.inbound || ok && (len(v) != 4 || ne.Uint32(v) != mappingMaxAge) {
			t.Errorf("inbound %v: mapping event pause %x (present %v)", c.inbound, v, ok)
		}
		aead := nl.DeserializeXfrmAlgoAEAD(a[nl.XFRMA_ALG_AEAD])
		if nl.BytesToString(aead.AlgName[:]) != "rfc4106(gcm(aes))" || aead.AlgICVLen != 128 || aead.AlgKeyLen != 36*8 {
			t.Errorf("AEAD %+v", aead)
		}
		e := nl.DeserializeXfrmEncapTmpl(a[nl.XFRMA_ENCAP])
		if e.EncapType != uint16(netlink.XFRM_ENCAP_ESPINUDP) || int(nl.Swap16(e.EncapSport)) != c.st.Encap.SrcPort ||
			int(nl.Swap16(e.EncapDport)) != c.st.Encap.DstPort {
			t.Errorf("encap %+v", e)
		}
	}
}

// TestStateAddMessageLegacy: without ESN the state carries the legacy
// XFRMA_REPLAY_VAL (32-bit oseq, seq and bitmap), its window of at most 32,
// and the CBC/HMAC algorithms.
func TestStateAddMessageLegacy(t *testing.T) {
	o := testOpts()
	sa := testSA()
	sa.ESN, sa.EncrID, sa.EncrKeyBits, sa.IntegID = false, encrAESCBC, 128, integHMACSHA256128
	sa.In, sa.Out = dataplane.Keys{Encr: keyOf(16, 1), Integ: keyOf(32, 2)}, dataplane.Keys{Encr: keyOf(16, 3), Integ: keyOf(32, 4)}
	in, out, err := BuildStates(o, sa, o.reqIDsForSlot(3))
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	msg, attrs, err := stateAddMessage(in, Replay{Seq: 70000}, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	a := attrsOf(t, attrs)
	r := a[nl.XFRMA_REPLAY_VAL]
	if msg.Flags != nl.XFRM_STATE_AF_UNSPEC || msg.ReplayWindow != 32 || len(r) != 12 || ne.Uint32(r) != 0 || ne.Uint32(r[4:]) != 70000 || ne.Uint32(r[8:]) != ^uint32(0) {
		t.Errorf("flags %d window %d replay %x", msg.Flags, msg.ReplayWindow, r)
	}
	if v := a[nl.XFRMA_REPLAY_THRESH]; ne.Uint32(v) != 1 {
		t.Errorf("threshold 0 must become 1 (0 would turn the threshold off in some kernels): %d", ne.Uint32(v))
	}
	auth := nl.DeserializeXfrmAlgoAuth(a[nl.XFRMA_ALG_AUTH_TRUNC])
	crypt := nl.DeserializeXfrmAlgo(a[nl.XFRMA_ALG_CRYPT])
	if nl.BytesToString(auth.AlgName[:]) != "hmac(sha256)" || auth.AlgTruncLen != 128 || nl.BytesToString(crypt.AlgName[:]) != "cbc(aes)" || crypt.AlgKeyLen != 128 {
		t.Errorf("algorithms %+v %+v", auth, crypt)
	}
	_, attrs, _ = stateAddMessage(out, Replay{OSeq: 0xfffffff0}, 5, false)
	if r := attrsOf(t, attrs)[nl.XFRMA_REPLAY_VAL]; ne.Uint32(r) != 0xfffffff0 || ne.Uint32(r[8:]) != 0 {
		t.Errorf("out replay %x", r)
	}
	if _, _, err := stateAddMessage(out, Replay{OSeq: 1 << 32}, 5, false); err == nil {
		t.Error("a 33-bit number without ESN accepted")
	}
	if _, _, err := stateAddMessage(out, Replay{ESN: true, Window: 64}, 5, false); err == nil {
		t.Error("an ESN replay state on a non-ESN state accepted")
	}
}

// TestAeventRoundTrip: GETAE's request names the state; an answer (or
// event) built like the kernel's parses back to the same numbers.
func TestAeventRoundTrip(t *testing.T) {
	o := testOpts()
	_, out, _ := BuildStates(o, testSA(), o.reqIDsForSlot(9))
	id := idOf(out)
	req := aeventID(id, aeReplayThresh)
	if len(req) != sizeofAeventID || binary.BigEndian.Uint32(req[16:]) != uint32(out.Spi) || req[22] != unix.IPPROTO_ESP ||
		binary.NativeEndian.Uint16(req[20:]) != unix.AF_INET || binary.NativeEndian.Uint32(req[44:]) != uint32(out.Reqid) {
		t.Fatalf("aevent id %x", req)
	}
	for _, rp := range []Replay{
		{ESN: true, Window: 128, OSeq: 7<<32 + 5, Seq: 9<<32 + 1, Bitmap: []uint32{1, 2, 3, 4}},
		{OSeq: 12345, Seq: 678, Bitmap: []uint32{0xf0f0}},
	} {
		attr, err := replayAttr(rp)
		if err != nil {
			t.Fatal(err)
		}
		msg := append(aeventID(id, aeCauseReplay), attr.Serialize()...)
		msg = append(msg, nl.NewRtAttr(nl.XFRMA_REPLAY_THRESH, nl.Uint32Attr(99)).Serialize()...)
		ev, err := parseAevent(msg)
		if err != nil {
			t.Fatal(err)
		}
		if ev.SPI != uint32(out.Spi) || ev.Reqid != uint32(out.Reqid) || ev.Flags != aeCauseReplay || ev.Thresh != 99 ||
			ev.Replay.ESN != rp.ESN || ev.Replay.OSeq != rp.OSeq || ev.Replay.Seq != rp.Seq || fmt.Sprint(ev.Replay.Bitmap) != fmt.Sprint(rp.Bitmap) {
			t.Errorf("parsed %+v, want %+v", ev, rp)
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 47), append(make([]byte, 48), 3, 0, 10, 0), append(make([]byte, 48), 8, 0, 10, 0, 1, 2, 3, 4)} {
		if _, err := parseAevent(bad); err == nil {
			t.Errorf("parsed %x", bad)
		}
	}
}

func FuzzParseAevent(f *testing.F) {
	attr, _ := replayAttr(Replay{ESN: true, Window: 64, OSeq: 1, Seq: 2})
	f.Add(append(make([]byte, sizeofAeventID), attr.Serialize()...))
	attr, _ = replayAttr(Replay{OSeq: 1, Seq: 2})
	f.Add(append(make([]byte, sizeofAeventID), attr.Serialize()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := parseAevent(b)
		if err == nil && ev.Replay.Bitmap == nil && ev.Replay.ESN {
			t.Fatal("ESN replay state without a bitmap")
		}
	})
}

// kernelModel imitates the kernel's replay notifications: a state sends an
// async event when its number has moved by its threshold since its last
// event (xfrm_replay_notify*, 32-bit differences), and answers GETAE and
// NEWAE.
type kernelModel struct {
	d      *DataPlane
	states map[uint32]*modelState // by SPI
	events int
	lost   bool // drop the next event (a socket overrun)
}

type modelState struct {
	id       stateID
	in       bool
	cur, pre uint64
	maxDiff  uint32
}

func (m *kernelModel) getAE(id stateID) (aevent, error) {
	s := m.states[id.spi]
	ev := aevent{SPI: id.spi, Proto: unix.IPPROTO_ESP, Reqid: id.reqid, Thresh: s.maxDiff}
	if s.in {
		ev.Replay.Seq = s.cur
	} else {
		ev.Replay.OSeq = s.cur
	}
	return ev, nil
}

func (m *kernelModel) setThresh(id stateID, v uint32) error {
	m.states[id.spi].maxDiff = v
	return nil
}

func (m *kernelModel) packet(spi uint32) {
	s := m.states[spi]
	s.cur++
	if uint32(s.cur-s.pre) < s.maxDiff {
		return
	}
	s.pre = s.cur
	m.events++
	if m.lost {
		m.lost = false
		return
	}
	ev, _ := m.getAE(s.id)
	ev.Flags = aeCauseReplay
	m.d.onAevent(ev)
}

// modelPlane is a DataPlane whose kernel is a kernelModel, with one SA.
func modelPlane(t *testing.T, sa *dataplane.ChildSA) (*DataPlane, *kernelModel, *seqTrack) {
	t.Helper()
	o := testOpts()
	d := &DataPlane{opts: *o, log: slog.New(slog.DiscardHandler), sas: map[uint32]*entry{},
		exp: &expiryMonitor{}, sm: &seqMonitor{ch: make(chan dataplane.SeqProgress, 16)}}
	d.seq = map[uint32]*seqTrack{}
	m := &kernelModel{d: d, states: map[uint32]*modelState{}}
	d.ae = m
	ids := o.reqIDsForSlot(5)
	in, out, err := BuildStates(o, sa, ids)
	if err != nil {
		t.Fatal(err)
	}
	tr := d.trackNew(sa, in, out)
	d.seq[sa.InSPI] = tr
	d.exp.inBySlot.Store(uint32(5), sa.InSPI)
	m.states[sa.InSPI] = &modelState{id: idOf(in), in: true, cur: sa.InSeqLow, pre: sa.InSeqLow, maxDiff: tr.inDiff}
	m.states[sa.OutSPI] = &modelState{id: idOf(out), cur: sa.OutSeq, pre: sa.OutSeq, maxDiff: tr.outDiff}
	return d, m, tr
}

func progress(d *DataPlane) []dataplane.SeqProgress {
	var out []dataplane.SeqProgress
	for {
		select {
		case p := <-d.sm.ch:
			out = append(out, p)
		default:
			return out
		}
	}
}

// TestSeqEventsModel drives the event logic against the kernel model as
// the engine would: each outbound report is answered (after a write that
// takes lag packets) with a new limit of OutSeq+block. Reports come exactly
// at limit-margin, once each; the kernel never passes a limit while the
// write takes less than the margin; the cost is counted per block.
func TestSeqEventsModel(t *testing.T) {
	for _, c := range []struct {
		name       string
		esn        bool
		start, low uint64
		block      uint64
		lag        int
	}{
		{"legacy", false, 1000, 500, 4096, 0},
		{"legacy-lag", false, 1000, 0, 4096, 1500},
		{"esn-across-2^32", true, 1<<32 - 20000, 1<<32 - 7000, 8192, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			sa := testSA()
			sa.ESN = c.esn
			sa.OutSeq, sa.OutSeqLimit, sa.OutSeqMargin, sa.InSeqLow = c.start, c.start+c.block, c.block/2, c.low
			d, m, tr := modelPlane(t, sa)
			const packets = 100000
			pending, limit, lastOut := -1, sa.OutSeqLimit, uint64(0)
			outReports, inReports, lastIn := 0, 0, c.low
			for i := 0; i < packets; i++ {
				m.packet(sa.OutSPI)
				for _, p := range progress(d) { // caused by the outbound packet
					outReports++
					if p.OutSeq != limit-c.block/2 || pending >= 0 || p.InSPI != sa.InSPI {
						t.Fatalf("outbound report %+v (write pending %v), want one at limit-margin = %d", p, pending >= 0, limit-c.block/2)
					}
					pending, lastOut = c.lag, p.OutSeq
				}
				if i%2 == 0 { // inbound at half the rate
					m.packet(sa.InSPI)
					for _, p := range progress(d) {
						inReports++
						if p.InSeq != lastIn+c.block {
							t.Fatalf("inbound report %+v, want one at %d", p, lastIn+c.block)
						}
						lastIn = p.InSeq
					}
				}
				if pending == 0 {
					limit = lastOut + c.block
					d.seqMu.Lock()
					if _, err := d.applySeqLimit(tr, limit); err != nil {
						t.Fatal(err)
					}
					d.seqMu.Unlock()
				}
				if pending >= 0 {
					pending--
				}
			}
			st := d.SeqStats()
			if st.OverLimit != 0 {
				t.Fatalf("the model kernel passed a limit: %+v", st)
			}
			wantOut := 0
			for l := sa.OutSeqLimit; l-c.block/2 <= c.start+packets; wantOut++ {
				l = l - c.block/2 + c.block // answered with the reported OutSeq + block
			}
			wantIn := int(uint64(packets/2) / c.block)
			if outReports != wantOut || inReports != wantIn {
				t.Errorf("%d outbound and %d inbound reports, want %d and %d", outReports, inReports, wantOut, wantIn)
			}
			// Cost: one event per report, nothing else while the node
			// answers within the margin; per report one GETAE (the other
			// direction's number). SetSeqLimit needs no NEWAE while the
			// block stays the same: the threshold (block/2 from the
			// reported number) does not change.
			if m.events != outReports+inReports || st.GetAE != uint64(outReports+inReports) || st.SetAE != 0 {
				t.Errorf("%d events, %d GETAE, %d NEWAE for %d+%d reports", m.events, st.GetAE, st.SetAE, outReports, inReports)
			}
			t.Logf("%d outbound packets, %d inbound, block %d: %d+%d reports, %d events, %d GETAE, %d NEWAE",
				packets, packets/2, c.block, outReports, inReports, m.events, st.GetAE, st.SetAE)
		})
	}
}

// TestSeqEventsGrowingBlock: the engine doubles its block at each renewal
// (up to 64 blocks of the first); each outbound report still comes at
// limit-max(OutSeqMargin, grant/2), the inbound step follows the block,
// and each change of block costs a NEWAE or two.
func TestSeqEventsGrowingBlock(t *testing.T) {
	sa := testSA()
	const block0 = 4096
	sa.OutSeq, sa.OutSeqLimit, sa.OutSeqMargin, sa.InSeqLow = 10, 10+block0, block0/2, 0
	d, m, tr := modelPlane(t, sa)
	block, limit, base := uint64(block0), sa.OutSeqLimit, sa.OutSeq
	outReports, inReports, lastIn, changes := 0, 0, uint64(0), 0
	for i := 0; i < 400000; i++ {
		m.packet(sa.OutSPI)
		for _, p := range progress(d) {
			outReports++
			eff := max(uint64(block0/2), (limit-base)/2)
			if p.OutSeq != limit-eff {
				t.Fatalf("outbound report at %d, want %d (limit %d, base %d)", p.OutSeq, limit-eff, limit, base)
			}
			base = p.OutSeq
			if block < 64*block0 {
				block *= 2
				changes++
			}
			limit = p.OutSeq + block
			d.seqMu.Lock()
			if _, err := d.applySeqLimit(tr, limit); err != nil {
				t.Fatal(err)
			}
			d.seqMu.Unlock()
		}
		m.packet(sa.InSPI)
		for _, p := range progress(d) {
			inReports++
			if p.InSeq-lastIn < tr.step/2 || p.InSeq-lastIn > tr.step {
				t.Fatalf("inbound report at %d, last %d, step %d", p.InSeq, lastIn, tr.step)
			}
			lastIn = p.InSeq
		}
	}
	st := d.SeqStats()
	t.Logf("400000 packets each way, block %d..%d: %d+%d reports, %d events, %d GETAE, %d NEWAE for %d block changes",
		block0, block, outReports, inReports, m.events, st.GetAE, st.SetAE, changes)
	if st.OverLimit != 0 || m.events != outReports+inReports || st.SetAE > uint64(2*changes) {
		t.Errorf("%+v: %d events for %d reports", st, m.events, outReports+inReports)
	}
}

// TestSeqEventsLostAndLate: an event the kernel dropped (socket overrun)
// is recovered by reading every SA; a node that never raises the limit
// gets the kernel's passing it logged once.
func TestSeqEventsLostAndLate(t *testing.T) {
	sa := testSA()
	sa.OutSeq, sa.OutSeqLimit, sa.OutSeqMargin = 0, 1000, 100
	d, m, _ := modelPlane(t, sa)
	m.lost = true
	for i := 0; i < 600; i++ {
		m.packet(sa.OutSPI)
	}
	if p := progress(d); len(p) != 0 {
		t.Fatalf("reports %+v from a lost event", p)
	}
	d.seqResync()
	p := progress(d)
	if len(p) != 1 || p[0].OutSeq != 600 {
		t.Fatalf("after the resync: %+v, want one report at 600", p)
	}
	for i := 0; i < 500; i++ { // nobody raises the limit
		m.packet(sa.OutSPI)
	}
	if st := d.SeqStats(); st.OverLimit != 1 || st.Overruns != 0 {
		t.Fatalf("kernel past the limit: %+v, want OverLimit 1", st)
	}
	if p := progress(d); len(p) != 0 {
		t.Fatalf("reports %+v past the limit", p)
	}
}
