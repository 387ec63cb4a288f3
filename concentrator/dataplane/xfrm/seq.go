package xfrm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

var (
	_ dataplane.SeqLimiter  = (*DataPlane)(nil)
	_ dataplane.SeqReporter = (*DataPlane)(nil)
)

// rawXfrm is a netlink XFRM socket for the requests the netlink library
// cannot make (states with a replay state, async event reads and
// thresholds). The library locks the socket for each request.
type rawXfrm struct {
	sh   *nl.SocketHandle
	pid  uint32 // the socket's port ID: XFRM_MSG_GETAE answers go to the header's
	rbuf []byte // batch's receive buffer (under the socket's lock)
	// calls: the system calls batch made (sends and receives), for tests.
	calls atomic.Uint64
}

// aeIO reads a state's replay state and sets its threshold: the kernel
// (rawXfrm), or a model of it in tests.
type aeIO interface {
	getAE(id stateID) (aevent, error)
	setThresh(id stateID, maxDiff uint32) error
}

func newRawXfrm(ns netns.NsHandle) (*rawXfrm, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_XFRM)
	if err != nil {
		return nil, err
	}
	tv := unix.Timeval{Sec: 10}
	if err := s.SetReceiveTimeout(&tv); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.SetSendTimeout(&tv); err != nil {
		s.Close()
		return nil, err
	}
	pid, err := s.GetPid()
	if err != nil {
		s.Close()
		return nil, err
	}
	return &rawXfrm{sh: &nl.SocketHandle{Socket: s}, pid: pid}, nil
}

func (r *rawXfrm) close() { r.sh.Close() }

func (r *rawXfrm) exec(typ, flags int, resType uint16, data ...nl.NetlinkRequestData) ([][]byte, error) {
	req := nl.NewNetlinkRequest(typ, flags)
	// The kernel addresses its answer to GETAE to the port ID in the
	// request's header (not the sender's), and the library skips answers
	// that are not addressed to its socket.
	req.Pid = r.pid
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_XFRM: r.sh}
	for _, d := range data {
		req.AddData(d)
	}
	return req.Execute(unix.NETLINK_XFRM, resType)
}

// addState adds st (an inbound state if inbound) with replay state rp and
// replay threshold maxDiff (XFRM_MSG_NEWSA; EEXIST as from the library).
func (r *rawXfrm) addState(st *netlink.XfrmState, rp Replay, maxDiff uint32, inbound bool) error {
	req, err := stateRequest(st, rp, maxDiff, inbound)
	if err != nil {
		return err
	}
	return r.batch([]*nl.NetlinkRequest{req})[0].err
}

// getAE reads a state's replay state and threshold (XFRM_MSG_GETAE).
func (r *rawXfrm) getAE(id stateID) (aevent, error) {
	msgs, err := r.exec(nl.XFRM_MSG_GETAE, 0, nl.XFRM_MSG_NEWAE, rawData(aeventID(id, aeReplayThresh)))
	if err != nil {
		return aevent{}, err
	}
	if len(msgs) == 0 {
		return aevent{}, errors.New("xfrm: no answer to XFRM_MSG_GETAE")
	}
	return parseAevent(msgs[0])
}

// setThresh sets a state's replay threshold (XFRM_MSG_NEWAE): the kernel
// sends an async event when a sequence number has moved by maxDiff since
// the last event (or since the replay state was set).
func (r *rawXfrm) setThresh(id stateID, maxDiff uint32) error {
	_, err := r.exec(nl.XFRM_MSG_NEWAE, unix.NLM_F_REPLACE|unix.NLM_F_ACK, 0,
		rawData(aeventID(id, 0)), nl.NewRtAttr(nl.XFRMA_REPLAY_THRESH, nl.Uint32Attr(max(maxDiff, 1))))
	return err
}

