package hexid

import (
	"fmt"
	"testing"
)

func TestIsPrintfs(t *testing.T) {
	for _, v := range []uint64{0, 1, 0xf, 0x10, 0xdeadbeef, 0x0123456789abcdef, 1<<63 | 5, ^uint64(0)} {
		if got, want := String(v, 16), fmt.Sprintf("%016x", v); got != want {
			t.Errorf("String(%#x, 16) = %s, want %s", v, got, want)
		}
		if got, want := String(uint64(uint32(v)), 8), fmt.Sprintf("%08x", uint32(v)); got != want {
			t.Errorf("String(%#x, 8) = %s, want %s", uint32(v), got, want)
		}
		if got, want := string(Append([]byte("sa/"), v, 16)), fmt.Sprintf("sa/%016x", v); got != want {
			t.Errorf("Append = %s, want %s", got, want)
		}
	}
}
