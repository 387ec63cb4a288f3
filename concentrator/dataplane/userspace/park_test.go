package userspace

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// ESP that arrives before its SA is installed here (the SA is being
// claimed from another node) is delivered once the SA is installed: a live
// move loses no packet. Without a claim path (no OnUnknownSPI) it is
// dropped as before.
func TestParkedESPReplayedOnInstall(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	cc, gc := childPair(0xc1000002, 0x61000002, 3)
	if err := r.gw.Install(ctx, gc); err != nil {
		t.Fatal(err)
	}
	var reported atomic.Int32
	r.conc.OnUnknownSPI(func(spi uint32) {
		if spi == cc.InSPI {
			reported.Add(1)
		}
	})
	var sent [][]byte
	for i := range 3 {
		up := ipv4Packet("10.20.0.1", "10.30.0.1", 1, bytes.Repeat([]byte{byte(i)}, 40))
		sent = append(sent, up)
		r.gwDev.toDP <- up
	}
	deadline := time.Now().Add(5 * time.Second)
	for reported.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("unknown SPI reported %d times, want 3", reported.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case p := <-r.concDev.fromDP:
		t.Fatalf("delivered before the SA was installed: %x", p[:20])
	default:
	}
	if err := r.conc.Install(ctx, cc); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for range sent {
		got[string(recv(t, r.concDev.fromDP))] = true
	}
	for i, p := range sent {
		if !got[string(p)] {
			t.Errorf("parked packet %d not delivered", i)
		}
	}
	if d := r.conc.Stats().Drops["no_sa"]; d != 0 {
		t.Fatalf("no_sa drops %d, want 0 (parked)", d)
	}
}

// TestParkingBytes: big packets are bounded by parkBytes before parkTotal.
func TestParkingBytes(t *testing.T) {
	p := espParking{}
	big := make([]byte, 1400)
	n := 0
	for spi := uint32(1); ; spi++ {
		ok, _ := p.park(spi, big, concAddr, gwAddr)
		if !ok {
			break
		}
		n++
	}
	if n != parkBytes/len(big) || p.bytes > parkBytes {
		t.Fatalf("%d packets of %d bytes parked (%d bytes), want %d", n, len(big), p.bytes, parkBytes/len(big))
	}
	for spi := uint32(1); spi <= uint32(n); spi++ {
		p.take(spi)
	}
	if p.bytes != 0 || p.total != 0 {
		t.Fatalf("after taking all: %d bytes, %d packets", p.bytes, p.total)
	}
}

func TestParkingBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := espParking{now: func() time.Time { return now }}
	for i := range parkPerSPI {
		if ok, _ := p.park(7, []byte{byte(i)}, concAddr, gwAddr); !ok {
			t.Fatalf("packet %d refused", i)
		}
	}
	if ok, _ := p.park(7, []byte{99}, concAddr, gwAddr); ok {
		t.Fatal("more than parkPerSPI packets parked for one SPI")
	}
	for spi := uint32(100); p.total < parkTotal; spi++ {
		p.park(spi, []byte{1}, concAddr, gwAddr)
	}
	if ok, _ := p.park(5, []byte{1}, concAddr, gwAddr); ok {
		t.Fatal("more than parkTotal packets parked")
	}
	if got := p.take(7); len(got) != parkPerSPI || got[3].pkt[0] != 3 {
		t.Fatalf("take: %d packets", len(got))
	}
	if p.bytes != p.total {
		t.Fatalf("%d bytes parked in %d one-byte packets", p.bytes, p.total)
	}
	// Expired: swept on the next park, and never replayed.
	p.park(8, []byte{1}, concAddr, gwAddr)
	now = now.Add(parkTTL + time.Second)
	if got := p.take(8); got != nil {
		t.Fatal("an expired packet was replayed")
	}
	if _, expired := p.park(9, []byte{1}, concAddr, gwAddr); expired != parkTotal-parkPerSPI {
		t.Fatalf("expired %d, want %d", expired, parkTotal-parkPerSPI)
	}
	if p.total != 1 || p.bytes != 1 || len(p.m) != 1 {
		t.Fatalf("after the sweep: %d packets for %d SPIs", p.total, len(p.m))
	}
}
