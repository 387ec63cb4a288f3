package concentrator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/statestore"
)

// heldStore is a state store whose commits the test releases by hand.
// What the node needs besides Submit answers as a registered node with
// nothing stored.
type heldStore struct {
	statestore.Interface // not called

	mu      sync.Mutex
	pending []heldWrite
}

type heldWrite struct {
	c    statestore.Change
	done func(error)
}

// Never fenced, never re-registered.
func (h *heldStore) Fenced() <-chan struct{}     { return nil }
func (h *heldStore) Registered() <-chan struct{} { return nil }

func (h *heldStore) Submit(c statestore.Change, done func(error)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending = append(h.pending, heldWrite{c, done})
	return nil
}

// answer answers the pending write of SA spi, from the test's goroutine
// as the store would from one of its own.
func (h *heldStore) answer(t *testing.T, spi uint64, err error) statestore.Change {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, w := range h.pending {
		if w.c.SPI == spi {
			h.pending = append(h.pending[:i], h.pending[i+1:]...)
			w.done(err)
			return w.c
		}
	}
	t.Fatalf("no write pending for %x", spi)
	return statestore.Change{}
}

func (h *heldStore) Registration() (statestore.Owner, int) {
	return statestore.Owner{Node: "test", Epoch: 1}, 0
}
func (h *heldStore) CanSend() bool { return true }
func (h *heldStore) Health() statestore.Health {
	return statestore.Health{Registered: true, Reachable: true}
}
func (h *heldStore) Flush(context.Context) error {
	return nil
}
func (h *heldStore) Close() error { return nil }
func (h *heldStore) LoadOwned(context.Context) ([]*statestore.SARecord, error) {
	return nil, nil
}
func (h *heldStore) ReserveIKESPIs(_ context.Context, spis []uint64) ([]bool, error) {
	return allTrue(len(spis)), nil
}
func (h *heldStore) ReserveESPSPIs(_ context.Context, spis []uint32) ([]bool, error) {
	return allTrue(len(spis)), nil
}

func allTrue(n int) []bool {
	ok := make([]bool, n)
	for i := range ok {
		ok[i] = true
	}
	return ok
}

// applyRig is one node with one shard on an in-memory network, a peer
// socket that receives what it sends, and store (nil: statestore.mode
// none).
type applyRig struct {
	n     *Node
	dp    *memory.DataPlane
	netw  *transport.Network
	peer  transport.Conn
	local netip.AddrPort
	ctx   context.Context
}

