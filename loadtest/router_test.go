package loadtest

import (
	"net/netip"
	"strings"
	"testing"
)

func testRouter(t *testing.T) *router {
	t.Helper()
	o := Options{Server: netip.MustParseAddrPort("127.0.0.10:500"),
		Targets: []netip.Addr{netip.MustParseAddr("127.0.0.11"), netip.MustParseAddr("127.0.0.12"), netip.MustParseAddr("127.0.0.13")}}
	return newRouter(&o)
}

// Rendezvous hashing: flows spread over the targets; withdrawing one moves
// its flows only, and restoring it moves them back.
func TestRouterMovesOnlyTheWithdrawnTargetsFlows(t *testing.T) {
	r := testRouter(t)
	all := []bool{true, true, true}
	less := []bool{true, false, true}
	per := make([]int, 3)
	const flows = 3000
	for i := range flows {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), uint16(30000+i))
		a, b := r.pickIn(all, src, 4500), r.pickIn(less, src, 4500)
		per[a]++
		if a != 1 && a != b {
			t.Fatalf("flow %v moved from %d to %d though target %d stayed", src, a, b, a)
		}
		if b == 1 || b < 0 {
			t.Fatalf("flow %v routed to a withdrawn target: %d", src, b)
		}
		if r.pickIn(all, src, 500) < 0 {
			t.Fatal("no target")
		}
	}
	for i, n := range per {
		if n < flows/3*7/10 || n > flows/3*13/10 {
			t.Fatalf("target %d got %d of %d flows: %v", i, n, flows, per)
		}
	}
	if r.pickIn([]bool{false, false, false}, netip.MustParseAddrPort("127.0.0.1:1"), 4500) != -1 {
		t.Fatal("a flow routed with no target in service")
	}
	// The anycast address is rewritten, others are not; answers from a
	// target are seen as from the anycast address.
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	to, ok := r.wire(src, netip.MustParseAddrPort("127.0.0.10:4500"))
	if !ok || to.Port() != 4500 || !strings.HasPrefix(to.Addr().String(), "127.0.0.1") || to.Addr() == r.anycast {
		t.Fatalf("wire: %v %v", to, ok)
	}
	if other, _ := r.wire(src, netip.MustParseAddrPort("192.0.2.1:4500")); other != netip.MustParseAddrPort("192.0.2.1:4500") {
		t.Fatalf("non-anycast destination rewritten: %v", other)
	}
	from, ti := r.fromTarget(netip.MustParseAddrPort("127.0.0.12:4500"))
	if from != netip.MustParseAddrPort("127.0.0.10:4500") || ti != 1 {
		t.Fatalf("fromTarget: %v %d", from, ti)
	}
	if _, ti := r.fromTarget(netip.MustParseAddrPort("127.0.0.99:4500")); ti != -1 {
		t.Fatal("a stranger taken for a target")
	}
}

func TestParseNodeMetrics(t *testing.T) {
	text := `# HELP ikefleet_ike_sas IKE SAs by state
# TYPE ikefleet_ike_sas gauge
ikefleet_ike_sas{state="established"} 3342
ikefleet_ike_sas{state="half_open"} 7
ikefleet_handoffs_total 12
ikefleet_takeovers_total 3.0e+03
ikefleet_handshakes_total 4000
`
	f := parseNodeMetrics(strings.NewReader(text))
	if f != (nodeFigures{sas: 3342, handOffs: 12, takeOvers: 3000, handshakes: 4000}) {
		t.Fatalf("%+v", f)
	}
	if f := parseNodeMetrics(strings.NewReader("garbage\n")); f != (nodeFigures{-1, -1, -1, -1}) {
		t.Fatalf("%+v", f)
	}
}
