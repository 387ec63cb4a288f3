package statestore

import (
	"fmt"
	"testing"
)

// The keys are built without fmt; they must stay what they were.
func TestHexKeyMatchesSprintf(t *testing.T) {
	k := keys{p: "/ikefleet/"}
	for _, v := range []uint64{0, 1, 0xdeadbeef, 1<<63 | 5, ^uint64(0)} {
		if g, w := k.owner(v), fmt.Sprintf("%sowner/%016x", k.p, v); g != w {
			t.Fatal(g, w)
		}
		if g, w := k.owned("n1", v), fmt.Sprintf("%sowned/%s/%016x", k.p, "n1", v); g != w {
			t.Fatal(g, w)
		}
		if g, w := k.ikeSPI(v), fmt.Sprintf("%sspi/ike/%016x", k.p, v); g != w {
			t.Fatal(g, w)
		}
		if g, w := k.espSPI(uint32(v)), fmt.Sprintf("%sspi/esp/%08x", k.p, uint32(v)); g != w {
			t.Fatal(g, w)
		}
		if g, w := saName(v), fmt.Sprintf("sa/%016x", v); g != w {
			t.Fatal(g, w)
		}
		if g, w := seqName(v), fmt.Sprintf("seq/%016x", v); g != w {
			t.Fatal(g, w)
		}
		if g, w := k.ident("gw/1", v), fmt.Sprintf("%s%016x", k.identPrefix("gw/1"), v); g != w {
			t.Fatal(g, w)
		}
	}
}
