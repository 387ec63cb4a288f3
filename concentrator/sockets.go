package concentrator

// The UDP socket loops: IKE on port 500 and 4500 (with the non-ESP marker),
// NAT-T keepalives, and user-space ESP handed to the data plane. Each port
// has two sockets (ike.split_sockets; transport.ListenSplit), between which
// the kernel divides the datagrams: new IKE_SA_INITs without a cookie to
// one, everything else to the other, each with its own receive buffer and
// readers; both are read alike. Each
// socket is read by several goroutines (socketReaders), a batch of
// datagrams at a time (recvmmsg), into buffers sized by ike.socket_buffer;
// each shard queues new IKE_SA_INITs apart from the rest and serves the
// rest first. While a shard demands cookies (among other reasons, because
// its queue of new IKE_SA_INITs backs up), the socket loop answers new
// IKE_SA_INITs without one itself and queues those with a valid one apart,
// after the rest and before other new ones (ike.Cookies.Screen).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
	"github.com/ikefleet/ikefleet/concentrator/transport"
)

// Implementation limits of the socket loop.
const (
	shardQueueLen = 4096  // packets of established and authenticating SAs waiting per shard before we drop
	initQueueLen  = 8192  // new IKE_SA_INITs waiting per shard before we drop (the peers retransmit)
	maxDatagram   = 65535 // UDP payload
	readBatchLen  = 16    // datagrams per recvmmsg
	// readSlice: how long a socket's reader goes on reading full batches
	// before it lets the other goroutines run. Drained in turns of one
	// batch, a socket of a node short of CPU overflowed: the reader waits
	// behind every runnable goroutine between turns, and the kernel drops
	// at the socket whatever comes, IKE_AUTH and liveness checks as new
	// IKE_SA_INITs, before the shard queues can put the established SAs
	// first. Read for this long, the queues see it all and drop what
	// they can spare. 2 ms, not 0.5: a burst of 20,000 deletes at once
	// against a node short of CPU still overflowed the socket's buffer
	// in 0.5 ms slices (2 runs of 9), in 2 ms slices in none of 6; the reader
	// only moves datagrams into the queues and their spill, about 1 us
	// each, and a shard waits at most this long for it.
	readSlice = 2 * time.Millisecond
	// spillBytes: what a shard's queue of IKE_AUTH and established SAs'
	// messages holds beyond its shardQueueLen packets, counted as their
	// octets plus spillOverhead each (spillQueue). The socket's reader
	// never waits for a shard: it puts the overflow there and goes on
	// reading for the other shards, so that a shard that falls behind (a
	// burst of deletes or IKE_AUTHs for it alone, or a flood of forged
	// messages for its SAs) delays and drops its own messages only. 8 MiB
	// is about 40,000 deletes or liveness checks, more than a socket's
	// receive buffer holds: a burst of them all at once reaches the shard
	// late, not lost. Nodes of many shards share spillTotal, in each of
	// the two spills (spillPerShard).
	//
	// The queue of cookie-proven new IKE_SA_INITs spills over the same way,
	// into a spill of its own of the same size: a mass restart's gateways
	// have each proven their address, and each one dropped waits for its
	// retransmission (2 s, then 4 s more), while the shard would have
	// served it sooner. A burst of 10,000 at once, with the gateways'
	// retransmissions of what still waited after 2 s, overflowed the
	// channel's initQueueLen by 600-1,500 (benchnode's burst row), and
	// the time to the last SA fell into the next retransmission round in
	// half of the runs.
	spillBytes    = 8 << 20
	spillTotal    = 64 << 20
	spillMin      = 1 << 20
	spillOverhead = 128 // octets counted per spilled packet besides its own
	spiShardShift = 44  // IKE SPI bits 44..51 name the shard
	spiShardMask  = uint64(0xff) << spiShardShift
	prioStreak    = 64 // packets served from the queues in a row before timers and calls get a look
	// defaultCookieBacklog: ike.cookie_backlog's default, the new
	// IKE_SA_INITs waiting in a shard's queue from which on the shard
	// demands cookies whatever its number of half-open SAs
	// (ike.Cookies.Demand): 40-130 ms of key exchanges at the rates one
	// core serves. (It was 16 while the readers yielded after every
	// batch and a backlog waited in the socket's buffer, unseen; read in
	// slices, 16 came and went at 1,000 new SAs/s on a node with CPU to
	// spare, and each time every gateway paid a cookie round trip for a
	// half_open_timeout.)
	defaultCookieBacklog = 128
)

