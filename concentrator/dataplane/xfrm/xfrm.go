package xfrm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// Options configure the xfrm data plane. The zero value of a field means
// its default (DefaultOptions).
type Options struct {
	// ReqIDBase and ReqIDSlots define ikefleet's reqid range
	// [ReqIDBase, ReqIDBase+2*ReqIDSlots): each CHILD SA takes one slot, two
	// reqids (out even, in odd). States, and policies whose templates carry
	// a reqid, outside the range are foreign and never touched.
	ReqIDBase  uint32
	ReqIDSlots uint32
	// ReplayWindow is the inbound anti-replay window in packets for ESN
	// SAs; non-ESN SAs are capped at 32 by the kernel.
	ReplayWindow uint32
	// PolicyPriority is the base of the policies' priorities (see priority).
	PolicyPriority uint32
	// Pools are the virtual-IP pools: each gets one route, not one per peer.
	Pools []netip.Prefix
	// RouteTable is the table routes go to (default main, 254).
	// RouteProtocol marks ikefleet's routes (default 0xe1); routes with
	// another protocol are never touched.
	RouteTable    int
	RouteProtocol netlink.RouteProtocol
	// HThresh4 and HThresh6 are the SPD hash thresholds set at start
	// (`ip xfrm policy set hthresh4 L R`): policies with a local prefix of
	// at least L and a remote prefix of at least R bits are hashed instead
	// of living in the priority-sorted list. [0, 32] makes every per-peer
	// /32 policy hashable. A negative L skips setting them.
	HThresh4, HThresh6 [2]int
	// SocketRecvBuffer and SocketSendBuffer size the IKE/NAT-T sockets
	// (SO_RCVBUF/SO_SNDBUF, bytes; 0: the system default).
	SocketRecvBuffer, SocketSendBuffer int
	// MSSClamp clamps the MSS of TCP SYNs entering or leaving a tunnel with
	// nftables; MSS is the value, 0 for the route's MTU ("rt mtu").
	MSSClamp bool
	MSS      uint16
	// PacketSoftLimit and PacketHardLimit lower the packets a state may
	// carry before the kernel expires it softly (Expiries reports it, the
	// node rekeys) or hard (the kernel deletes it). 0: for non-ESN SAs
	// SeqSoftPackets and SeqHardPackets (the sequence number must not
	// wrap; larger values are capped to them), for ESN SAs none. Mostly
	// for tests.
	PacketSoftLimit, PacketHardLimit uint64
	// ByteSoftLimit and ByteHardLimit are optional byte limits of each
	// state (0: none).
	ByteSoftLimit, ByteHardLimit uint64
	// ExpiryQueue is the capacity of the Expiries channel (default 4096);
	// expiries that find it full are dropped and counted.
	ExpiryQueue int
	// SeqQueue is the capacity of the SeqProgress channel (default 4096);
	// reports that find it full are tried again later (SeqStats Dropped).
	SeqQueue int
	// ClusterESP builds the nftables table ESPTable for a node of a
	// cluster: the sets of the SPIs of the CHILD SAs installed here, kept
	// in step with them; ESP-in-UDP to NATTPort for other SPIs goes to
	// NFQUEUE UnknownSPIQueue and is reported (OnUnknownSPI) before the
	// kernel sees it; and the fence (SetFenced) drops outbound ESP.
	ClusterESP bool
	// NATTPort is the node's NAT-T port (default 4500).
	NATTPort uint16
	// UnknownSPIQueue is the NFQUEUE number of ClusterESP (default 4500).
	UnknownSPIQueue uint16
	// NetNS, if valid, is the network namespace to work in (tests); the
	// default is the caller's.
	NetNS netns.NsHandle
	Log   *slog.Logger
}

// DefaultOptions are the defaults of every Options field.
func DefaultOptions() Options {
	return Options{
		ReqIDBase: 0x49460000, ReqIDSlots: 1 << 20, ReplayWindow: 128, PolicyPriority: 0x8000,
		RouteTable: unix.RT_TABLE_MAIN, RouteProtocol: 0xe1,
		HThresh4: [2]int{0, 32}, HThresh6: [2]int{0, 128}, MSSClamp: true, NetNS: -1,
		ExpiryQueue: 4096, SeqQueue: 4096, NATTPort: 4500, UnknownSPIQueue: 4500,
	}
}

