package transport

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

func TestNetworkDelivers(t *testing.T) {
	n := NewNetwork()
	a, err := n.Listen(netip.MustParseAddrPort("10.0.0.1:500"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Listen(netip.MustParseAddrPort("10.0.0.2:0"))
	if err != nil {
		t.Fatal(err)
	}
	if b.LocalAddr().Port() < memFirstEphem {
		t.Fatalf("ephemeral port %v", b.LocalAddr())
	}
	if _, err := n.Listen(a.LocalAddr()); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("second bind: %v", err)
	}
	msg := []byte("hello")
	if err := b.WriteTo(msg, a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	msg[0] = 'j' // the network copied it
	if n.Queued() != 1 {
		t.Fatalf("queued %d", n.Queued())
	}
	buf := make([]byte, 100)
	nb, from, err := a.ReadFrom(buf)
	if err != nil || string(buf[:nb]) != "hello" || from != b.LocalAddr() {
		t.Fatalf("read %q from %v: %v", buf[:nb], from, err)
	}
	// A socket on the unspecified address takes what no specific one does.
	w, _ := n.Listen(netip.MustParseAddrPort("0.0.0.0:4500"))
	if !n.Inject(netip.MustParseAddrPort("192.0.2.9:1234"), netip.MustParseAddrPort("10.9.9.9:4500"), []byte{0xff}) {
		t.Fatal("wildcard socket did not take the datagram")
	}
	if nb, from, _ := w.ReadFrom(buf); nb != 1 || from.String() != "192.0.2.9:1234" {
		t.Fatalf("wildcard read %d from %v", nb, from)
	}
	// It tells which address a datagram was for, and a shared address
	// keeps its own datagrams.
	h, err := n.Host("h1").Listen(netip.MustParseAddrPort("10.0.0.100:4500"))
	if err != nil {
		t.Fatal(err)
	}
	n.Inject(netip.MustParseAddrPort("192.0.2.9:4500"), netip.MustParseAddrPort("10.0.0.100:4500"), []byte{1})
	n.Inject(netip.MustParseAddrPort("10.0.0.100:4500"), netip.MustParseAddrPort("100.64.0.7:4500"), []byte{2, 2})
	if nb, from, _ := h.ReadFrom(buf); nb != 1 || from.String() != "192.0.2.9:4500" {
		t.Fatalf("shared address read %d from %v", nb, from)
	}
	if nb, from, to, _ := w.(interface {
		ReadFromTo([]byte) (int, netip.AddrPort, netip.AddrPort, error)
	}).ReadFromTo(buf); nb != 2 || from.String() != "10.0.0.100:4500" || to.String() != "100.64.0.7:4500" {
		t.Fatalf("wildcard read %d from %v to %v", nb, from, to)
	}
	h.Close()
	if n.Inject(b.LocalAddr(), netip.MustParseAddrPort("10.0.0.3:1"), msg) {
		t.Fatal("delivered to nobody")
	}
	// Filter drops.
	n.Filter = func(from, to netip.AddrPort, b []byte) bool { return b[0] != 'x' }
	b.WriteTo([]byte("x"), a.LocalAddr())
	b.WriteTo([]byte("y"), a.LocalAddr())
	if nb, _, _ := a.ReadFrom(buf); string(buf[:nb]) != "y" {
		t.Fatalf("filtered datagram arrived: %q", buf[:nb])
	}
	if d, x := n.Stats(); d != 5 || x != 2 {
		t.Fatalf("delivered %d dropped %d", d, x)
	}
	// Close wakes the reader with net.ErrClosed and frees the address.
	done := make(chan error)
	go func() { _, _, err := a.ReadFrom(buf); done <- err }()
	a.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := a.WriteTo(msg, b.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if _, err := n.Listen(netip.MustParseAddrPort("10.0.0.1:500")); err != nil {
		t.Fatalf("rebind after close: %v", err)
	}
}

func TestUDPLoopback(t *testing.T) {
	var tr Transport = UDP{}
	a, err := tr.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := tr.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteTo([]byte("ping"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	nb, from, err := a.ReadFrom(buf)
	if err != nil || string(buf[:nb]) != "ping" || from != b.LocalAddr() {
		t.Fatalf("read %q from %v: %v", buf[:nb], from, err)
	}
	if a.(*UDPConn).Socket() == nil {
		t.Fatal("no socket")
	}
	a.Close()
	if _, _, err := a.ReadFrom(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

// Hosts sharing an address each get the flows the route gives them, and
// a changed route moves a flow from its next datagram on.
func TestSharedAddressRoutes(t *testing.T) {
	netw := NewNetwork()
	vip := netip.MustParseAddrPort("10.9.0.1:500")
	a, err := netw.Host("a").Listen(vip)
	if err != nil {
		t.Fatal(err)
	}
	b, err := netw.Host("b").Listen(vip)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := netw.Host("a").Listen(vip); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("second bind of host a: %v", err)
	}
	gw, err := netw.Listen(netip.MustParseAddrPort("192.0.2.1:500"))
	if err != nil {
		t.Fatal(err)
	}
	to := "a"
	netw.SetRoute(func(from, dst netip.AddrPort, hosts []string) string {
		if len(hosts) == 0 || hosts[0] != "a" || dst != vip {
			t.Errorf("route asked with %v %v", dst, hosts)
		}
		return to
	})
	buf := make([]byte, 16)
	gw.WriteTo([]byte("1"), vip)
	if n, from, err := a.ReadFrom(buf); err != nil || string(buf[:n]) != "1" || from != gw.LocalAddr() {
		t.Fatalf("host a read %q from %v, %v", buf[:n], from, err)
	}
	to = "b"
	gw.WriteTo([]byte("2"), vip)
	if n, _, err := b.ReadFrom(buf); err != nil || string(buf[:n]) != "2" {
		t.Fatalf("host b read %q, %v", buf[:n], err)
	}
	// Replies leave from the shared address.
	b.WriteTo([]byte("r"), gw.LocalAddr())
	if n, from, err := gw.ReadFrom(buf); err != nil || string(buf[:n]) != "r" || from != vip {
		t.Fatalf("gateway read %q from %v, %v", buf[:n], from, err)
	}
	b.Close()
	to = "b" // gone: dropped
	if netw.Inject(gw.LocalAddr(), vip, []byte("3")) {
		t.Fatal("a datagram routed to a closed host was delivered")
	}
}