// socketConfigurer is implemented by data planes that need to prepare the
// node's UDP sockets (xfrm: UDP_ENCAP_ESPINUDP on the NAT-T socket).
type socketConfigurer interface {
	ConfigureSocket(c *net.UDPConn, natt bool) error
}

// spillPerShard is each of shards' spill: spillBytes, less on a node
// of more than 8 shards, so that all of them flooded at once hold
// spillTotal (at least spillMin each).
func spillPerShard(shards int) int {
	return max(spillMin, min(spillBytes, spillTotal/max(shards, 1)))
}

// shardQueue holds a shard's received IKE messages in three queues:
// everything but new SAs (IKE_AUTH, messages of established SAs, answers
// to our requests); new IKE_SA_INITs whose cookie proved their address;
// and other new IKE_SA_INITs. The shard serves them in that order, so
// that under a burst the SAs already half-open complete (and their
// gateways stop retransmitting) before more are started, and a mass of
// cookie-proven requests (a mass restart: each costs a key exchange)
// never stands between the established SAs and their liveness checks,
// rekeys and deletes. A full queue drops only its own kind; the first
// two spill over first (spillQueue).
type shardQueue struct {
	prio        chan ike.Packet
	proven      chan ike.Packet
	init        chan ike.Packet
	spill       *spillQueue // prio's overflow, served after it
	provenSpill *spillQueue // proven's overflow, served after it
}

// queueKind names a shard's queue.
type queueKind int

const (
	queuePrio   queueKind = iota // not a new SA
	queueProven                  // a new SA whose cookie proved its address
	queueNew                     // any other new SA
)

// String is the queue's name in ikefleet_queue_drops_total and
// ikefleet_queue_waiting.
func (k queueKind) String() string { return metrics.QueueNames[k] }

// newShardQueue makes a shard's queues, with spill octets (spillQueue)
// of overflow for each of the first two (0: none).
func newShardQueue(prioLen, provenLen, initLen, spill int) shardQueue {
	return shardQueue{prio: make(chan ike.Packet, prioLen), proven: make(chan ike.Packet, provenLen),
		init: make(chan ike.Packet, initLen), spill: newSpillQueue(spill), provenSpill: newSpillQueue(spill)}
}

// push queues pkt in the queue of its kind without waiting; false: that
// queue is full (the first two: and their spill too).
func (q *shardQueue) push(pkt ike.Packet, k queueKind) bool {
	ch, spill := q.prio, q.spill
	switch k {
	case queueProven:
		ch, spill = q.proven, q.provenSpill
	case queueNew:
		ch, spill = q.init, nil
	}
	if spill != nil && spill.pending() {
		// Behind what spilled, which the shard serves after the channel.
		return spill.add(pkt)
	}
	select {
	case ch <- pkt:
		return true
	default:
		return spill != nil && spill.add(pkt)
	}
}

// next returns a queued packet without waiting: the priority queue's
// first (its channel, then its spill), then a cookie-proven new SA's (the
// same), then another new SA's.
func (q *shardQueue) next() (ike.Packet, bool) {
	for _, k := range [...]struct {
		ch    chan ike.Packet
		spill *spillQueue
	}{{q.prio, q.spill}, {q.proven, q.provenSpill}, {q.init, nil}} {
		select {
		case pkt := <-k.ch:
			return pkt, true
		default:
		}
		if pkt, ok := k.spill.take(); ok {
			return pkt, true
		}
	}
	return ike.Packet{}, false
}

// spillQueue is the overflow of a shard's queue of IKE_AUTH and
// established SAs' messages: a FIFO bounded in octets, filled by the
// socket readers when the shard's channel is full and emptied by the
// shard after it. Unlike a channel it takes no memory while empty (a
// burst's array is let go once drained).
type spillQueue struct {
	mu    sync.Mutex
	pkts  []ike.Packet // pkts[head:] wait
	head  int
	bytes int // queued, as spillCost counts them
	max   int
	n     atomic.Int64 // len(pkts) - head, read without the lock
	// wake is signalled while packets wait (by each add, and by each take
	// that leaves some), so that the shard's wait on its channels ends.
	wake chan struct{}
}

func newSpillQueue(max int) *spillQueue {
	return &spillQueue{max: max, wake: make(chan struct{}, 1)}
}