func (o *Options) fill() {
	d := DefaultOptions()
	if o.ReqIDBase == 0 {
		o.ReqIDBase = d.ReqIDBase
	}
	if o.ReqIDSlots == 0 {
		o.ReqIDSlots = d.ReqIDSlots
	}
	if o.ReplayWindow == 0 {
		o.ReplayWindow = d.ReplayWindow
	}
	if o.PolicyPriority == 0 {
		o.PolicyPriority = d.PolicyPriority
	}
	if o.RouteTable == 0 {
		o.RouteTable = d.RouteTable
	}
	if o.RouteProtocol == 0 {
		o.RouteProtocol = d.RouteProtocol
	}
	if o.HThresh4 == ([2]int{}) {
		o.HThresh4 = d.HThresh4
	}
	if o.HThresh6 == ([2]int{}) {
		o.HThresh6 = d.HThresh6
	}
	if o.ExpiryQueue <= 0 {
		o.ExpiryQueue = d.ExpiryQueue
	}
	if o.SeqQueue <= 0 {
		o.SeqQueue = d.SeqQueue
	}
	if o.NATTPort == 0 {
		o.NATTPort = d.NATTPort
	}
	if o.UnknownSPIQueue == 0 {
		o.UnknownSPIQueue = d.UnknownSPIQueue
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// DataPlane is the kernel XFRM data plane. Safe for concurrent use.
type DataPlane struct {
	opts Options
	h    *netlink.Handle
	log  *slog.Logger

	mu     sync.Mutex
	closed bool
	sas    map[uint32]*entry       // by inbound SPI
	slots  map[uint32]uint32       // slot -> inbound SPI
	next   uint32                  // next slot to try
	routes map[netip.Prefix]*route // installed routes and who needs them
	mss    *mssClamp
	exp    *expiryMonitor
	mapm   *mappingMonitor // nil: the kernel refused the subscription
	raw    *rawXfrm        // requests the netlink library cannot make
	ae     aeIO            // raw, or a model in tests
	sm     *seqMonitor     // async events: sequence number progress
	esp    *espSteer       // ClusterESP: owned SPI sets and fence
	nfq    *nfQueue        // ClusterESP: ESP for SPIs not installed here
	seqTable
	// gone: the last counters of SAs removed, so that Report's totals
	// never go down.
	gone dataplane.Counters
}

type entry struct {
	sa    *dataplane.ChildSA
	slot  uint32
	ids   reqIDs
	route []netip.Prefix
	// base holds what states this SA had before an address move re-added
	// them (the kernel's counters start over; ours do not).
	base dataplane.Counters
	// lost: the indexes (in BuildPolicies' order) of the SA's policies
	// the kernel does not hold for it: taken over by a successor with the
	// same selector (takePolicies), deleted already, or never added (a
	// failed install). Its removal deletes the others without reading
	// them first. nil: it holds them all.
	lost []int
}

// holds reports whether the SA holds its policy of index i.
func (e *entry) holds(i int) bool { return !slices.Contains(e.lost, i) }

// lose records that the SA no longer holds its policy of index i.
func (e *entry) lose(i int) {
	if e.holds(i) {
		e.lost = append(e.lost, i)
	}
}

// take records that the SA holds its policy of index i.
func (e *entry) take(i int) {
	e.lost = slices.DeleteFunc(e.lost, func(j int) bool { return j == i })
}

type route struct {
	users map[uint32]bool // inbound SPIs
	pool  bool
}

var (
	_ dataplane.DataPlane      = (*DataPlane)(nil)
	_ dataplane.AddressUpdater = (*DataPlane)(nil)
	_ dataplane.SACounter      = (*DataPlane)(nil)
	_ dataplane.Reporter       = (*DataPlane)(nil)

	_ dataplane.Fencer             = (*DataPlane)(nil)
	_ dataplane.UnknownSPIReporter = (*DataPlane)(nil)
)

// New opens the data plane: one netlink handle (XFRM and route families),
// a subscription to the kernel's XFRM expire events (Expiries), SPD hash
// thresholds set, and the TCP MSS clamp installed if enabled. It
// does not touch installed SAs: call Reconcile.
func New(opts Options) (*DataPlane, error) {
	opts.fill()
	var h *netlink.Handle
	var err error
	if opts.NetNS.IsOpen() {
		h, err = netlink.NewHandleAt(opts.NetNS, unix.NETLINK_XFRM, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_XFRM, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("xfrm: netlink handle: %w", err)
	}
	d := &DataPlane{opts: opts, h: h, log: opts.Log,
		sas: map[uint32]*entry{}, slots: map[uint32]uint32{}, routes: map[netip.Prefix]*route{}}
	d.seq = map[uint32]*seqTrack{}
	raw, err := newRawXfrm(opts.NetNS)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("xfrm: netlink socket: %w", err)
	}
	d.raw, d.ae = raw, raw
	exp, err := newExpiryMonitor(opts.NetNS, opts.ExpiryQueue)
	if err != nil {
		raw.close()
		h.Close()
		return nil, fmt.Errorf("xfrm: subscribe to expire events: %w", err)
	}
	d.exp = exp
	sm, err := newSeqMonitor(opts.NetNS, opts.SeqQueue)
	if err != nil {
		exp.stop()
		raw.close()
		h.Close()
		return nil, fmt.Errorf("xfrm: subscribe to async events: %w", err)
	}
	d.sm = sm
	if mm, err := newMappingMonitor(opts.NetNS); err != nil {
		d.log.Warn("xfrm: no NAT mapping events (XFRMNLGRP_MAPPING)", "err", err)
	} else {
		d.mapm = mm
	}
	fail := func() {
		if d.mapm != nil {
			d.mapm.stop()
		}
		sm.stop()
		exp.stop()
		raw.close()
		h.Close()
	}
	if opts.HThresh4[0] >= 0 {
		if err := setSPDHashThresholds(opts.NetNS, opts.HThresh4, opts.HThresh6); err != nil {
			fail()
			return nil, fmt.Errorf("xfrm: SPD hash thresholds: %w", err)
		}
	}
	if opts.MSSClamp {
		m, err := installMSSClamp(opts.NetNS, opts.MSS)
		if err != nil {
			fail()
			return nil, fmt.Errorf("xfrm: TCP MSS clamp (nftables): %w", err)
		}
		d.mss = m
	}
	if opts.ClusterESP {
		esp, err := newESPSteer(opts.NetNS, opts.NATTPort, opts.UnknownSPIQueue, opts.Log)
		if err != nil {
			if d.mss != nil {
				_ = d.mss.remove()
			}
			fail()
			return nil, fmt.Errorf("xfrm: ESP SPI sets (nftables table inet %s; needs nf_tables and nft_queue): %w", ESPTable, err)
		}
		q, err := openNFQueue(opts.NetNS, opts.UnknownSPIQueue)
		if err != nil {
			_ = esp.close()
			if d.mss != nil {
				_ = d.mss.remove()
			}
			fail()
			return nil, fmt.Errorf("xfrm: ESP for SPIs not installed here (NFQUEUE %d, needs nfnetlink_queue; in use by another program?): %w", opts.UnknownSPIQueue, err)
		}
		d.esp, d.nfq = esp, q
	}
	go exp.run(d)
	go sm.run(d)
	if d.mapm != nil {
		go d.mapm.run(d)
	}
	return d, nil
}

// Name is "xfrm".
func (d *DataPlane) Name() string { return "xfrm" }

// Close stops the expiry and sequence number monitors (closing the
// Expiries and SeqProgress channels), releases the
// netlink handle and removes the MSS clamp table.
// Installed SAs stay: a node that stops is not a peer that left.
func (d *DataPlane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.mss != nil {
		errs = append(errs, d.mss.remove())
	}
	if d.nfq != nil {
		d.nfq.close()
	}
	if d.esp != nil {
		errs = append(errs, d.esp.close())
	}
	if d.mapm != nil {
		d.mapm.stop()
	}
	d.exp.stop()
	d.sm.stop()
	d.raw.close()
	d.h.Close()
	return errors.Join(errs...)
}

// OnUnknownSPI sets the function told of ESP-in-UDP whose SPI has no
// CHILD SA here (with ClusterESP; dataplane.UnknownSPIReporter). It is
// called on the queue's reader goroutine for every such packet.
func (d *DataPlane) OnUnknownSPI(f func(spi uint32)) {
	if d.nfq != nil {
		d.nfq.onSPI(f)
	}
}

// SetFenced stops (true) or resumes (false) outbound ESP of the CHILD SAs
// installed here at once: with ClusterESP the output chain of ESPTable
// drops their packets after encryption (dataplane.Fencer). The kernel's
// sequence numbers of dropped packets are used up; none reaches the wire.
func (d *DataPlane) SetFenced(f bool) {
	if d.esp == nil {
		d.log.Warn("xfrm: fence without the cluster ESP table (ClusterESP): outbound ESP not stopped", "fenced", f)
		return
	}
	if err := d.esp.setFenced(f); err != nil {
		d.log.Error("xfrm: fence", "fenced", f, "err", err)
	}
}

// ClusterESPStats are the counters of ClusterESP.
type ClusterESPStats struct {
	Queued, Reported uint64 // packets read from the queue; SPIs reported
	SetBatches       uint64 // set updates sent (each a batch of changes)
	SetErrors        uint64 // batches that failed (the sets were rewritten)
}

// ClusterESPStats returns ClusterESP's counters (zero without it).
func (d *DataPlane) ClusterESPStats() ClusterESPStats {
	if d.esp == nil {
		return ClusterESPStats{}
	}
	return ClusterESPStats{Queued: d.nfq.packets.Load(), Reported: d.nfq.reported.Load(),
		SetBatches: d.esp.batches.Load(), SetErrors: d.esp.errors.Load()}
}

// syncESPSets sends pending set changes now (tests).
func (d *DataPlane) syncESPSets() {
	if d.esp != nil {
		d.esp.sync()
	}
}

// ConfigureSocket prepares one of the node's UDP sockets: buffer sizes,
// and on the NAT-T port UDP_ENCAP_ESPINUDP so that the kernel decapsulates
// ESP while IKE (non-ESP marker) and keepalives still reach the socket.
func (d *DataPlane) ConfigureSocket(c *net.UDPConn, natt bool) error {
	if n := d.opts.SocketRecvBuffer; n > 0 {
		if err := c.SetReadBuffer(n); err != nil {
			return fmt.Errorf("SO_RCVBUF %d: %w", n, err)
		}
	}
	if n := d.opts.SocketSendBuffer; n > 0 {
		if err := c.SetWriteBuffer(n); err != nil {
			return fmt.Errorf("SO_SNDBUF %d: %w", n, err)
		}
	}
	if natt {
		return EnableESPInUDP(c)
	}
	return nil
}

// isExist reports an EEXIST answer: what we add is already there.
func isExist(err error) bool { return errors.Is(err, syscall.EEXIST) }

// isGone reports an answer meaning the object does not exist.
func isGone(err error) bool {
	return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT)
}

// allocSlot returns a free slot; the caller holds d.mu.
func (d *DataPlane) allocSlot() (uint32, error) {
	for i := uint32(0); i < d.opts.ReqIDSlots; i++ {
		s := (d.next + i) % d.opts.ReqIDSlots
		if _, used := d.slots[s]; !used {
			d.next = s + 1
			return s, nil
		}
	}
	return 0, fmt.Errorf("xfrm: all %d reqid slots in use", d.opts.ReqIDSlots)
}

// setSlot and freeSlot record who holds a slot (d.mu held), also for the
// expiry monitor.
func (d *DataPlane) setSlot(slot, inSPI uint32) {
	d.slots[slot] = inSPI
	d.exp.inBySlot.Store(slot, inSPI)
}

func (d *DataPlane) freeSlot(slot uint32) {
	delete(d.slots, slot)
	d.exp.inBySlot.Delete(slot)
}

// Install adds sa's two states, its policies and routes. Installing what
// is installed succeeds (EEXIST is success). A policy with the same
// selector that belongs to another of our SAs (a rekey's predecessor) is
// taken over; one that is not ours is an error.
func (d *DataPlane) Install(ctx context.Context, sa *dataplane.ChildSA) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	if err := d.install(sa, nil); err != nil {
		return &dataplane.InstallError{InSPI: sa.InSPI, OutSPI: sa.OutSPI, Err: err}
	}
	return nil
}