// seqTrack is one CHILD SA's sequence number bookkeeping (DataPlane.seqMu).
// The kernel sends an async event for a state when its number has moved
// by the state's threshold since its previous event ("preplay"); outPre
// and inPre are what we know of the kernel's preplay: exact after an
// event, an upper bound after a read (so a threshold computed from them
// fires early, never late; an early event only re-arms).
type seqTrack struct {
	inSPI   uint32
	esn     bool
	margin  uint64
	limit   uint64 // 0: none
	target  uint64 // outbound number to report at; 0: none
	step    uint64 // inbound numbers between reports; 0: none
	out, in stateID

	base        uint64 // outbound number of the last outbound report (OutSeq first)
	outReported bool   // the report for this target is out
	outRetry    bool   // it found the channel full
	inRetry     bool   // an inbound report found the channel full
	overLimit   bool   // the kernel passed the limit (logged once per limit)
	inBase      uint64 // inbound number at the last inbound report (InSeqLow first)
	outPre      uint64
	inPre       uint64
	outDiff     uint32 // thresholds last set in the kernel
	inDiff      uint32
}

func (t *seqTrack) rearm(limit uint64) {
	eff, thr := dataplane.SeqMargin(t.margin, t.base, limit)
	t.limit, t.target, t.step = limit, thr, 2*eff
	t.outReported, t.outRetry, t.overLimit = false, false, false
}

func clampDiff(v uint64) uint32 {
	return uint32(min(max(v, 1), maxDiffOff))
}

// wantOut is the outbound state's threshold: up to the report target; once
// reported, the threshold stays as it was (its next event comes about as
// far past the target as the target was from where it was set, short of
// the limit when the node is slow to raise it) unless that is beyond
// just past the limit (to log a kernel that passes it); then none.
func (t *seqTrack) wantOut() uint32 {
	switch {
	case t.target != 0 && !t.outReported:
		if t.outRetry {
			return clampDiff((t.limit - min(t.outPre, t.limit)) / 4)
		}
		if t.target > t.outPre {
			return clampDiff(t.target - t.outPre)
		}
		return 1
	case t.limit != 0 && !t.overLimit:
		if t.outDiff != 0 && t.outPre+uint64(t.outDiff) <= t.limit+1 {
			return t.outDiff // no round trip
		}
		if t.limit >= t.outPre {
			return clampDiff(t.limit + 1 - t.outPre)
		}
		return 1
	}
	return maxDiffOff
}

// wantIn is the inbound state's threshold: up to the next inbound report.
func (t *seqTrack) wantIn() uint32 {
	if t.step == 0 {
		return maxDiffOff
	}
	if next := t.inBase + t.step; next > t.inPre {
		return clampDiff(next - t.inPre)
	}
	if t.inRetry {
		return clampDiff(t.step / 4) // the channel was full: try again later
	}
	return 1 // the step shrank below what has arrived: report at the next packet
}

// seqMonitor reads the kernel's async events (XFRMNLGRP_AEVENTS) on its own
// socket and turns those of our states into SeqProgress reports.
type seqMonitor struct {
	s       *nl.NetlinkSocket
	ch      chan dataplane.SeqProgress
	done    chan struct{}
	closing atomic.Bool

	events, foreign, reports, dropped, overruns, overLimit, gets, sets atomic.Uint64
}

// seqRecvBuffer is the event socket's receive buffer: room for a burst of
// about 8000 events (about 120 bytes each with headers).
const seqRecvBuffer = 1 << 20

func newSeqMonitor(ns netns.NsHandle, queue int) (*seqMonitor, error) {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_XFRM, nl.XFRMNLGRP_AEVENTS)
	if err != nil {
		return nil, err
	}
	_ = s.SetReceiveBufferSize(seqRecvBuffer, false)
	return &seqMonitor{s: s, ch: make(chan dataplane.SeqProgress, queue), done: make(chan struct{})}, nil
}

func (m *seqMonitor) stop() {
	m.closing.Store(true)
	m.s.Close()
	<-m.done
}