func spillCost(p *ike.Packet) int { return len(p.Data) + spillOverhead }

// pending reports whether packets wait (none in a nil spill).
func (s *spillQueue) pending() bool { return s != nil && s.n.Load() > 0 }

// add queues p; false: it would exceed the queue's octets.
func (s *spillQueue) add(p ike.Packet) bool {
	c := spillCost(&p)
	s.mu.Lock()
	if s.bytes+c > s.max {
		s.mu.Unlock()
		return false
	}
	if s.head > 0 && len(s.pkts) == cap(s.pkts) && s.head >= len(s.pkts)/2 {
		// Reuse the taken front (half the array or more, so that the
		// copies cost O(1) per packet) before the array grows.
		k := copy(s.pkts, s.pkts[s.head:])
		clear(s.pkts[k:])
		s.pkts, s.head = s.pkts[:k], 0
	}
	s.pkts = append(s.pkts, p)
	s.bytes += c
	s.n.Add(1)
	s.mu.Unlock()
	s.signal()
	return true
}

// take returns the first packet waiting, if any.
func (s *spillQueue) take() (ike.Packet, bool) {
	if !s.pending() {
		return ike.Packet{}, false
	}
	s.mu.Lock()
	if s.head == len(s.pkts) {
		s.mu.Unlock()
		return ike.Packet{}, false
	}
	p := s.pkts[s.head]
	s.pkts[s.head] = ike.Packet{}
	s.head++
	s.bytes -= spillCost(&p)
	left := s.n.Add(-1)
	if left == 0 {
		s.pkts, s.head = nil, 0
	}
	s.mu.Unlock()
	if left > 0 {
		s.signal()
	}
	return p, true
}

func (s *spillQueue) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// waiting counts the packets in each queue (queueKind order), the
// first two with their spill.
func (q *shardQueue) waiting() [3]int {
	return [3]int{len(q.prio) + int(q.spill.n.Load()), len(q.proven) + int(q.provenSpill.n.Load()), len(q.init)}
}

// fill is the share in use of the queue of IKE_AUTH and established SAs'
// messages: the anycast health check's queue_fill. New IKE_SA_INITs
// waiting are load, not ill health.
func (q *shardQueue) fill() float64 {
	if cap(q.prio) == 0 {
		return 0
	}
	return float64(len(q.prio)) / float64(cap(q.prio))
}

// isNewSA reports whether an IKE message (header at b) starts a new IKE
// SA: an IKE_SA_INIT (or IKE_SESSION_RESUME) request from an initiator
// without our SPI.
func isNewSA(b []byte) bool {
	return len(b) >= 28 && binary.BigEndian.Uint64(b[8:]) == 0 &&
		(ike.ExchangeType(b[18]) == ike.IKE_SA_INIT || ike.ExchangeType(b[18]) == ike.IKE_SESSION_RESUME) &&
		b[19]&ike.FlagInitiator != 0 && b[19]&ike.FlagResponse == 0
}

// ReceiveStats counts what the socket loops dropped.
type ReceiveStats struct {
	QueueDropsNew   uint64 // new IKE_SA_INITs dropped: their shard's queue was full
	QueueDropsOther uint64 // other IKE messages dropped: their shard's queue was full
	NonIKE          uint64 // not IKE and not ours (ESP without a user-space data plane, short datagrams)
	Keepalives      uint64 // NAT-T keepalives received
	// The kernel's drops (full receive buffers) of the sockets of new
	// IKE_SA_INITs without a cookie (split ports), and of the others.
	SocketDropsNew, SocketDropsOther uint64
}

// ReceiveStats reports the socket loops' counters.
func (n *Node) ReceiveStats() ReceiveStats {
	rs := ReceiveStats{QueueDropsNew: n.initDrops.Load(), QueueDropsOther: n.prioDrops.Load(),
		NonIKE: n.nonIKEDrops.Load(), Keepalives: n.keepalives.Load()}
	for _, d := range n.socketDrops() {
		if d.Receives == "new" {
			rs.SocketDropsNew += d.Count
		} else {
			rs.SocketDropsOther += d.Count
		}
	}
	return rs
}