// install does Install with d.mu held; slot, if not nil, is the slot the
// SA already has in the kernel (adoption).
func (d *DataPlane) install(sa *dataplane.ChildSA, slot *uint32) error {
	e := d.sas[sa.InSPI]
	d.seqMu.Lock()
	tracked := d.seq[sa.InSPI] != nil
	d.seqMu.Unlock()
	if e == nil {
		var s uint32
		if slot != nil {
			s = *slot
		} else {
			var err error
			if s, err = d.allocSlot(); err != nil {
				return err
			}
		}
		c := *sa
		e = &entry{sa: &c, slot: s, ids: d.opts.reqIDsForSlot(s)}
	}
	in, out, err := BuildStates(&d.opts, sa, e.ids)
	if err != nil {
		return err
	}
	pols, err := BuildPolicies(&d.opts, sa, e.ids)
	if err != nil {
		return err
	}
	d.sas[sa.InSPI] = e
	d.setSlot(e.slot, sa.InSPI)
	undo := func() {
		_ = d.removeLocked(sa.InSPI)
	}
	// The states start at the SA's sequence numbers, with async event
	// thresholds for its progress reports.
	var t *seqTrack
	if !tracked {
		t = d.trackNew(sa, in, out)
	}
	// Both states and every policy in one netlink batch; a policy the
	// kernel already holds (EEXIST) is looked at alone below.
	inDiff, outDiff := uint32(maxDiffOff), uint32(maxDiffOff)
	if t != nil {
		inDiff, outDiff = t.inDiff, t.outDiff
	}
	reqs := make([]*nl.NetlinkRequest, 0, 2+len(pols))
	for _, s := range []struct {
		st      *netlink.XfrmState
		rp      Replay
		diff    uint32
		inbound bool
	}{
		{in, Replay{ESN: sa.ESN, Window: d.opts.ReplayWindow, Seq: sa.InSeqLow}, inDiff, true},
		{out, Replay{ESN: sa.ESN, Window: d.opts.ReplayWindow, OSeq: sa.OutSeq}, outDiff, false},
	} {
		req, err := stateRequest(s.st, s.rp, s.diff, s.inbound)
		if err != nil {
			undo()
			return fmt.Errorf("state spi %08x: %w", uint32(s.st.Spi), err)
		}
		reqs = append(reqs, req)
	}
	for _, p := range pols {
		reqs = append(reqs, policyRequest(p))
	}
	ans := d.raw.batch(reqs)
	// Until the EEXISTs are looked at, the SA holds what the kernel added
	// for it: an undo below deletes those, and only those.
	e.lost = e.lost[:0]
	for i := range pols {
		if ans[2+i].err != nil {
			e.lose(i)
		}
	}
	existed := false
	for i, st := range []*netlink.XfrmState{in, out} {
		switch err := ans[i].err; {
		case isExist(err):
			existed = true
		case err != nil:
			undo()
			return fmt.Errorf("state spi %08x: %w", uint32(st.Spi), err)
		}
	}
	switch {
	case tracked:
	case existed:
		// Installed before (by an earlier run): its numbers are the kernel's.
		if err := d.adoptTrack(sa, in, out); err != nil {
			undo()
			return err
		}
	default:
		d.seqMu.Lock()
		d.seq[sa.InSPI] = t
		d.seqMu.Unlock()
	}
	var taken []int // selectors that hold a policy already
	for i, p := range pols {
		switch err := ans[2+i].err; {
		case isExist(err):
			taken = append(taken, i)
		case err != nil:
			undo()
			return fmt.Errorf("policy %s %s -> %s: %w", p.Dir, p.Src, p.Dst, err)
		}
	}
	if err := d.takePolicies(pols, taken, e); err != nil {
		undo()
		return err
	}
	for _, t := range BuildRouteTargets(&d.opts, sa) {
		if err := d.addRoute(t, sa); err != nil {
			undo()
			return err
		}
		e.route = append(e.route, t.Prefix)
	}
	if d.esp != nil {
		d.esp.add(sa.InSPI, sa.OutSPI)
	}
	return nil
}