// run reads events until the socket is closed, then closes the channel.
func (m *seqMonitor) run(d *DataPlane) {
	defer close(m.done)
	defer close(m.ch)
	for {
		msgs, from, err := m.s.Receive()
		if err != nil {
			switch {
			case m.closing.Load():
				return
			case errors.Is(err, unix.ENOBUFS):
				m.overruns.Add(1)
				d.log.Warn("xfrm sequence monitor: kernel dropped async events (ENOBUFS); reading every SA")
				d.seqResync()
				continue
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, os.ErrClosed):
				return
			}
			d.log.Error("xfrm sequence monitor stopped", "err", err)
			return
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, msg := range msgs {
			if msg.Header.Type != nl.XFRM_MSG_NEWAE {
				continue
			}
			ev, err := parseAevent(msg.Data)
			if err != nil {
				continue
			}
			d.onAevent(ev)
		}
	}
}

// SeqProgress reports our CHILD SAs' sequence numbers (dataplane.SeqReporter)
// by the rule of dataplane.SeqProgress, from the kernel's async events
// (see the package documentation). The channel is closed by Close.
func (d *DataPlane) SeqProgress() <-chan dataplane.SeqProgress { return d.sm.ch }

// SeqStats are the sequence number monitor's counters.
type SeqStats struct {
	Events    uint64 // async events of our states received
	Foreign   uint64 // async events of other states (other software's) received and ignored
	Reports   uint64 // SeqProgress reports sent
	Dropped   uint64 // reports that found the channel full (tried again later)
	Overruns  uint64 // times the kernel dropped events (ENOBUFS; each followed by reading every SA)
	OverLimit uint64 // times a kernel state was seen past its limit
	GetAE     uint64 // XFRM_MSG_GETAE round trips
	SetAE     uint64 // XFRM_MSG_NEWAE round trips
}

// SeqStats returns the sequence number monitor's counters.
func (d *DataPlane) SeqStats() SeqStats {
	m := d.sm
	return SeqStats{Events: m.events.Load(), Foreign: m.foreign.Load(), Reports: m.reports.Load(),
		Dropped: m.dropped.Load(), Overruns: m.overruns.Load(), OverLimit: m.overLimit.Load(),
		GetAE: m.gets.Load(), SetAE: m.sets.Load()}
}

// getAE and setThresh count a round trip once it is over, so a reader of
// SeqStats that sees it counted knows the kernel has answered it.
func (d *DataPlane) getAE(id stateID) (aevent, error) {
	defer d.sm.gets.Add(1)
	return d.ae.getAE(id)
}

func (d *DataPlane) setThresh(id stateID, maxDiff uint32) error {
	defer d.sm.sets.Add(1)
	return d.ae.setThresh(id, maxDiff)
}

func (d *DataPlane) emit(inSPI uint32, out, in uint64) bool {
	select {
	case d.sm.ch <- dataplane.SeqProgress{InSPI: inSPI, OutSeq: out, InSeq: in}:
		d.sm.reports.Add(1)
		return true
	default:
		d.sm.dropped.Add(1)
		return false
	}
}

// onAevent handles one async event.
func (d *DataPlane) onAevent(ev aevent) {
	if ev.Proto != unix.IPPROTO_ESP || ev.Flags&(aeCauseReplay|aeCauseTimer) == 0 {
		return // our own threshold updates (aeCauseUpdate) carry no news
	}
	slot, in, ok := d.opts.ours(ev.Reqid)
	if !ok {
		d.sm.foreign.Add(1)
		return
	}
	inSPI, ok := d.exp.inSPI(slot)
	if !ok {
		return
	}
	d.seqMu.Lock()
	defer d.seqMu.Unlock()
	t := d.seq[inSPI]
	if t == nil {
		return
	}
	d.sm.events.Add(1)
	if in && ev.SPI == t.in.spi {
		d.inProgress(t, ev.Replay.Seq)
	} else if !in && ev.SPI == t.out.spi {
		d.outProgress(t, ev.Replay.OSeq)
	}
}

