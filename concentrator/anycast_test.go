package concentrator

import (
	"bytes"
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