// takePolicies deals with the policies pols[i], i in taken, of e's SA
// whose selectors already hold a policy (their adds answered EEXIST):
// ours as wanted stays, another of ours (an older SA's or a reinstall's)
// is replaced, a foreign one is an error. Two netlink batches: the
// policies as the kernel holds them, then the updates. The SA whose
// policy one replaces no longer holds it (entry.lost).
func (d *DataPlane) takePolicies(pols []*netlink.XfrmPolicy, taken []int, e *entry) error {
	if len(taken) == 0 {
		return nil
	}
	gets := make([]*nl.NetlinkRequest, len(taken))
	for k, i := range taken {
		gets[k] = policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[i])
	}
	var upds []*nl.NetlinkRequest
	var updated []int // each update's policy
	var from []uint32 // and the slot it takes it from
	for k, a := range d.raw.batch(gets) {
		i := taken[k]
		p := pols[i]
		if a.err != nil {
			return fmt.Errorf("policy %s %s -> %s exists; get: %w", p.Dir, p.Src, p.Dst, a.err)
		}
		cur, err := parsePolicy(a.data)
		if err != nil {
			return fmt.Errorf("policy %s %s -> %s exists; get: %w", p.Dir, p.Src, p.Dst, err)
		}
		if policyReqID(&cur) == uint32(p.Tmpls[0].Reqid) && sameTmpl(&cur, p) {
			e.take(i) // ours, as wanted
			continue
		}
		slot, _, ok := d.opts.ours(policyReqID(&cur))
		if !ok {
			return fmt.Errorf("policy %s %s -> %s: a foreign policy (reqid %d) holds the selector", p.Dir, p.Src, p.Dst, policyReqID(&cur))
		}
		upds = append(upds, policyRequestOf(nl.XFRM_MSG_UPDPOLICY, p))
		updated, from = append(updated, i), append(from, slot)
	}
	var errs []error
	for k, a := range d.raw.batch(upds) {
		i := updated[k]
		if p := pols[i]; a.err != nil {
			errs = append(errs, fmt.Errorf("policy %s %s -> %s: take over: %w", p.Dir, p.Src, p.Dst, a.err))
			continue
		}
		e.take(i)
		if in, held := d.slots[from[k]]; held {
			if prev := d.sas[in]; prev != nil && prev != e {
				prevPols, _ := BuildPolicies(&d.opts, prev.sa, prev.ids)
				for j, q := range prevPols {
					if samePolicyID(q, pols[i]) {
						prev.lose(j)
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// samePolicyID reports whether a and b are one policy to the kernel:
// the same direction, selector, mark and interface ID.
func samePolicyID(a, b *netlink.XfrmPolicy) bool {
	var sa, sb nl.XfrmSelector
	policySel(&sa, a)
	policySel(&sb, b)
	return a.Dir == b.Dir && sa == sb && a.Ifid == b.Ifid && markOf(a.Mark) == markOf(b.Mark)
}

// markOf is m as the kernel keeps it (addMarkIfid: a mask of 0 is all
// ones); the zero mark when there is none.
func markOf(m *netlink.XfrmMark) netlink.XfrmMark {
	if m == nil {
		return netlink.XfrmMark{}
	}
	k := *m
	if k.Mask == 0 {
		k.Mask = ^uint32(0)
	}
	return k
}

func policyReqID(p *netlink.XfrmPolicy) uint32 {
	if len(p.Tmpls) == 0 {
		return 0
	}
	return uint32(p.Tmpls[0].Reqid)
}

func sameTmpl(a, b *netlink.XfrmPolicy) bool {
	if len(a.Tmpls) != 1 || len(b.Tmpls) != 1 {
		return false
	}
	x, y := a.Tmpls[0], b.Tmpls[0]
	return x.Src.Equal(y.Src) && x.Dst.Equal(y.Dst) && x.Reqid == y.Reqid && a.Priority == b.Priority
}

// addRoute makes sure t is routed towards sa's peer and records sa as a
// user. Routes carry opts.RouteProtocol so that only ours are ever removed.
func (d *DataPlane) addRoute(t RouteTarget, sa *dataplane.ChildSA) error {
	r := d.routes[t.Prefix]
	if r != nil {
		r.users[sa.InSPI] = true
		return nil
	}
	rt, err := d.buildRoute(t.Prefix, sa)
	if err != nil {
		return err
	}
	if err := d.h.RouteAdd(rt); err != nil && !isExist(err) {
		return fmt.Errorf("route %s: %w", t.Prefix, err)
	}
	d.routes[t.Prefix] = &route{users: map[uint32]bool{sa.InSPI: true}, pool: t.Pool}
	return nil
}

// buildRoute routes prefix out of the interface that reaches the peer's
// outer address. The xfrm policy lookup then replaces the route's output
// with the tunnel; the route only has to exist. Its source address is one
// of ours inside the local traffic selectors, if we have one, so that
// traffic the node itself originates matches the out policy.
func (d *DataPlane) buildRoute(prefix netip.Prefix, sa *dataplane.ChildSA) (*netlink.Route, error) {
	via, err := d.h.RouteGet(ipOf(sa.Remote.Addr()))
	if err != nil || len(via) == 0 {
		return nil, fmt.Errorf("route to peer %s: %v", sa.Remote.Addr(), err)
	}
	rt := &netlink.Route{
		Dst: ipNet(prefix), LinkIndex: via[0].LinkIndex, Gw: via[0].Gw,
		Table: d.opts.RouteTable, Protocol: d.opts.RouteProtocol, Scope: netlink.SCOPE_UNIVERSE,
	}
	family := netlink.FAMILY_V4
	if prefix.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	if rt.Gw != nil && (rt.Gw.To4() != nil) != prefix.Addr().Is4() {
		// An inner family the outer path does not share (IPv4 selectors
		// of a CHILD SA over IPv6, or the reverse): a route needs a
		// gateway of its own family, and the policy lookup replaces the
		// route anyway, so the route only names the interface.
		rt.Gw = nil
	}
	if rt.Gw == nil {
		rt.Scope = netlink.SCOPE_LINK
	}
	addrs, err := d.h.AddrList(nil, family)
	if err == nil {
	find:
		for _, ts := range sa.LocalTS {
			for _, a := range addrs {
				ip, ok := netip.AddrFromSlice(a.IP)
				if !ok {
					continue
				}
				ip = ip.Unmap()
				if ts.Start.Unmap().Compare(ip) <= 0 && ip.Compare(ts.End.Unmap()) <= 0 {
					rt.Src = a.IP
					break find
				}
			}
		}
	}
	return rt, nil
}

// Remove deletes the SA with inbound SPI inSPI: its states, the policies
// that still point at it (a successor's are left alone) and routes no
// other SA needs. Removing what is gone succeeds.
func (d *DataPlane) Remove(ctx context.Context, inSPI uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	return d.removeLocked(inSPI)
}

func (d *DataPlane) removeLocked(inSPI uint32) error {
	e := d.sas[inSPI]
	if e == nil {
		// Not in our table (say, installed before a restart and not yet
		// reconciled): remove what the kernel holds for it under our reqids.
		bySlot, err := d.scan()
		if err != nil {
			return err
		}
		for _, ins := range bySlot {
			if ins.in != nil && uint32(ins.in.Spi) == inSPI {
				return d.purge(ins)
			}
		}
		return nil
	}
	var errs []error
	// One netlink batch: the states' reads (their last counters), then
	// the deletes of the policies the SA holds (a successor's are left
	// alone: entry.lost) and of its states. The kernel handles them in
	// order, so the reads see the states as they were deleted.
	pols, _ := BuildPolicies(&d.opts, e.sa, e.ids)
	in, out, _ := BuildStates(&d.opts, e.sa, e.ids)
	states := []*netlink.XfrmState{in, out}
	reqs := make([]*nl.NetlinkRequest, 0, 2*len(states)+len(pols))
	for _, st := range states {
		if st != nil {
			reqs = append(reqs, stateIDRequest(nl.XFRM_MSG_GETSA, st))
		}
	}
	reads := len(reqs)
	what := make([]any, 0, len(pols)+len(states)) // each delete's object (a policy or a state), for its error
	idx := make([]int, 0, len(pols))              // each policy delete's index
	for i, p := range pols {
		if e.holds(i) {
			reqs = append(reqs, policyIDRequest(nl.XFRM_MSG_DELPOLICY, p))
			what, idx = append(what, p), append(idx, i)
		}
	}
	for _, st := range states {
		if st != nil {
			reqs = append(reqs, stateIDRequest(nl.XFRM_MSG_DELSA, st))
			what = append(what, st)
		}
	}
	ans := d.raw.batch(reqs)
	k := 0
	for i, st := range states {
		if st == nil {
			continue
		}
		if a := ans[k]; a.err == nil && len(a.data) >= nl.SizeofXfrmUsersaInfo {
			// Its last counters go to Report's totals.
			c := nl.DeserializeXfrmUsersaInfo(a.data).Curlft
			if i == 0 {
				d.gone.InBytes += c.Bytes + e.base.InBytes
				d.gone.InPackets += c.Packets + e.base.InPackets
			} else {
				d.gone.OutBytes += c.Bytes + e.base.OutBytes
				d.gone.OutPackets += c.Packets + e.base.OutPackets
			}
		}
		k++
	}
	for i, a := range ans[reads:] {
		ok := a.err == nil || isGone(a.err)
		switch w := what[i].(type) {
		case *netlink.XfrmPolicy:
			if ok {
				// Gone: should the rest fail and the removal be tried
				// again, a policy added since for the same selector is
				// not this SA's.
				e.lose(idx[i])
				continue
			}
			errs = append(errs, fmt.Errorf("delete policy %s %s -> %s: %w", w.Dir, w.Src, w.Dst, a.err))
		case *netlink.XfrmState:
			if !ok {
				errs = append(errs, fmt.Errorf("delete state spi %08x: %w", uint32(w.Spi), a.err))
			}
		}
	}
	for _, p := range e.route {
		r := d.routes[p]
		if r == nil {
			continue
		}
		delete(r.users, inSPI)
		if len(r.users) > 0 || r.pool {
			continue // pools stay while the node runs
		}
		if err := d.delRoute(p); err != nil {
			errs = append(errs, err)
		}
		delete(d.routes, p)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove CHILD_SA %08x_i: %w", inSPI, err)
	}
	delete(d.sas, inSPI)
	d.freeSlot(e.slot)
	d.untrack(inSPI)
	if d.esp != nil {
		d.esp.del(inSPI, e.sa.OutSPI)
	}
	return nil
}

func (d *DataPlane) delRoute(p netip.Prefix) error {
	// Scope "nowhere" matches a route of any scope (as ip route del does).
	rt := &netlink.Route{Dst: ipNet(p), Table: d.opts.RouteTable, Protocol: d.opts.RouteProtocol, Scope: netlink.SCOPE_NOWHERE}
	if err := d.h.RouteDel(rt); err != nil && !isGone(err) {
		return fmt.Errorf("delete route %s: %w", p, err)
	}
	return nil
}

// maxDumpTries bounds retries of a dump the kernel interrupted because the
// table changed under it.
const maxDumpTries = 10

func (d *DataPlane) states() ([]netlink.XfrmState, error) {
	for i := 0; ; i++ {
		s, err := d.h.XfrmStateList(netlink.FAMILY_ALL)
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < maxDumpTries {
			continue
		}
		return s, err
	}
}

func (d *DataPlane) policies() ([]netlink.XfrmPolicy, error) {
	for i := 0; ; i++ {
		p, err := d.raw.policies()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < maxDumpTries {
			continue
		}
		return p, err
	}
}

func (d *DataPlane) ourRoutes() ([]netlink.Route, error) {
	filter := &netlink.Route{Table: d.opts.RouteTable, Protocol: d.opts.RouteProtocol}
	for i := 0; ; i++ {
		r, err := d.h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < maxDumpTries {
			continue
		}
		return r, err
	}
}

// installed is what the kernel holds of one of our slots.
type installed struct {
	in, out  *netlink.XfrmState
	policies []netlink.XfrmPolicy
}

// scan reads our states and policies from the kernel, by slot.
func (d *DataPlane) scan() (map[uint32]*installed, error) {
	states, err := d.states()
	if err != nil {
		return nil, fmt.Errorf("xfrm: list states: %w", err)
	}
	pols, err := d.policies()
	if err != nil {
		return nil, fmt.Errorf("xfrm: list policies: %w", err)
	}
	bySlot := map[uint32]*installed{}
	get := func(slot uint32) *installed {
		if bySlot[slot] == nil {
			bySlot[slot] = &installed{}
		}
		return bySlot[slot]
	}
	for i := range states {
		st := &states[i]
		if st.Proto != netlink.XFRM_PROTO_ESP {
			continue
		}
		slot, in, ok := d.opts.ours(uint32(st.Reqid))
		if !ok {
			continue
		}
		if in {
			get(slot).in = st
		} else {
			get(slot).out = st
		}
	}
	for _, p := range pols {
		if len(p.Tmpls) != 1 {
			continue
		}
		slot, _, ok := d.opts.ours(uint32(p.Tmpls[0].Reqid))
		if !ok {
			continue
		}
		get(slot).policies = append(get(slot).policies, p)
	}
	return bySlot, nil
}

// childFromKernel rebuilds the CHILD SA a slot holds. What the kernel does
// not know (peer identity, IKE SPIs, virtual IP) stays empty; ESN is read
// from the replay state's kind (the kernel reports an ESN replay state,
// not the legacy one, for ESN SAs).
func childFromKernel(ins *installed) *dataplane.ChildSA {
	if ins.in == nil {
		return nil
	}
	in := ins.in
	sa := &dataplane.ChildSA{InSPI: uint32(in.Spi), Encap: in.Encap != nil}
	ap := func(ip net.IP, port int) netip.AddrPort {
		a, _ := netip.AddrFromSlice(ip)
		return netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	var lp, rp int
	if in.Encap != nil {
		lp, rp = in.Encap.DstPort, in.Encap.SrcPort
	}
	sa.Local, sa.Remote = ap(in.Dst, lp), ap(in.Src, rp)
	sa.ESN = in.Replay == nil
	fill := func(st *netlink.XfrmState, k *dataplane.Keys) {
		switch {
		case st.Aead != nil:
			k.Encr = st.Aead.Key
			switch {
			case st.Aead.Name == "rfc7539esp(chacha20,poly1305)":
				sa.EncrID = encrChaCha20Poly1305
			case st.Aead.ICVLen == 64:
				sa.EncrID = encrAESGCM8
			case st.Aead.ICVLen == 96:
				sa.EncrID = encrAESGCM12
			default:
				sa.EncrID = encrAESGCM16
				sa.EncrKeyBits = uint16((len(k.Encr) - 4) * 8)
			}
		case st.Crypt != nil:
			k.Encr = st.Crypt.Key
			if st.Crypt.Name == "rfc3686(ctr(aes))" {
				sa.EncrID, sa.EncrKeyBits = encrAESCTR, uint16((len(k.Encr)-4)*8)
			} else {
				sa.EncrID, sa.EncrKeyBits = encrAESCBC, uint16(len(k.Encr)*8)
			}
		}
		if st.Auth != nil {
			k.Integ = st.Auth.Key
			sa.IntegID = map[string]uint16{"hmac(sha256)": integHMACSHA256128, "hmac(sha384)": integHMACSHA384192,
				"hmac(sha512)": integHMACSHA512256, "hmac(sha1)": integHMACSHA196, "xcbc(aes)": integAESXCBC96}[st.Auth.Name]
		}
	}
	fill(in, &sa.In)
	if ins.out != nil {
		sa.OutSPI = uint32(ins.out.Spi)
		fill(ins.out, &sa.Out)
	}
	seenL, seenR := map[string]bool{}, map[string]bool{}
	sel := func(n *net.IPNet, proto netlink.Proto, port int) dataplane.Selector {
		p, _ := netip.AddrFromSlice(n.IP)
		bits, _ := n.Mask.Size()
		pfx := netip.PrefixFrom(p.Unmap(), bits)
		s := dataplane.Selector{Start: pfx.Masked().Addr(), End: lastAddr(pfx), IPProto: uint8(proto), EndPort: 0xffff}
		if port != 0 {
			s.StartPort, s.EndPort = uint16(port), uint16(port)
		}
		return s
	}
	for _, p := range ins.policies {
		if p.Dir != netlink.XFRM_DIR_OUT || p.Src == nil || p.Dst == nil {
			continue
		}
		if k := p.Src.String() + fmt.Sprint(p.Proto, p.SrcPort); !seenL[k] {
			seenL[k] = true
			sa.LocalTS = append(sa.LocalTS, sel(p.Src, p.Proto, p.SrcPort))
		}
		if k := p.Dst.String() + fmt.Sprint(p.Proto, p.DstPort); !seenR[k] {
			seenR[k] = true
			sa.RemoteTS = append(sa.RemoteTS, sel(p.Dst, p.Proto, p.DstPort))
		}
	}
	return sa
}

// List returns the CHILD SAs installed in the kernel under ikefleet's
// reqids, rebuilt from the kernel's states and out policies; for SAs this
// instance installed, the fields the kernel does not hold (peer, IKE SPIs,
// virtual IP, creation time) come from its table.
func (d *DataPlane) List(ctx context.Context) ([]*dataplane.ChildSA, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, dataplane.ErrClosed
	}
	bySlot, err := d.scan()
	if err != nil {
		return nil, err
	}
	var out []*dataplane.ChildSA
	for _, ins := range bySlot {
		sa := childFromKernel(ins)
		if sa == nil {
			continue
		}
		if e := d.sas[sa.InSPI]; e != nil {
			sa.VirtualIP, sa.PeerID, sa.IKESPIi, sa.IKESPIr, sa.Created =
				e.sa.VirtualIP, e.sa.PeerID, e.sa.IKESPIi, e.sa.IKESPIr, e.sa.Created
		}
		out = append(out, sa)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InSPI < out[j].InSPI })
	return out, nil
}

// Counters reads every one of our SAs' byte and packet counters from the
// kernel states.
func (d *DataPlane) Counters(ctx context.Context) ([]dataplane.Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, dataplane.ErrClosed
	}
	states, err := d.states()
	if err != nil {
		return nil, fmt.Errorf("xfrm: list states: %w", err)
	}
	bySlot := map[uint32]*dataplane.Counters{}
	for _, st := range states {
		slot, in, ok := d.opts.ours(uint32(st.Reqid))
		if !ok || st.Proto != netlink.XFRM_PROTO_ESP {
			continue
		}
		c := bySlot[slot]
		if c == nil {
			c = &dataplane.Counters{}
			bySlot[slot] = c
		}
		if in {
			c.InSPI = uint32(st.Spi)
			c.InBytes, c.InPackets = st.Statistics.Bytes, st.Statistics.Packets
		} else {
			c.OutBytes, c.OutPackets = st.Statistics.Bytes, st.Statistics.Packets
		}
	}
	out := make([]dataplane.Counters, 0, len(bySlot))
	for _, c := range bySlot {
		if c.InSPI != 0 {
			if e := d.sas[c.InSPI]; e != nil {
				*c = addBase(*c, e.base)
			}
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InSPI < out[j].InSPI })
	return out, nil
}

// Reconcile makes the kernel hold exactly want among ikefleet's SAs: SAs
// installed under our reqids that want names (same inbound and outbound
// SPI and outer addresses) are adopted — their slot is kept and anything
// missing (a policy, a route) is re-added —, the others are removed with
// their policies and routes (strays), and wanted SAs not installed are
// installed. Policies of our reqid range without states, and routes with
// our route protocol that no SA needs, are removed too. Foreign states,
// policies and routes are never touched.
func (d *DataPlane) Reconcile(ctx context.Context, want []*dataplane.ChildSA) (adopted, removed int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, 0, dataplane.ErrClosed
	}
	bySlot, err := d.scan()
	if err != nil {
		return 0, 0, err
	}
	wanted := map[uint32]*dataplane.ChildSA{}
	for _, sa := range want {
		wanted[sa.InSPI] = sa
	}
	var errs []error
	for slot, ins := range bySlot {
		k := childFromKernel(ins)
		w := (*dataplane.ChildSA)(nil)
		if k != nil {
			w = wanted[k.InSPI]
		}
		if w != nil && ins.out != nil && w.OutSPI == k.OutSPI && w.Local == k.Local && w.Remote == k.Remote {
			if cur := d.sas[k.InSPI]; cur != nil && cur.slot != slot {
				d.freeSlot(cur.slot)
				delete(d.sas, k.InSPI)
				d.untrack(k.InSPI)
			}
			// Idempotent: re-adds whatever policy went missing.
			if err := d.install(w, &slot); err != nil {
				errs = append(errs, fmt.Errorf("adopt %08x_i: %w", k.InSPI, err))
				continue
			}
			adopted++
			continue
		}
		// A stray: remove whatever the slot holds, directly from what the
		// kernel reported.
		if err := d.purge(ins); err != nil {
			errs = append(errs, err)
			continue
		}
		if k != nil || ins.out != nil {
			removed++
		}
		if e, ok := d.slots[slot]; ok {
			delete(d.sas, e)
			d.untrack(e)
			d.freeSlot(slot)
		}
	}
	for _, sa := range want {
		if e := d.sas[sa.InSPI]; e != nil {
			continue
		}
		if err := d.install(sa, nil); err != nil {
			errs = append(errs, &dataplane.InstallError{InSPI: sa.InSPI, OutSPI: sa.OutSPI, Err: err})
		}
	}
	// Forget SAs of our table that the kernel no longer has and nobody wants.
	for spi, e := range d.sas {
		if _, ok := wanted[spi]; !ok {
			if _, inKernel := bySlot[e.slot]; !inKernel {
				if d.esp != nil {
					d.esp.del(spi, e.sa.OutSPI)
				}
				delete(d.sas, spi)
				d.untrack(spi)
				d.freeSlot(e.slot)
			}
		}
	}
	if err := d.reconcileRoutes(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return adopted, removed, fmt.Errorf("xfrm: reconcile: %w", errors.Join(errs...))
	}
	d.log.Info("xfrm reconciled", "adopted", adopted, "removed", removed, "installed", len(d.sas))
	return adopted, removed, nil
}

// purge deletes the states and policies of one stray slot.
func (d *DataPlane) purge(ins *installed) error {
	var errs []error
	for i := range ins.policies {
		p := &ins.policies[i]
		if err := d.h.XfrmPolicyDel(p); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete stray policy %s %s -> %s: %w", p.Dir, p.Src, p.Dst, err))
		}
	}
	for _, st := range []*netlink.XfrmState{ins.in, ins.out} {
		if st == nil {
			continue
		}
		if err := d.h.XfrmStateDel(st); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete stray state spi %08x: %w", uint32(st.Spi), err))
		}
	}
	if d.esp != nil && ins.in != nil {
		out := uint32(0)
		if ins.out != nil {
			out = uint32(ins.out.Spi)
		}
		d.esp.del(uint32(ins.in.Spi), out)
	}
	return errors.Join(errs...)
}