// socketDrops reads the kernel's drop counts of the node's UDP sockets.
func (n *Node) socketDrops() []metrics.SocketDrop {
	n.mu.Lock()
	defer n.mu.Unlock()
	split := len(n.bulk) > 0
	var out []metrics.SocketDrop
	for _, c := range n.sockets {
		u, ok := c.(*transport.UDPConn)
		if !ok {
			continue
		}
		d, err := u.Drops()
		if err != nil {
			continue // closed meanwhile
		}
		local := c.LocalAddr()
		recv := "all"
		if n.bulk[c] {
			recv = "new"
		} else if split {
			recv = "other"
		}
		out = append(out, metrics.SocketDrop{Listen: local.Addr().String(), NATT: n.natt[local], Receives: recv, Count: d})
	}
	return out
}

// configureSocket sizes a socket's receive buffer to ike.socket_buffer:
// with CAP_NET_ADMIN beyond net.core.rmem_max (SO_RCVBUFFORCE), else as
// far as the kernel allows. A data plane that asked for more keeps it.
func configureSocket(c *net.UDPConn, size int) error {
	if size <= 0 {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// The kernel reports twice what was asked (bookkeeping overhead).
		if cur, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil && cur >= 2*size {
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("ike.socket_buffer: %d bytes: %w", size, serr)
	}
	return nil
}

// socketReaders is how many goroutines read each UDP socket:
// ike.socket_readers (configured), else half of procs (GOMAXPROCS), 1 to
// 8. With several, the kernel hands each read a batch of its own and the
// batches are sorted, screened and answered in parallel, so that one
// reader's work is not what a flood's rate is bounded by on a node with
// cores to spare. The reads take turns on the socket, though: each batch
// hands the socket to the next reader (a goroutine woken), and on a node
// with few cores the readers take them from the shards doing the key
// exchanges. On 2 CPUs one reader served the full flood test (50,000
// spoofed IKE_SA_INIT/s plus 50,000 malformed) with 10-20% less CPU
// than two and a lower setup latency under the flood
// (docs/threat-model.md). Datagrams of one peer may be handled out of
// order across batches (IKE retransmits and reassembles; ESP has its
// replay window).
func socketReaders(configured, procs int) int {
	if configured > 0 {
		return configured
	}
	return min(max(procs/2, 1), 8)
}

// carriesESP: c is a NAT-T socket whose ESP-in-UDP the node decrypts
// itself (a user-space data plane). Such a socket keeps one reader: ESP
// handled out of order across batches would pass the replay window but
// reorder the tunnel's traffic (TCP inside takes reordering for loss).
// With the kernel's ESP (xfrm) the socket carries IKE only. (Of a split
// NAT-T port, the socket of new IKE_SA_INITs never gets ESP: Run gives it
// socketReaders.)
func (n *Node) carriesESP(c transport.Conn) bool {
	_, esp := n.dp.(dataplane.ESPHandler)
	n.mu.Lock()
	natt := n.natt[c.LocalAddr()]
	n.mu.Unlock()
	return esp && natt
}

// receiveHook, when set (tests), runs in the reading goroutine after
// each batch is read from c, before it is handled.
var receiveHook atomic.Pointer[func(c transport.Conn, batch int)]

// readLoop reads c until it is closed; for a UDP socket that carries no
// user-space ESP several run at once (socketReaders).
func (n *Node) readLoop(c transport.Conn) {
	local := c.LocalAddr()
	n.mu.Lock()
	natt := n.natt[local]
	n.mu.Unlock()
	espIn, _ := n.dp.(dataplane.ESPHandler)
	if u, ok := c.(*transport.UDPConn); ok {
		br, err := u.NewBatch(readBatchLen)
		if err == nil {
			n.readBatches(c, br, local, natt, espIn)
			return
		}
		n.log.Warn("batched reads unavailable: reading one datagram at a time", "local", local.String(), "err", err)
	}
	// Another transport (an in-memory network): one datagram at a time.
	buf := make([]byte, maxDatagram)
	for {
		nb, remote, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("read failed", "local", local.String(), "err", err)
			continue
		}
		if reply := n.receive(c, buf[:nb], local, remote, natt, espIn, nil); reply != nil {
			n.send(ike.Send{Local: local, Remote: remote, Messages: [][]byte{reply}})
		}
	}
}

