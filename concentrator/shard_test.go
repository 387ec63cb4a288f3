package concentrator

import (
	"crypto/rand"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

// A shard counts every message it gives its engine, by exchange, and
// estimates the engine's CPU from the calls it samples: for 400 new
// IKE_SA_INITs (about 50 sampled, each a key exchange) an estimate of
// the order of a key exchange's cost, nothing under any other work.
func TestShardCountsEngineWork(t *testing.T) {
	prop, err := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	if err != nil {
		t.Fatal(err)
	}
	esp, err := ike.ParseProposal("aes256gcm16", true, false)
	if err != nil {
		t.Fatal(err)
	}
	all := []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))}
	res, err := ike.NewEngine(ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 4500, Rand: rand.Reader, CookieThreshold: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ini, err := ike.NewEngine(ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 4500, Rand: rand.Reader})
	if err != nil {
		t.Fatal(err)
	}
	s := &shard{eng: res}
	local := netip.MustParseAddrPort("127.0.0.1:500")
	const n = 400
	for i := range n {
		remote := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(10000+i))
		var rd ike.Ready
		if _, err := ini.Initiate(time.Now(), ike.Initiation{Local: remote, Remote: local, PSK: []byte("k"), IKEProposals: []ike.ProposalSpec{prop},
			ESPProposals: []ike.ProposalSpec{esp}, TSi: all, TSr: all}, &rd); err != nil {
			t.Fatal(err)
		}
		var out ike.Ready
		s.handle(time.Now(), ike.Packet{Local: local, Remote: remote, Data: rd.Send[0].Messages[0]}, &out)
		if len(out.Send) != 1 {
			t.Fatalf("IKE_SA_INIT %d: %d answers", i, len(out.Send))
		}
	}
	s.handle(time.Now(), ike.Packet{Local: local, Remote: netip.MustParseAddrPort("127.0.0.3:500"), Data: []byte{1, 2, 3}}, &ike.Ready{})
	init, other := s.spent[0], s.spent[workOther]
	if init.Calls != n || other.Calls != 1 {
		t.Fatalf("calls: IKE_SA_INIT %d, other %d; want %d and 1", init.Calls, other.Calls, n)
	}
	t.Logf("IKE_SA_INIT: %.1f µs of CPU per message, estimated from the calls sampled", init.Seconds/n*1e6)
	// Each answer took an X25519 key exchange and a shared secret: tens
	// of microseconds or more, and not seconds.
	if per := time.Duration(init.Seconds / n * float64(time.Second)); per < 5*time.Microsecond || per > 50*time.Millisecond {
		t.Fatalf("IKE_SA_INIT: %v of the engine's CPU per message estimated", per)
	}
	for w, e := range s.spent {
		if w != 0 && w != workOther && (e.Calls != 0 || e.Seconds != 0) {
			t.Errorf("%s: %+v, but no such work was given", metrics.EngineWork[w], e)
		}
	}
}

// A reading that counted more than the engine (a goroutine preempted or
// parked inside it, whose thread ran others meanwhile; one that changed
// threads) counts at its work's mean, and is counted as an outlier.
func TestShardEngineOutliers(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	s := &shard{}
	for range 100 {
		s.count(1, readThreadCPU(), true)
	}
	e := s.spent[1]
	if e.Outliers != 0 || e.Seconds <= 0 {
		t.Fatalf("100 ordinary readings: %+v", e)
	}
	mean := e.Seconds / float64(e.Calls)
	late := readThreadCPU()
	late.ns -= int64(50 * time.Millisecond) // 50 ms more than it was
	s.count(1, late, true)
	moved := readThreadCPU()
	moved.tid = -1 // another thread's
	s.count(1, moved, true)
	e = s.spent[1]
	if e.Outliers != 2 || e.Calls != 102 {
		t.Fatalf("after a 50 ms reading and one from another thread: %+v; want both counted as outliers", e)
	}
	if got := e.Seconds / float64(e.Calls); got > 2*mean {
		t.Fatalf("mean per call %v after the outliers, %v before", got, mean)
	}
}