// outProgress handles an outbound number cur (from an event or a read;
// d.seqMu held): report once at the target, log a kernel past the limit,
// and set the threshold for what comes next.
func (d *DataPlane) outProgress(t *seqTrack, cur uint64) {
	t.outPre = cur
	if t.target != 0 && !t.outReported && cur >= t.target {
		var in uint64
		if ev, err := d.getAE(t.in); err == nil {
			in = ev.Replay.Seq
		} else {
			in = t.inPre
		}
		t.outReported = d.emit(t.inSPI, cur, in)
		t.outRetry = !t.outReported
		if t.outReported {
			t.base = cur
		}
	}
	if t.limit != 0 && cur > t.limit && !t.overLimit {
		t.overLimit = true
		d.sm.overLimit.Add(1)
		d.log.Warn("xfrm: the kernel sent past the committed sequence number limit",
			"in_spi", fmt.Sprintf("%08x", t.inSPI), "out_seq", cur, "limit", t.limit)
	}
	d.setOutThresh(t)
}

// inProgress handles an inbound number cur (d.seqMu held).
func (d *DataPlane) inProgress(t *seqTrack, cur uint64) {
	t.inPre = cur
	if t.step != 0 && cur >= t.inBase && cur-t.inBase >= t.step {
		var out uint64
		if ev, err := d.getAE(t.out); err == nil {
			out = ev.Replay.OSeq
		} else {
			out = t.outPre
		}
		if d.emit(t.inSPI, out, cur) {
			t.inBase, t.inRetry = cur, false
		} else {
			t.inRetry = true
		}
	}
	d.setInThresh(t)
}

// setOutThresh and setInThresh give the kernel the thresholds wantOut and
// wantIn when they differ from those it has.
func (d *DataPlane) setOutThresh(t *seqTrack) error {
	if w := t.wantOut(); w != t.outDiff {
		if err := d.setThresh(t.out, w); err != nil {
			t.outDiff = 0 // unknown
			d.log.Warn("xfrm: set replay threshold", "spi", fmt.Sprintf("%08x", t.out.spi), "err", err)
			return fmt.Errorf("set replay threshold of spi %08x: %w", t.out.spi, err)
		}
		t.outDiff = w
	}
	return nil
}

func (d *DataPlane) setInThresh(t *seqTrack) error {
	if w := t.wantIn(); w != t.inDiff {
		if err := d.setThresh(t.in, w); err != nil {
			t.inDiff = 0
			d.log.Warn("xfrm: set replay threshold", "spi", fmt.Sprintf("%08x", t.in.spi), "err", err)
			return fmt.Errorf("set replay threshold of spi %08x: %w", t.in.spi, err)
		}
		t.inDiff = w
	}
	return nil
}

// seqResync reads every tracked SA's numbers after the kernel dropped
// events: two round trips per SA, only after an overrun.
func (d *DataPlane) seqResync() {
	d.seqMu.Lock()
	defer d.seqMu.Unlock()
	for _, t := range d.seq {
		if ev, err := d.getAE(t.out); err == nil {
			t.outDiff = 0 // unknown preplay: set again
			d.outProgress(t, ev.Replay.OSeq)
		}
		if ev, err := d.getAE(t.in); err == nil {
			t.inDiff = 0
			d.inProgress(t, ev.Replay.Seq)
		}
	}
}

// trackNew starts the bookkeeping of a CHILD SA being installed with the
// states in and out; the thresholds to install them with are in the
// result.
func (d *DataPlane) trackNew(sa *dataplane.ChildSA, in, out *netlink.XfrmState) *seqTrack {
	t := &seqTrack{inSPI: sa.InSPI, esn: sa.ESN, margin: sa.OutSeqMargin, in: idOf(in), out: idOf(out),
		inBase: sa.InSeqLow, inPre: sa.InSeqLow, outPre: sa.OutSeq, base: sa.OutSeq}
	t.rearm(d.capLimit(sa.ESN, sa.OutSeqLimit))
	t.outDiff, t.inDiff = t.wantOut(), t.wantIn()
	return t
}