func newApplyRig(t *testing.T, store statestore.Interface) *applyRig {
	t.Helper()
	tail := ""
	if store != nil {
		tail = "statestore:\n  mode: external\n  endpoints: [http://127.0.0.1:1]\n  cluster_key_file: /unused\n"
	}
	text := nodeConfig(1, "", tail)
	text = replaceOnce(t, text, "listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2", "listen: [10.0.0.1]\n  port: 500\n  natt_port: 4500\n  shards: 1")
	cfg, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	r := &applyRig{dp: memory.New(), netw: transport.NewNetwork(), local: netip.MustParseAddrPort("10.0.0.1:500")}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.n, err = New(cfg, log, r.dp, WithTransport(r.netw), WithClock(clock.NewFake(time.Unix(1_800_000_000, 0))))
	if err != nil {
		t.Fatal(err)
	}
	r.n.storeOverride = store
	if r.peer, err = r.netw.Listen(netip.MustParseAddrPort("192.0.2.1:500")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx
	done := make(chan error, 1)
	go func() { done <- r.n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-r.n.Ready()
	return r
}

// batch is a Ready as the engine makes it: a write of SA spi (none if 0),
// the installation of a CHILD SA with inbound SPI in (none if 0) and a
// message.
func (r *applyRig) batch(spi uint64, in uint32, msg string) *ike.Ready {
	rd := &ike.Ready{Send: []ike.Send{{Local: r.local, Remote: r.peer.LocalAddr(), Messages: [][]byte{[]byte(msg)}}}}
	if spi != 0 {
		rd.Persist = []ike.Persist{{Kind: ike.PersistChildCreated, SPI: spi, Version: 1,
			State: &ike.SAState{SPIi: 1, SPIr: spi, Local: r.local, Remote: r.peer.LocalAddr()}}}
	}
	if in != 0 {
		rd.DataPlane = []ike.Action{ike.InstallChild{SPIi: 1, SPIr: spi, Child: &ike.ChildSA{InSPI: in, OutSPI: in + 1,
			Local: r.local, Remote: r.peer.LocalAddr()}}}
	}
	return rd
}

// perform hands rd to the shard as one engine step, and waits until the
// shard has taken every answer of the state store posted so far.
func (r *applyRig) perform(t *testing.T, rd *ike.Ready) {
	t.Helper()
	s := r.n.shards[0]
	if err := r.n.do(r.ctx, s, func() {
		if rd != nil {
			r.n.perform(r.ctx, s, rd)
		}
		r.n.commitResults(r.ctx, s)
	}); err != nil {
		t.Fatal(err)
	}
}

// settle waits until the shard has taken the store's answers given so far.
func (r *applyRig) settle(t *testing.T) { t.Helper(); r.perform(t, nil) }

func (r *applyRig) sent() uint64 { d, _ := r.netw.Stats(); return d }

// received reads what the peer got so far, in order.
func (r *applyRig) received(t *testing.T, n int) string {
	t.Helper()
	var got []string
	buf := make([]byte, 100)
	for range n {
		nb, _, err := r.peer.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(buf[:nb]))
	}
	return strings.Join(got, " ")
}

// Nothing of a batch leaves before its writes are committed; batches are
// released in the order they were made, each behind the commits of those
// before it; a failed write drops its batch whole.
func TestReadyPersistBeforeDataPlaneAndSend(t *testing.T) {
	st := &heldStore{}
	r := newApplyRig(t, st)

	r.perform(t, r.batch(0x10, 0x1001, "one"))
	r.perform(t, r.batch(0x20, 0, "two"))
	r.perform(t, r.batch(0, 0, "three")) // no write, but behind the others
	if r.sent() != 0 || r.dp.Len() != 0 {
		t.Fatalf("before any commit: %d sent, %d CHILD SAs installed", r.sent(), r.dp.Len())
	}
	if c := st.answer(t, 0x20, nil); c.Kind != statestore.ChildCreated || c.Record == nil || c.Record.SPIr != 0x20 {
		t.Fatalf("change submitted: %+v", c)
	}
	r.settle(t)
	if r.sent() != 0 {
		t.Fatalf("the second batch left before the first was committed (%d sent)", r.sent())
	}
	st.answer(t, 0x10, nil)
	r.settle(t)
	if got := r.received(t, 3); got != "one two three" || r.dp.Len() != 1 {
		t.Fatalf("after both commits: received %q, %d CHILD SAs", got, r.dp.Len())
	}

	// A failed write: neither the install nor the message of its batch;
	// the batch behind it goes.
	r.perform(t, r.batch(0x30, 0x3001, "four"))
	r.perform(t, r.batch(0, 0, "five"))
	if r.sent() != 3 {
		t.Fatal("sent before the commit")
	}
	st.answer(t, 0x30, errors.New("etcd: request timed out"))
	r.settle(t)
	if got := r.received(t, 1); got != "five" {
		t.Fatalf("after the failed write: received %q", got)
	}
	if r.sent() != 4 || r.dp.Len() != 1 {
		t.Fatalf("the failed batch was applied: %d sent, %d CHILD SAs", r.sent(), r.dp.Len())
	}
	if h := r.n.Health(); h.PersistFailures != 1 || h.DroppedBatches != 1 {
		t.Fatalf("health %+v", h)
	}
	if len(r.n.shards[0].held) != 0 {
		t.Fatalf("%d batches still held", len(r.n.shards[0].held))
	}
}

// Answers to IKE_SA_INIT requests (a half-open SA's or a cookie demand:
// nothing of them is written) and NAT-T keepalives leave at once, ahead of
// batches held for their writes; a batch with any other message, a write
// or a data-plane change still waits its turn.
func TestInitAnswersAheadOfHeldBatches(t *testing.T) {
	st := &heldStore{}
	r := newApplyRig(t, st)
	initResp := (&ike.Message{SPIi: 7, SPIr: 8, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagResponse,
		Payloads: []ike.Payload{&ike.Nonce{Data: make([]byte, 32)}}}).Encode()
	authResp := (&ike.Message{SPIi: 7, SPIr: 8, Exchange: ike.IKE_AUTH, Flags: ike.FlagResponse, MessageID: 1}).Encode()
	initReq := (&ike.Message{SPIi: 7, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagInitiator}).Encode()
	send := func(msgs ...[]byte) *ike.Ready {
		return &ike.Ready{Send: []ike.Send{{Local: r.local, Remote: r.peer.LocalAddr(), Messages: msgs}}}
	}

	r.perform(t, r.batch(0x10, 0x1001, "held"))
	r.perform(t, send(initResp))
	if got := r.received(t, 1); got != string(initResp) {
		t.Fatalf("the IKE_SA_INIT response did not leave ahead of the held batch: %q", got)
	}
	keepalive := &ike.Ready{Send: []ike.Send{{Local: netip.MustParseAddrPort("10.0.0.1:4500"), Remote: r.peer.LocalAddr(), Keepalive: true}}}
	r.perform(t, keepalive)
	if r.sent() != 2 || r.received(t, 1) != "\xff" {
		t.Fatalf("a NAT-T keepalive waited behind the held batch (%d sent)", r.sent())
	}
	// These wait: an IKE_AUTH response, a request, a batch with a write.
	r.perform(t, send(authResp))
	r.perform(t, send(initReq))
	initWithWrite := r.batch(0x20, 0, "")
	initWithWrite.Send[0].Messages = [][]byte{initResp}
	r.perform(t, initWithWrite)
	if r.sent() != 2 {
		t.Fatalf("%d sent before the commit, want 2", r.sent())
	}
	st.answer(t, 0x20, nil)
	st.answer(t, 0x10, nil)
	r.settle(t)
	if got := r.received(t, 4); got != strings.Join([]string{"held", string(authResp), string(initReq), string(initResp)}, " ") {
		t.Fatalf("after the commits, in this order: %q", got)
	}
}

// With statestore.mode none a batch is applied at once.
func TestReadyWithoutStateStore(t *testing.T) {
	r := newApplyRig(t, nil)
	r.perform(t, r.batch(0x10, 0x1001, "one"))
	if r.sent() != 1 || r.dp.Len() != 1 {
		t.Fatalf("%d sent, %d CHILD SAs installed", r.sent(), r.dp.Len())
	}
}

// TestApplyInstallsWithRaisedLimit: a claimed or restored CHILD SA comes
// as an InstallChild with no room to send, followed in the same batch by
// the SetSeqLimit of its fresh reservation. The batch is applied once that
// is committed, so the SA goes into the data plane with the raised limit
// at once (ESP parked for it is replayed by Install and answered); an
// InstallChild without a later SetSeqLimit keeps its own limit, and a
// SetSeqLimit before the install does not count.
func TestApplyInstallsWithRaisedLimit(t *testing.T) {
	dp := &recDP{DataPlane: memory.New()}
	n := &Node{dp: dp, log: slog.New(slog.NewTextHandler(io.Discard, nil)), clock: clock.Real()}
	s := &shard{watch: map[uint32]time.Time{}}
	child := func(in uint32) *ike.ChildSA { return &ike.ChildSA{InSPI: in, OutSPI: in + 1} }
	n.apply(t.Context(), s, []ike.Action{
		ike.InstallChild{Child: child(0x100), OutSeq: 4096, OutSeqLimit: 4096, OutSeqMargin: 2048},
		ike.SetSeqLimit{InSPI: 0x200, OutSeqLimit: 9000, OutSeqMargin: 100}, // before its install
		ike.InstallChild{Child: child(0x200), OutSeq: 7, OutSeqLimit: 7, OutSeqMargin: 2048},
		ike.InstallChild{Child: child(0x300), OutSeq: 0, OutSeqLimit: 4096, OutSeqMargin: 2048},
		ike.SetSeqLimit{InSPI: 0x100, OutSeqLimit: 8192, OutSeqMargin: 2048},
	}, nil)
	got := map[uint32]dataplane.ChildSA{}
	for _, c := range dp.installs {
		got[c.InSPI] = c
	}
	for _, w := range []struct {
		in                 uint32
		seq, limit, margin uint64
	}{{0x100, 4096, 8192, 2048}, {0x200, 7, 7, 2048}, {0x300, 0, 4096, 2048}} {
		c, ok := got[w.in]
		if !ok || c.OutSeq != w.seq || c.OutSeqLimit != w.limit || c.OutSeqMargin != w.margin {
			t.Errorf("SA %x installed %v: OutSeq %d, limit %d, margin %d; want %d, %d, %d",
				w.in, ok, c.OutSeq, c.OutSeqLimit, c.OutSeqMargin, w.seq, w.limit, w.margin)
		}
	}
}
