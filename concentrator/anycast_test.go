package concentrator

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/lb"
)

// exchangeInit sends an IKE_SA_INIT request announcing REDIRECT_SUPPORTED
// to the node and returns the first notify of the answer.
func exchangeInit(t *testing.T, n *Node) *ike.Notify {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(n.IKEAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := ike.Message{SPIi: 0x1122334455667788, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagInitiator,
		Payloads: []ike.Payload{&ike.Nonce{Data: bytes.Repeat([]byte{7}, 32)}, &ike.Notify{NotifyType: ike.REDIRECT_SUPPORTED}}}
	if _, err := c.Write(req.Encode()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	k, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ike.Decode(buf[:k])
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Payloads {
		if nt, ok := p.(*ike.Notify); ok {
			return nt
		}
	}
	return nil
}

// A draining node redirects a gateway that supports it (RFC 5685) to the
// live member with the fewest SAs, learnt by gossip.
func TestNodeRedirectsWhileDraining(t *testing.T) {
	n, _, _ := runNode(t, nodeConfig(1, "", "anycast:\n  members:\n    listen: 127.0.0.1:0\n  redirect:\n    enabled: true\n    unicast: 127.0.0.1\n"))
	var self *lb.Members
	for i := 0; i < 500 && self == nil; i++ {
		self = n.front.members.Load()
		time.Sleep(10 * time.Millisecond)
	}
	if self == nil {
		t.Fatal("membership not started")
	}
	other, err := lb.NewMembers(lb.MembersConfig{Listen: "127.0.0.1:0", Join: []string{self.Addr()}}, "n2",
		lb.Meta{Unicast: "192.0.2.2", Healthy: true}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		if a, ok := self.RedirectTarget(); ok && a == netip.MustParseAddr("192.0.2.2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 never became a redirect target: %+v", self.List())
		}
		time.Sleep(20 * time.Millisecond)
	}

	if nt := exchangeInit(t, n); nt != nil && nt.NotifyType == ike.REDIRECT {
		t.Fatal("redirected while serving")
	}
	n.Drain(false)
	nt := exchangeInit(t, n)
	if nt == nil || nt.NotifyType != ike.REDIRECT {
		t.Fatalf("draining: answered %+v, want N(REDIRECT)", nt)
	}
	r, err := ike.ParseRedirect(nt.Data)
	if err != nil {
		t.Fatal(err)
	}
	if r.Addr != netip.MustParseAddr("192.0.2.2") || !bytes.Equal(r.Nonce, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("redirect %+v", r)
	}
	if got := n.front.redirects.Load(); got != 1 {
		t.Fatalf("redirects %d, want 1", got)
	}
	st, ok := n.AnycastStatus(t.Context())
	if !ok || len(st.Members) != 2 {
		t.Fatalf("anycast status %+v %v, want two members", st, ok)
	}
}

// The anycast health check reads the queues of IKE_AUTH and established
// SAs' messages only: a node whose new IKE_SA_INITs wait or are dropped
// is busy, and withdrawing its route would move its established SAs too.
func TestHealthProbeReadsEstablishedQueuesOnly(t *testing.T) {
	n, _ := startNode(t, 1, "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := n.shards[0]
	release := busyShard(ctx, n, s)
	defer release()
	local := n.IKEAddr()
	init := ike.Packet{Local: local, Data: header(1, 0, ike.IKE_SA_INIT, ike.FlagInitiator)}
	for s.q.push(init, queueNew) {
	}
	for s.q.push(init, queueProven) {
	}
	n.countQueueDrop(local, false, s, queueNew)
	n.countQueueDrop(local, false, s, queueProven)
	if p := (nodeSource{n}).Probe(); p.QueueFill != 0 || p.QueueDrops != 0 {
		t.Fatalf("new SAs' queues full and dropping: probe queue fill %.2f, drops %d; want 0, 0", p.QueueFill, p.QueueDrops)
	}
	auth := ike.Packet{Local: local, Data: header(1, 2, ike.IKE_AUTH, ike.FlagInitiator)}
	for s.q.push(auth, queuePrio) {
	}
	n.countQueueDrop(local, false, s, queuePrio)
	if p := (nodeSource{n}).Probe(); p.QueueFill != 1 || p.QueueDrops != 1 {
		t.Fatalf("established SAs' queue full, one dropped: probe queue fill %.2f, drops %d; want 1, 1", p.QueueFill, p.QueueDrops)
	}
	if rs := n.ReceiveStats(); rs.QueueDropsNew != 2 || rs.QueueDropsOther != 1 {
		t.Fatalf("receive stats: %d new, %d other queue drops; want 2, 1", rs.QueueDropsNew, rs.QueueDropsOther)
	}
}