// capLimit caps a non-ESN limit to the 32-bit space.
func (d *DataPlane) capLimit(esn bool, limit uint64) uint64 {
	if !esn && limit > 0xffffffff {
		return 0xffffffff
	}
	return limit
}

// adoptTrack starts the bookkeeping of a CHILD SA whose states the kernel
// already holds (a restarted node adopting them): the kernel's numbers are
// the truth; its thresholds are set (d.mu held).
func (d *DataPlane) adoptTrack(sa *dataplane.ChildSA, in, out *netlink.XfrmState) error {
	t := &seqTrack{inSPI: sa.InSPI, esn: sa.ESN, margin: sa.OutSeqMargin, in: idOf(in), out: idOf(out)}
	oe, err := d.getAE(t.out)
	if err != nil {
		return fmt.Errorf("read replay state of spi %08x: %w", t.out.spi, err)
	}
	ie, err := d.getAE(t.in)
	if err != nil {
		return fmt.Errorf("read replay state of spi %08x: %w", t.in.spi, err)
	}
	t.outPre, t.inPre, t.inBase, t.base = oe.Replay.OSeq, ie.Replay.Seq, ie.Replay.Seq, oe.Replay.OSeq
	t.rearm(d.capLimit(sa.ESN, sa.OutSeqLimit))
	d.seqMu.Lock()
	defer d.seqMu.Unlock()
	d.seq[sa.InSPI] = t
	t.outDiff, t.inDiff = 0, 0 // whatever an earlier run set: set ours
	return errors.Join(d.setOutThresh(t), d.setInThresh(t))
}

// SetSeqLimit sets the highest outbound sequence number of a CHILD SA and
// re-arms its progress report (dataplane.SeqLimiter). The kernel cannot
// hold an SA at the limit: it keeps sending past it (logged, SeqStats
// OverLimit), so the margin between the report and the limit is all the
// time the node has to commit the next reservation. It sets the outbound
// state's threshold (one XFRM_MSG_NEWAE; a second for the inbound state
// when the reporting step changes).
func (d *DataPlane) SetSeqLimit(ctx context.Context, inSPI uint32, limit uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	e := d.sas[inSPI]
	if e == nil {
		return fmt.Errorf("xfrm: no SA with inbound SPI %08x", inSPI)
	}
	d.seqMu.Lock()
	defer d.seqMu.Unlock()
	t := d.seq[inSPI]
	if t == nil {
		return fmt.Errorf("xfrm: SA %08x_i has no sequence number state", inSPI)
	}
	limit, err := d.applySeqLimit(t, limit)
	if err != nil {
		return fmt.Errorf("xfrm: SA %08x_i: %w", inSPI, err)
	}
	c := *e.sa
	c.OutSeqLimit = limit
	e.sa = &c
	return nil
}

// applySeqLimit re-arms t for limit (d.seqMu held) and returns the limit
// as applied (capped to 32 bits without ESN). The threshold counts from
// outPre, the kernel's value at its last event (or an upper bound of it):
// no read needed.
func (d *DataPlane) applySeqLimit(t *seqTrack, limit uint64) (uint64, error) {
	limit = d.capLimit(t.esn, limit)
	t.rearm(limit)
	if err := d.setOutThresh(t); err != nil {
		return limit, err
	}
	if err := d.setInThresh(t); err != nil {
		return limit, err
	}
	return limit, nil
}

// seqTable is DataPlane's sequence number bookkeeping. seqMu is taken
// after DataPlane.mu when both are held; the event reader takes only it.
type seqTable struct {
	seqMu sync.Mutex
	seq   map[uint32]*seqTrack // by inbound SPI
}

func (d *DataPlane) untrack(inSPI uint32) {
	d.seqMu.Lock()
	delete(d.seq, inSPI)
	d.seqMu.Unlock()
}