// reconcileRoutes rebuilds route users from the table and removes our
// routes that no SA needs.
func (d *DataPlane) reconcileRoutes() error {
	need := map[netip.Prefix]*route{}
	for spi, e := range d.sas {
		e.route = e.route[:0]
		for _, t := range BuildRouteTargets(&d.opts, e.sa) {
			r := need[t.Prefix]
			if r == nil {
				r = &route{users: map[uint32]bool{}, pool: t.Pool}
				need[t.Prefix] = r
			}
			r.users[spi] = true
			e.route = append(e.route, t.Prefix)
		}
	}
	routes, err := d.ourRoutes()
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	var errs []error
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		a, _ := netip.AddrFromSlice(rt.Dst.IP)
		bits, _ := rt.Dst.Mask.Size()
		p := netip.PrefixFrom(a.Unmap(), bits)
		if need[p] != nil {
			continue
		}
		if err := d.h.RouteDel(&rt); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete stray route %s: %w", p, err))
		}
	}
	d.routes = need
	// Re-add routes that went missing.
	for p, r := range need {
		for spi := range r.users {
			rt, err := d.buildRoute(p, d.sas[spi].sa)
			if err == nil {
				err = d.h.RouteAdd(rt)
			}
			if err != nil && !isExist(err) {
				errs = append(errs, fmt.Errorf("route %s: %w", p, err))
			}
			break
		}
	}
	return errors.Join(errs...)
}

