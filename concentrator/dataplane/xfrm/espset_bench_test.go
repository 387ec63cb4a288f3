package xfrm

import (
	"log/slog"
	"os"
	"testing"
)

// BenchmarkESPSteerSync measures one round of the ESP sets' batcher: an
// SA's SPIs added and synced, then removed and synced (two netlink
// batches an op). nftables, not ESP: it runs on the build hosts (root).
func BenchmarkESPSteerSync(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (a network namespace)")
	}
	s, err := newESPSteer(newBenchNS(b), 4500, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	i := uint32(0)
	for b.Loop() {
		s.add(0xc0000000+i, 0x0a000000+i)
		s.sync()
		s.del(0xc0000000+i, 0x0a000000+i)
		s.sync()
		i++
	}
}
