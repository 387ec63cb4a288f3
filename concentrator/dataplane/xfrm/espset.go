package xfrm

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ESPTable is the nftables table (family inet) through which a node of a
// cluster sees ESP for SAs it does not hold, and with which it fences its
// outbound ESP:
//
//	table inet ikefleet_esp {
//	  set owned { typeof @th,64,32; }    # inbound SPIs of the CHILD SAs installed here
//	  set out   { typeof @th,64,32; }    # their outbound SPIs
//	  chain input { type filter hook input priority filter;
//	    meta l4proto udp udp dport NATT @th,64,32 != 0 @th,64,32 != @owned counter queue num Q bypass }
//	  chain output { type filter hook output priority filter;
//	    # only while fenced (SetFenced):
//	    meta l4proto udp udp sport NATT @th,64,32 @out counter drop
//	    meta l4proto esp @th,0,32 @out counter drop }
//	}
//
// The kernel's ESP-in-UDP socket takes every datagram on the NAT-T port
// that does not start with the non-ESP marker (four zero bytes) as ESP,
// and drops ESP for an SPI without a state silently. The input rule sends
// those packets, and only those (SPIs not in owned), to user space
// through NFQUEUE first: the node claims the SA from the node that owns it
// (dataplane.UnknownSPIReporter) and the verdict is accept, so that a
// packet that arrives after the claim installed the state is decrypted
// even before the set has the SPI. "bypass": with nobody reading the
// queue (the node stopped) packets pass as if the rule were not there.
const ESPTable = "ikefleet_esp"

// Names in ESPTable.
const (
	espSetOwned    = "owned"
	espSetOut      = "out"
	espChainInput  = "input"
	espChainOutput = "output"
)

// espSetChunk bounds the elements of one set message (netlink messages
// are limited in size; a batch holds many messages).
const espSetChunk = 1024

// spiKey is a set element's key: the SPI as the packet carries it
// (network byte order), which is what a payload load puts in a register.
func spiKey(spi uint32) []byte { return binary.BigEndian.AppendUint32(nil, spi) }

// espMarkerLoad loads the four bytes after the UDP header (the SPI of
// ESP-in-UDP, zero for IKE's non-ESP marker) into register 1.
func espMarkerLoad() *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 4}
}

// udpPort matches UDP with destination (dst) or source port port.
func udpPort(port uint16, dst bool) []expr.Any {
	off := uint32(0)
	if dst {
		off = 2
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// unknownSPIRule is the input rule: ESP-in-UDP to port natt whose SPI is
// not in owned goes to NFQUEUE queue (bypass when nobody listens).
func unknownSPIRule(owned *nftables.Set, natt, queue uint16) []expr.Any {
	return append(udpPort(natt, true),
		espMarkerLoad(),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		espMarkerLoad(),
		&expr.Lookup{SourceRegister: 1, SetName: owned.Name, SetID: owned.ID, Invert: true},
		&expr.Counter{},
		&expr.Queue{Num: queue, Flag: expr.QueueFlagBypass},
	)
}

// fenceRules are the output rules of a fenced node: ESP-in-UDP from port
// natt, and plain ESP, with an outbound SPI in out is dropped after the
// kernel encrypted it (ESP packets pass the output hook after XFRM).
func fenceRules(out *nftables.Set, natt uint16) [][]expr.Any {
	lookup := func() *expr.Lookup { return &expr.Lookup{SourceRegister: 1, SetName: out.Name, SetID: out.ID} }
	drop := func() *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictDrop} }
	return [][]expr.Any{
		append(udpPort(natt, false), espMarkerLoad(), lookup(), &expr.Counter{}, drop()),
		{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ESP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 4},
			lookup(), &expr.Counter{}, drop(),
		},
	}
}