// UpdateAddresses moves an installed CHILD SA to new outer addresses (NAT
// rebinding, MOBIKE) keeping its counters (kept by this process across a
// re-add), sequence numbers and replay window. A port-only change (the
// common NAT rebinding) updates the states' encapsulation in place
// (XFRM_MSG_UPDSA). An address change re-adds the states — their IDs
// contain the addresses — carrying the replay state over (64-bit with
// ESN), and points the policies' templates at the new addresses. The
// outbound number jumps ahead by moveSeqSlack: packets sent between
// reading the old state and deleting it must not see their numbers again.
func (d *DataPlane) UpdateAddresses(ctx context.Context, inSPI uint32, local, remote netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	e := d.sas[inSPI]
	if e == nil {
		return fmt.Errorf("xfrm: no SA with inbound SPI %08x", inSPI)
	}
	nu := *e.sa
	nu.Local, nu.Remote = local, remote
	in, out, err := BuildStates(&d.opts, &nu, e.ids)
	if err != nil {
		return err
	}
	if e.sa.Local.Addr() == local.Addr() && e.sa.Remote.Addr() == remote.Addr() {
		for _, st := range []*netlink.XfrmState{in, out} {
			if err := d.h.XfrmStateUpdate(st); err != nil {
				return fmt.Errorf("xfrm: update state spi %08x: %w", uint32(st.Spi), err)
			}
		}
		e.sa = &nu
		return nil
	}
	oldIn, oldOut, err := BuildStates(&d.opts, e.sa, e.ids)
	if err != nil {
		return err
	}
	d.seqMu.Lock()
	defer d.seqMu.Unlock()
	t := d.seq[inSPI]
	for _, p := range []struct{ old, nu *netlink.XfrmState }{{oldIn, in}, {oldOut, out}} {
		cur, err := d.h.XfrmStateGet(p.old)
		if err != nil {
			return fmt.Errorf("xfrm: state spi %08x: %w", uint32(p.old.Spi), err)
		}
		ae, err := d.getAE(idOf(p.old))
		if err != nil {
			return fmt.Errorf("xfrm: replay state of spi %08x: %w", uint32(p.old.Spi), err)
		}
		rp := ae.Replay
		rp.ESN, rp.Window = e.sa.ESN, d.opts.ReplayWindow
		// The re-added state's counters start over while its sequence
		// numbers carry on: its limits are what the old one had left.
		p.nu.Limits = remainingLimits(p.nu.Limits, cur.Statistics.Packets, cur.Statistics.Bytes)
		diff := uint32(maxDiffOff)
		if p.old == oldIn {
			e.base.InBytes += cur.Statistics.Bytes
			e.base.InPackets += cur.Statistics.Packets
			rp.OSeq = 0
			if t != nil {
				t.in, t.inPre = idOf(p.nu), rp.Seq
				t.inDiff = t.wantIn()
				diff = t.inDiff
			}
		} else {
			e.base.OutBytes += cur.Statistics.Bytes
			e.base.OutPackets += cur.Statistics.Packets
			// Packets sent between the read and the delete used numbers
			// the read missed: skip ahead rather than use one twice.
			rp.Seq, rp.Bitmap = 0, nil
			rp.OSeq = min(rp.OSeq+moveSeqSlack, seqSpaceEnd(e.sa.ESN))
			if t != nil {
				t.out, t.outPre = idOf(p.nu), rp.OSeq
				t.outDiff = t.wantOut()
				diff = t.outDiff
			}
		}
		if err := d.h.XfrmStateDel(p.old); err != nil && !isGone(err) {
			return fmt.Errorf("xfrm: move state spi %08x: %w", uint32(p.old.Spi), err)
		}
		if err := d.raw.addState(p.nu, rp, diff, p.old == oldIn); err != nil && !isExist(err) {
			return fmt.Errorf("xfrm: move state spi %08x: %w", uint32(p.nu.Spi), err)
		}
	}
	pols, err := BuildPolicies(&d.opts, &nu, e.ids)
	if err != nil {
		return err
	}
	adds := make([]*nl.NetlinkRequest, len(pols))
	for i, p := range pols {
		adds[i] = policyRequest(p)
	}
	var taken []int
	for i, a := range d.raw.batch(adds) {
		switch {
		case isExist(a.err):
			taken = append(taken, i)
		case a.err != nil:
			return fmt.Errorf("xfrm: move: policy %s %s -> %s: %w", pols[i].Dir, pols[i].Src, pols[i].Dst, a.err)
		}
	}
	if err := d.takePolicies(pols, taken, e); err != nil {
		return fmt.Errorf("xfrm: move: %w", err)
	}
	e.sa, e.lost = &nu, nil
	return nil
}

