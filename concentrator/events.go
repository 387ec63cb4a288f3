package concentrator

// The SA event feed: engine events fanned out to watchers (the admin API's
// WatchEvents), next to the log line each one gets.

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// SAEvent is an engine event as watchers see it: copied on the shard's
// goroutine, without keys.
type SAEvent struct {
	Time       time.Time
	Node       string
	Kind       ike.EventKind
	SPIi, SPIr uint64
	Local      netip.AddrPort
	Remote     netip.AddrPort
	PeerID     string
	Proposal   string
	Notify     ike.NotifyType
	Reason     string
	Initiator  bool
	Child      *ChildView
}

// EventWatch is one watcher of the event feed. Events that do not fit its
// buffer are counted as lost, never waited for: a slow watcher does not
// slow the shards.
type EventWatch struct {
	C    <-chan SAEvent
	c    chan SAEvent
	lost atomic.Uint64
	feed *eventFeed
	once sync.Once
}

// Lost returns the number of events lost since the last call.
func (w *EventWatch) Lost() uint64 { return w.lost.Swap(0) }

// Close ends the watch; C is not closed (a publisher may hold it).
func (w *EventWatch) Close() {
	w.once.Do(func() {
		f := w.feed
		f.mu.Lock()
		delete(f.subs, w)
		f.n.Store(int32(len(f.subs)))
		f.mu.Unlock()
	})
}

type eventFeed struct {
	n    atomic.Int32 // watchers: publishing costs nothing without any
	mu   sync.RWMutex
	subs map[*EventWatch]struct{}
}

// WatchEvents starts a watch with room for buf events (at least 1).
func (n *Node) WatchEvents(buf int) *EventWatch {
	if buf < 1 {
		buf = 1
	}
	c := make(chan SAEvent, buf)
	w := &EventWatch{C: c, c: c, feed: &n.ops.feed}
	f := &n.ops.feed
	f.mu.Lock()
	if f.subs == nil {
		f.subs = map[*EventWatch]struct{}{}
	}
	f.subs[w] = struct{}{}
	f.n.Store(int32(len(f.subs)))
	f.mu.Unlock()
	return w
}

// publishEvent hands an engine event to the watchers (shard goroutine).
func (n *Node) publishEvent(ev ike.Event) {
	f := &n.ops.feed
	if f.n.Load() == 0 {
		return
	}
	e := SAEvent{Time: time.Now(), Node: n.nodeID, Kind: ev.Kind, SPIi: ev.SPIi, SPIr: ev.SPIr, Local: ev.Local,
		Remote: ev.Remote, Proposal: ev.Proposal, Notify: ev.Notify, Reason: ev.Why(), Initiator: ev.Initiator}
	if !ev.PeerID.IsZero() {
		e.PeerID = ev.PeerID.String()
	}
	if ev.Child != nil {
		c := childView(ev.Child, n.wallOffset())
		e.Child = &c
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for w := range f.subs {
		select {
		case w.c <- e:
		default:
			w.lost.Add(1)
		}
	}
}

// EventWatchers is the number of watches open.
func (n *Node) EventWatchers() int { return int(n.ops.feed.n.Load()) }