// espSteer keeps ESPTable: the owned and out sets in step with the SA
// table (updates are batched: Install and Remove only note them, a
// goroutine sends whatever accumulated in one netlink batch), and the
// fence. Safe for concurrent use.
type espSteer struct {
	ns    netns.NsHandle
	natt  uint16
	queue uint16
	log   *slog.Logger

	table          *nftables.Table
	owned, out     *nftables.Set
	input, output  *nftables.Chain
	nftMu          sync.Mutex     // one batch at a time (a Conn collects messages)
	conn           *nftables.Conn // sync's, kept open from batch to batch (under nftMu)
	haveIn, haveOt map[uint32]bool

	mu              sync.Mutex
	pendIn, pendOut map[uint32]bool // true: add, false: delete
	fenced          bool
	kick            chan struct{}
	done            chan struct{}
	stopped         bool
	errors          atomic.Uint64 // batches that failed
	batches         atomic.Uint64
}

// newESPSteer installs ESPTable, replacing one left by an earlier run
// (its sets name SAs this process may not hold), and starts the batcher.
// queue 0: no input rule (only the fence).
func newESPSteer(ns netns.NsHandle, natt, queue uint16, log *slog.Logger) (*espSteer, error) {
	s := &espSteer{ns: ns, natt: natt, queue: queue, log: log,
		haveIn: map[uint32]bool{}, haveOt: map[uint32]bool{},
		pendIn: map[uint32]bool{}, pendOut: map[uint32]bool{},
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	c, err := nftConn(ns)
	if err != nil {
		return nil, err
	}
	if err := delTableIfPresent(c, ESPTable); err != nil {
		return nil, err
	}
	s.build(c)
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables table inet %s: %w", ESPTable, err)
	}
	go s.run()
	return s, nil
}

// build adds the table, its sets, chains and the input rule to c's batch.
func (s *espSteer) build(c *nftables.Conn) {
	s.table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: ESPTable})
	set := func(name string) *nftables.Set {
		st := &nftables.Set{Table: s.table, Name: name, KeyType: nftables.TypeInteger, KeyByteOrder: binaryutil.BigEndian}
		_ = c.AddSet(st, nil) // only fails for bad element lists
		return st
	}
	s.owned, s.out = set(espSetOwned), set(espSetOut)
	s.input = c.AddChain(&nftables.Chain{Name: espChainInput, Table: s.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	s.output = c.AddChain(&nftables.Chain{Name: espChainOutput, Table: s.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	if s.queue != 0 {
		c.AddRule(&nftables.Rule{Table: s.table, Chain: s.input, Exprs: unknownSPIRule(s.owned, s.natt, s.queue)})
	}
}

func delTableIfPresent(c *nftables.Conn, name string) error {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("nftables: replace table %s: %w", name, err)
			}
		}
	}
	return nil
}

// add notes that the CHILD SA with SPIs in/out is installed here.
func (s *espSteer) add(in, out uint32) { s.note(in, out, true) }

// del notes that it is gone.
func (s *espSteer) del(in, out uint32) { s.note(in, out, false) }