// moveSeqSlack is how far an outbound number jumps when its state is
// re-added (UpdateAddresses).
const moveSeqSlack = 1024

// seqSpaceEnd is the last sequence number of an SA.
func seqSpaceEnd(esn bool) uint64 {
	if esn {
		return ^uint64(0)
	}
	return 0xffffffff
}

// InboundPackets reads the inbound states' packet counts (each packet
// counted once the kernel authenticated it; across address moves, as
// Counter counts them) in one netlink batch (dataplane.TrafficCounter).
func (d *DataPlane) InboundPackets(_ context.Context, inSPIs []uint32, packets []uint64) {
	reqs := make([]*nl.NetlinkRequest, 0, len(inSPIs))
	at := make([]int, 0, len(inSPIs)) // each request's SA in inSPIs
	base := make([]uint64, 0, len(inSPIs))
	d.mu.Lock()
	for i, spi := range inSPIs {
		packets[i] = ^uint64(0)
		e := d.sas[spi]
		if e == nil || d.closed {
			continue
		}
		in, _, err := BuildStates(&d.opts, e.sa, e.ids)
		if err != nil {
			continue
		}
		reqs = append(reqs, stateIDRequest(nl.XFRM_MSG_GETSA, in))
		at, base = append(at, i), append(base, e.base.InPackets)
	}
	d.mu.Unlock()
	if len(reqs) == 0 {
		return
	}
	for k, a := range d.raw.batch(reqs) {
		if a.err == nil && len(a.data) >= nl.SizeofXfrmUsersaInfo {
			packets[at[k]] = nl.DeserializeXfrmUsersaInfo(a.data).Curlft.Packets + base[k]
		}
	}
}

