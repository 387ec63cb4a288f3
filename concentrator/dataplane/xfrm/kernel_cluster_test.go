//go:build linux

package xfrm

import (
	"context"
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
)

// espSetElems lists ESPTable's set name in s's namespace (nil when the
// table is not there).
func espSetElems(t *testing.T, s *side, name string) []uint32 {
	t.Helper()
	c, err := nftConn(s.ns)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name != ESPTable {
			continue
		}
		set, err := c.GetSetByName(tb, name)
		if err != nil {
			t.Fatalf("set %s: %v", name, err)
		}
		els, err := c.GetSetElements(set)
		if err != nil {
			t.Fatalf("set %s elements: %v", name, err)
		}
		out := []uint32{}
		for _, e := range els {
			out = append(out, binary.BigEndian.Uint32(e.Key))
		}
		slices.Sort(out)
		return out
	}
	return nil
}

// TestKernelClusterESP: with ClusterESP, ESP-in-UDP for an SPI the node
// has no state for reaches OnUnknownSPI through NFQUEUE; once the SA is
// installed its SPIs are in the sets and its packets stay in the kernel;
// the fence stops outbound ESP and lifting it resumes it; removal takes
// the SPIs out again; Close removes the table.
func TestKernelClusterESP(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc := conc.dataplane(t, func(o *Options) { o.ClusterESP = true })
	dg := gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	reported := make(chan uint32, 1024)
	dc.OnUnknownSPI(func(spi uint32) {
		select {
		case reported <- spi:
		default:
		}
	})
	waitReport := func(want uint32) bool {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case spi := <-reported:
				if spi == want {
					return true
				}
				t.Errorf("reported SPI %08x, want %08x", spi, want)
			case <-deadline:
				return false
			}
		}
	}

	sa := tunnelSA(0xc3000001, 0x0c300001)
	if err := dg.Install(ctx, mirror(sa)); err != nil {
		t.Fatal(err)
	}
	// The gateway sends ESP the node has no state for: reported, dropped
	// by the kernel after the accept verdict.
	if n := sendDatagrams(t, gw, conc, 3); n != 0 {
		t.Errorf("%d datagrams arrived without a state on conc", n)
	}
	if !waitReport(sa.InSPI) {
		t.Fatalf("ESP for unknown SPI %08x not reported (stats %+v)", sa.InSPI, dc.ClusterESPStats())
	}

	// The claim installs the SA: its SPIs go into the sets, its packets
	// to the kernel only.
	if err := dc.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	dc.syncESPSets()
	if got := espSetElems(t, conc, espSetOwned); !slices.Equal(got, []uint32{sa.InSPI}) {
		t.Errorf("owned set %x, want [%x]", got, sa.InSPI)
	}
	if got := espSetElems(t, conc, espSetOut); !slices.Equal(got, []uint32{sa.OutSPI}) {
		t.Errorf("out set %x, want [%x]", got, sa.OutSPI)
	}
	for len(reported) > 0 {
		<-reported
	}
	q0 := dc.ClusterESPStats().Queued
	if err := udpThrough(t, gw, conc, []byte("gw->conc owned")); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, conc, gw, []byte("conc->gw owned")); err != nil {
		t.Fatal(err)
	}
	if q := dc.ClusterESPStats().Queued; q != q0 {
		t.Errorf("%d packets of an installed SA went through the queue", q-q0)
	}

	// Fenced: nothing leaves for the SA; inbound still works.
	dc.SetFenced(true)
	before, _ := dg.Counter(ctx, sa.OutSPI)
	// Locally sent datagrams see the drop as EPERM; forwarded ones vanish.
	if err := udpThrough(t, conc, gw, []byte("conc->gw fenced")); err == nil {
		t.Error("fenced: a datagram reached the gateway")
	} else {
		t.Logf("fenced: %v", err)
	}
	after, _ := dg.Counter(ctx, sa.OutSPI)
	if after.InPackets != before.InPackets {
		t.Errorf("fenced: the gateway decrypted %d ESP packets", after.InPackets-before.InPackets)
	}
	dc.SetFenced(false)
	if err := udpThrough(t, conc, gw, []byte("conc->gw after the fence")); err != nil {
		t.Errorf("fence lifted: %v", err)
	}

	// Removed (handed off): reported again.
	if err := dc.Remove(ctx, sa.InSPI); err != nil {
		t.Fatal(err)
	}
	dc.syncESPSets()
	if got := espSetElems(t, conc, espSetOwned); len(got) != 0 {
		t.Errorf("owned set after removal %x", got)
	}
	sendDatagrams(t, gw, conc, 2)
	if !waitReport(sa.InSPI) {
		t.Errorf("ESP for a removed SA's SPI %08x not reported", sa.InSPI)
	}
	st := dc.ClusterESPStats()
	t.Logf("cluster ESP: %+v", st)
	if st.SetErrors != 0 || st.SetBatches == 0 {
		t.Errorf("stats %+v", st)
	}
	if err := dc.Close(); err != nil {
		t.Fatal(err)
	}
	if got := espSetElems(t, conc, espSetOwned); got != nil {
		t.Errorf("table %s still there after Close", ESPTable)
	}
}