func (s *espSteer) note(in, out uint32, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.pendIn[in] = add
	if out != 0 {
		s.pendOut[out] = add
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *espSteer) run() {
	defer close(s.done)
	for range s.kick {
		s.sync()
	}
}

// sync sends the pending set changes in one batch.
func (s *espSteer) sync() {
	s.nftMu.Lock()
	defer s.nftMu.Unlock()
	s.mu.Lock()
	pin, pout := s.pendIn, s.pendOut
	s.pendIn, s.pendOut = map[uint32]bool{}, map[uint32]bool{}
	s.mu.Unlock()
	if len(pin) == 0 && len(pout) == 0 {
		return
	}
	// One netlink socket for every batch: opening and closing one was
	// 43% of a batch's CPU (make bench-node-vm's profile, xfrm+embedded).
	if s.conn == nil {
		c, err := lastingNftConn(s.ns)
		if err != nil {
			s.errors.Add(1)
			s.log.Warn("nftables: ESP sets not updated", "err", err)
			// The changes stay pending for the next round.
			s.mu.Lock()
			requeue(s.pendIn, pin)
			requeue(s.pendOut, pout)
			s.mu.Unlock()
			return
		}
		s.conn = c
	}
	c := s.conn
	addIn, delIn := setDiff(s.haveIn, pin)
	addOut, delOut := setDiff(s.haveOt, pout)
	for _, ch := range []struct {
		set      *nftables.Set
		add, del []uint32
	}{{s.owned, addIn, delIn}, {s.out, addOut, delOut}} {
		setOps(c, ch.set, ch.add, ch.del)
	}
	s.batches.Add(1)
	err := c.Flush()
	apply := func(have map[uint32]bool, add, del []uint32) {
		for _, k := range add {
			have[k] = true
		}
		for _, k := range del {
			delete(have, k)
		}
	}
	apply(s.haveIn, addIn, delIn)
	apply(s.haveOt, addOut, delOut)
	if err == nil {
		return
	}
	// Someone changed the sets under us (an element we delete is gone,
	// say): replace their contents with ours, on a fresh connection (the
	// kept one is dropped, in case it is what failed).
	s.errors.Add(1)
	s.log.Warn("nftables: ESP set update failed, rewriting the sets", "err", err)
	_ = s.conn.CloseLasting()
	s.conn = nil
	if c, err = nftConn(s.ns); err != nil {
		s.log.Error("nftables: ESP sets not rewritten", "err", err)
		return
	}
	for _, p := range []struct {
		set  *nftables.Set
		have map[uint32]bool
	}{{s.owned, s.haveIn}, {s.out, s.haveOt}} {
		c.FlushSet(p.set)
		all := make([]uint32, 0, len(p.have))
		for k := range p.have {
			all = append(all, k)
		}
		setOps(c, p.set, all, nil)
	}
	if err := c.Flush(); err != nil {
		s.errors.Add(1)
		s.log.Error("nftables: ESP sets not rewritten", "err", err)
	}
}

// requeue puts changes taken from pend back into it, behind any change
// of the same SPI noted since (which is newer).
func requeue(pend, taken map[uint32]bool) {
	for k, v := range taken {
		if _, later := pend[k]; !later {
			pend[k] = v
		}
	}
}

// setDiff splits the pending changes into what to add to and delete from
// a set that holds have.
func setDiff(have map[uint32]bool, pend map[uint32]bool) (add, del []uint32) {
	for k, a := range pend {
		switch {
		case a && !have[k]:
			add = append(add, k)
		case !a && have[k]:
			del = append(del, k)
		}
	}
	return add, del
}

// setOps adds element additions and deletions to c's batch, in chunks.
func setOps(c *nftables.Conn, set *nftables.Set, add, del []uint32) {
	for _, op := range []struct {
		spis []uint32
		f    func(*nftables.Set, []nftables.SetElement) error
	}{{add, c.SetAddElements}, {del, c.SetDeleteElements}} {
		for len(op.spis) > 0 {
			n := min(len(op.spis), espSetChunk)
			els := make([]nftables.SetElement, n)
			for i, spi := range op.spis[:n] {
				els[i] = nftables.SetElement{Key: spiKey(spi)}
			}
			_ = op.f(set, els) // only fails for anonymous sets
			op.spis = op.spis[n:]
		}
	}
}

// setFenced adds (true) or removes (false) the output chain's drop rules.
func (s *espSteer) setFenced(fenced bool) error {
	s.nftMu.Lock()
	defer s.nftMu.Unlock()
	s.mu.Lock()
	same := s.fenced == fenced
	s.mu.Unlock()
	if same {
		return nil
	}
	c, err := nftConn(s.ns)
	if err != nil {
		return err
	}
	c.FlushChain(s.output)
	if fenced {
		for _, r := range fenceRules(s.out, s.natt) {
			c.AddRule(&nftables.Rule{Table: s.table, Chain: s.output, Exprs: r})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: fence (%v): %w", fenced, err)
	}
	s.mu.Lock()
	s.fenced = fenced
	s.mu.Unlock()
	return nil
}

// close stops the batcher and removes the table.
func (s *espSteer) close() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	close(s.kick)
	s.mu.Unlock()
	<-s.done
	s.nftMu.Lock()
	defer s.nftMu.Unlock()
	if s.conn != nil {
		_ = s.conn.CloseLasting()
		s.conn = nil
	}
	c, err := nftConn(s.ns)
	if err != nil {
		return err
	}
	c.DelTable(s.table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: remove table %s: %w", ESPTable, err)
	}
	return nil
}