// Counter reads one CHILD SA's counters from its two kernel states.
func (d *DataPlane) Counter(ctx context.Context, inSPI uint32) (dataplane.Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := dataplane.Counters{InSPI: inSPI}
	if d.closed {
		return c, dataplane.ErrClosed
	}
	e := d.sas[inSPI]
	if e == nil {
		return c, fmt.Errorf("xfrm: no SA with inbound SPI %08x", inSPI)
	}
	in, out, err := BuildStates(&d.opts, e.sa, e.ids)
	if err != nil {
		return c, err
	}
	si, err := d.h.XfrmStateGet(in)
	if err != nil {
		return c, fmt.Errorf("xfrm: state spi %08x: %w", inSPI, err)
	}
	so, err := d.h.XfrmStateGet(out)
	if err != nil {
		return c, fmt.Errorf("xfrm: state spi %08x: %w", e.sa.OutSPI, err)
	}
	c.InBytes, c.InPackets = si.Statistics.Bytes, si.Statistics.Packets
	c.OutBytes, c.OutPackets = so.Statistics.Bytes, so.Statistics.Packets
	return addBase(c, e.base), nil
}

func addBase(c, base dataplane.Counters) dataplane.Counters {
	c.InBytes += base.InBytes
	c.InPackets += base.InPackets
	c.OutBytes += base.OutBytes
	c.OutPackets += base.OutPackets
	return c
}