// readBatches is readLoop on a UDP socket: a batch of datagrams a read
// (recvmmsg), none of them allocating.
func (n *Node) readBatches(c transport.Conn, br *transport.Batch, local netip.AddrPort, natt bool, espIn dataplane.ESPHandler) {
	dgs := make([]transport.Datagram, br.Cap())
	for i := range dgs {
		dgs[i].Buf = make([]byte, maxDatagram)
	}
	// Cookie demands the batch's datagrams got, sent in one sendmmsg; their
	// buffers are reused from batch to batch (a flood's answers cost no
	// allocation).
	replyBufs := make([][]byte, len(dgs))
	replyMsgs := make([]transport.Datagram, len(dgs))
	for i := range replyBufs {
		replyBufs[i] = make([]byte, 0, 4+ike.CookieReplyLen)
	}
	var slice time.Time // when the reader began reading full batches
	for {
		replies := replyMsgs[:0]
		nm, err := br.Read(dgs)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("read failed", "local", local.String(), "err", err)
			continue
		}
		if h := receiveHook.Load(); h != nil {
			(*h)(c, nm)
		}
		for i := range dgs[:nm] {
			d := &dgs[i]
			if !d.From.IsValid() {
				continue
			}
			k := len(replies)
			dst := replyBufs[k][:0]
			if natt {
				dst = append(dst, 0, 0, 0, 0) // the non-ESP marker
			}
			if reply := n.receive(c, d.Buf[:d.N], local, d.From, natt, espIn, dst); reply != nil {
				replies = replies[:k+1]
				replies[k].Buf, replies[k].To = reply, d.From
			}
		}
		n.sendBatch(br, replies, local)
		switch {
		case nm < len(dgs):
			slice = time.Time{} // the socket is drained
		case slice.IsZero():
			slice = time.Now()
		case time.Since(slice) >= readSlice:
			// More is waiting (a flood, or a node short of CPU): let the
			// shards and the other goroutines run instead of waiting out
			// this one's time slice (up to 10 ms): a genuine request's key
			// exchange and answer wait on them.
			runtime.Gosched()
			slice = time.Time{}
		}
	}
}

// sendBatch sends the socket loop's cookie demands (sendmmsg), unless the
// node is fenced.
func (n *Node) sendBatch(bw *transport.Batch, ms []transport.Datagram, local netip.AddrPort) {
	if len(ms) == 0 {
		return
	}
	if n.persist != nil && !n.persist.store.CanSend() {
		n.fencedDrops.Add(uint64(len(ms)))
		return
	}
	for len(ms) > 0 {
		k, err := bw.Write(ms)
		if err != nil {
			n.log.Debug("send failed", "local", local.String(), "err", err)
			k = 1 // skip the datagram the error is about
		}
		ms = ms[k:]
	}
}

// receive sorts one datagram: a NAT-T keepalive, ESP for the data plane,
// or an IKE message for its shard's queue; or it returns the cookie
// demand that answers a new IKE_SA_INIT, appended to dst, for the caller
// to send.
func (n *Node) receive(c transport.Conn, b []byte, local, remote netip.AddrPort, natt bool, espIn dataplane.ESPHandler, dst []byte) []byte {
	if natt {
		switch {
		case len(b) == 1 && b[0] == 0xff:
			n.keepalives.Add(1) // NAT-T keepalive (RFC 3948 §2.3)
			return nil
		case len(b) >= 4 && binary.BigEndian.Uint32(b) == 0:
			b = b[4:] // non-ESP marker: IKE
		case espIn != nil:
			espIn.HandleESP(b, local, remote) // user-space ESP
			return nil
		default:
			n.nonIKEDrops.Add(1) // ESP: the data plane's, not ours
			return nil
		}
	}
	if n.cfg.Anycast.Redirect.Enabled && n.redirectInit(c, natt, b, remote) {
		return nil // draining or overloaded: sent to another node (anycast.go)
	}
	if n.ops.draining.Load() && n.refuseInit(c, natt, b, remote) {
		return nil // draining: no new IKE SAs (ops.go)
	}
	s := n.shardFor(b)
	if s == nil {
		n.nonIKEDrops.Add(1)
		return nil
	}
	if _, err := ike.DecodeHeader(b); err != nil && b[17]>>4 <= 2 {
		// Malformed (a length field that disagrees with the datagram, not
		// IKEv2, no initiator SPI): the engine would only drop it. Dropped
		// here, it never takes a place in the queue the established SAs'
		// messages wait in. A later major version goes on: the engine
		// answers it (RFC 7296 §2.5).
		n.headerDrops.Add(1)
		n.logEvent(s, ike.Event{Kind: ike.EventDropped, SPIi: binary.BigEndian.Uint64(b), SPIr: binary.BigEndian.Uint64(b[8:]),
			Local: local, Remote: remote, Err: err})
		return nil
	}
	kind := queuePrio
	if isNewSA(b) {
		kind = queueNew
		now := n.clock.Mono()
		cookies := s.eng.Cookies()
		if n.cookieBacklog > 0 && len(s.q.init) >= n.cookieBacklog {
			// The engine falls behind with new SAs: demand cookies
			// before the half-open SAs reach the threshold.
			cookies.Demand(now)
		}
		// Under pressure a new IKE_SA_INIT is answered here, without
		// queueing: a flood of them never stands between the engine and
		// the requests that proved their address with a cookie, which
		// are queued apart, after the established SAs' messages.
		switch reply, v := cookies.Screen(now, b, remote.Addr(), dst); v {
		case ike.ScreenAnswered:
			n.logEvent(s, ike.Event{Kind: ike.EventCookieSent, SPIi: binary.BigEndian.Uint64(b), Local: local, Remote: remote, Notify: ike.COOKIE})
			return reply
		case ike.ScreenProven:
			kind = queueProven
		}
	}
	pkt := ike.Packet{Local: local, Remote: remote, Data: append([]byte(nil), b...)}
	if !s.q.push(pkt, kind) {
		n.countQueueDrop(local, natt, s, kind)
	}
	return nil
}

