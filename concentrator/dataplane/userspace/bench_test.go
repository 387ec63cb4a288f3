package userspace

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// countDevice is a TUN double for benchmarks: Read hands out the same
// packet until closed, Write counts.
type countDevice struct {
	start   chan struct{} // Read blocks until closed
	tokens  chan struct{} // in flight: Read takes one, the far side's Write returns it
	pkt     []byte
	reads   atomic.Int64
	limit   int64
	written atomic.Int64
	closed  chan struct{}
}

func (c *countDevice) Name() string { return "bench0" }
func (c *countDevice) Read(b []byte) (int, error) {
	select {
	case <-c.start:
	case <-c.closed:
		return 0, errClosed
	}
	if c.reads.Add(1) > c.limit {
		<-c.closed
		return 0, errClosed
	}
	select {
	case c.tokens <- struct{}{}:
	case <-c.closed:
		return 0, errClosed
	}
	return copy(b, c.pkt), nil
}
func (c *countDevice) Write(b []byte) (int, error) {
	c.written.Add(1)
	<-c.tokens
	return len(b), nil
}
func (c *countDevice) Close() error { close(c.closed); return nil }

// BenchmarkDataPlane pushes b.N inner packets through the whole user-space
// path: gateway TUN read → selector lookup → worker → Seal → "UDP" →
// concentrator HandleESP → SPI lookup → worker → Open → replay window →
// selector check → TUN write. Both data planes share this process's cores,
// so ns/op is the cost of one packet encrypted and decrypted, queues
// included, on two cores.
//
//	go test -run '^$' -bench DataPlane ./concentrator/dataplane/userspace
func BenchmarkDataPlane(b *testing.B) {
	for _, size := range []int{64, 512, 1400} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			gwDev := &countDevice{pkt: ipv4Packet("10.20.0.1", "10.30.0.1", 17, make([]byte, size-20)),
				limit: int64(b.N), start: make(chan struct{}), closed: make(chan struct{}), tokens: make(chan struct{}, 512)}
			concDev := &countDevice{closed: make(chan struct{}), tokens: gwDev.tokens}
			conc, err := New(Config{Device: concDev, Workers: 1, QueueLen: 4096})
			if err != nil {
				b.Fatal(err)
			}
			defer conc.Close()
			gw, err := New(Config{Device: gwDev, Workers: 1, QueueLen: 4096})
			if err != nil {
				b.Fatal(err)
			}
			defer gw.Close()
			gw.SetSender(&wire{to: conc, noRecord: true})
			cc, gc := childPair(0xc2000001, 0x62000001, 9)
			if err := conc.Install(context.Background(), cc); err != nil {
				b.Fatal(err)
			}
			if err := gw.Install(context.Background(), gc); err != nil {
				b.Fatal(err)
			}
			dropped := func() (n uint64) {
				for _, d := range []*DataPlane{gw, conc} {
					for _, v := range d.Stats().Drops {
						n += v
					}
				}
				return n
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			close(gwDev.start)
			// At most 512 packets in flight (less than a queue holds), so
			// none is dropped; every one reaches the far TUN.
			for uint64(concDev.written.Load())+dropped() < uint64(b.N) {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(dropped())/float64(b.N), "dropped/op")
		})
	}
}