// shardFor routes a message to the shard owning its SA: by our SPI's shard
// bits, or for a new IKE_SA_INIT by a hash of the initiator's SPI.
func (n *Node) shardFor(b []byte) *shard {
	if len(b) < 28 {
		return nil
	}
	spii := binary.BigEndian.Uint64(b[0:])
	spir := binary.BigEndian.Uint64(b[8:])
	fromInitiator := b[19]&ike.FlagInitiator != 0
	var idx uint64
	switch {
	case fromInitiator && spir == 0:
		idx = maphash.Comparable(n.seed, spii) % uint64(len(n.shards))
	case fromInitiator:
		idx = (spir & spiShardMask) >> spiShardShift
	default:
		idx = (spii & spiShardMask) >> spiShardShift
	}
	return n.shards[idx%uint64(len(n.shards))] // as shardOfSPI
}

// conn returns the socket bound to local, or to its port on the wildcard
// address, and whether it is a NAT-T socket.
func (n *Node) conn(local netip.AddrPort) (transport.Conn, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, natt := n.conns[local], n.natt[local]
	if c == nil {
		// Bound to the wildcard address: find the socket by port.
		for addr, conn := range n.conns {
			if addr.Port() == local.Port() && addr.Addr().IsUnspecified() {
				c, natt = conn, n.natt[addr]
				break
			}
		}
	}
	return c, natt
}

// SendUDP sends b as is from the socket bound to local: the data plane's
// user-space ESP (dataplane.UDPSender).
func (n *Node) SendUDP(b []byte, local, remote netip.AddrPort) error {
	c, _ := n.conn(local)
	if c == nil {
		return fmt.Errorf("no socket bound to %s", local)
	}
	return c.WriteTo(b, remote)
}

// sendKeepalive sends a NAT-T keepalive: one 0xFF octet, no marker.
func (n *Node) sendKeepalive(a ike.Send) {
	if c, _ := n.conn(a.Local); c != nil {
		if err := c.WriteTo([]byte{0xff}, a.Remote); err != nil {
			n.log.Debug("keepalive failed", "remote", a.Remote.String(), "err", err)
		} else {
			n.obs.keepalivesSent.Add(1)
		}
	}
}

func (n *Node) send(a ike.Send) {
	if n.persist != nil && !n.persist.store.CanSend() {
		// Fenced: our lease may have lapsed and another node may own
		// these SAs now; stay silent until re-registered.
		n.fencedDrops.Add(1)
		return
	}
	c, natt := n.conn(a.Local)
	if c == nil {
		n.log.Warn("no socket to send from", "local", a.Local.String(), "remote", a.Remote.String())
		return
	}
	for _, m := range a.Messages {
		if natt {
			m = append([]byte{0, 0, 0, 0}, m...)
		}
		if err := c.WriteTo(m, a.Remote); err != nil {
			n.log.Warn("send failed", "local", a.Local.String(), "remote", a.Remote.String(), "err", err)
		}
	}
}
