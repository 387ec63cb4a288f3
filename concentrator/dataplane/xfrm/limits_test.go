package xfrm

import (
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

func TestStateLimitsSequenceNumbers(t *testing.T) {
	o := testOpts()
	inf := ^uint64(0)
	if l := StateLimits(o, false); l.PacketSoft != 1<<32-1<<24 || l.PacketHard != 1<<32-1<<16 ||
		l.ByteSoft != inf || l.ByteHard != inf || l.TimeSoft != 0 || l.TimeHard != 0 {
		t.Errorf("non-ESN limits %+v: want packets soft 2^32-2^24, hard 2^32-2^16, no byte or time limits", l)
	}
	if l := StateLimits(o, true); l != (netlink.XfrmStateLimits{ByteSoft: inf, ByteHard: inf, PacketSoft: inf, PacketHard: inf}) {
		t.Errorf("ESN limits %+v: want none", l)
	}
	// Options lower the packet limits, add byte limits, never raise a
	// non-ESN SA's limits above the wrap-safe ones.
	o.PacketSoftLimit, o.PacketHardLimit, o.ByteSoftLimit, o.ByteHardLimit = 5, 10, 1000, 2000
	for _, esn := range []bool{false, true} {
		if l := StateLimits(o, esn); l.PacketSoft != 5 || l.PacketHard != 10 || l.ByteSoft != 1000 || l.ByteHard != 2000 {
			t.Errorf("esn=%v limits %+v: want 5/10 packets, 1000/2000 bytes", esn, l)
		}
	}
	o.PacketSoftLimit, o.PacketHardLimit, o.ByteSoftLimit, o.ByteHardLimit = 1<<40, 1<<41, 0, 0
	if l := StateLimits(o, false); l.PacketSoft != SeqSoftPackets || l.PacketHard != SeqHardPackets {
		t.Errorf("non-ESN limits %+v: want capped to the wrap-safe ones", l)
	}
	if l := StateLimits(o, true); l.PacketSoft != 1<<40 || l.PacketHard != 1<<41 {
		t.Errorf("ESN limits %+v", l)
	}
	// A soft limit at or above the hard one comes just before it.
	o.PacketSoftLimit, o.PacketHardLimit, o.ByteSoftLimit, o.ByteHardLimit = 10, 10, 0, 100
	if l := StateLimits(o, true); l.PacketSoft != 9 || l.PacketHard != 10 || l.ByteSoft != 99 || l.ByteHard != 100 {
		t.Errorf("limits %+v: want soft just below hard", l)
	}
}

func TestBuildStatesLimits(t *testing.T) {
	o := testOpts()
	for _, esn := range []bool{false, true} {
		sa := testSA()
		sa.ESN = esn
		in, out, err := BuildStates(o, sa, o.reqIDsForSlot(1))
		if err != nil {
			t.Fatal(err)
		}
		want := StateLimits(o, esn)
		if in.Limits != want || out.Limits != want {
			t.Errorf("esn=%v: limits in %+v out %+v, want %+v", esn, in.Limits, out.Limits, want)
		}
	}
	o.PacketSoftLimit, o.PacketHardLimit = 5, 10
	sa := testSA()
	sa.ESN = false
	in, out, _ := BuildStates(o, sa, o.reqIDsForSlot(1))
	if in.Limits.PacketSoft != 5 || in.Limits.PacketHard != 10 || out.Limits.PacketSoft != 5 || out.Limits.PacketHard != 10 {
		t.Errorf("limits in %+v out %+v: want 5/10 packets", in.Limits, out.Limits)
	}
}

func TestRemainingLimits(t *testing.T) {
	inf := ^uint64(0)
	l := remainingLimits(netlink.XfrmStateLimits{PacketSoft: 100, PacketHard: 200, ByteSoft: inf, ByteHard: 5000}, 150, 6000)
	if l.PacketSoft != 1 || l.PacketHard != 50 || l.ByteSoft != inf || l.ByteHard != 1 {
		t.Errorf("remaining %+v", l)
	}
}

func TestExpiryFromKernel(t *testing.T) {
	o := testOpts()
	ids := o.reqIDsForSlot(3)
	slots := map[uint32]uint32{3: 0xc1000001}
	lookup := func(s uint32) (uint32, bool) { v, ok := slots[s]; return v, ok }
	mk := func(spi, reqid uint32, pkts, bytes uint64) *nl.XfrmUsersaInfo {
		var u nl.XfrmUsersaInfo
		u.Id.Proto = uint8(netlink.XFRM_PROTO_ESP)
		u.Id.Spi = nl.Swap32(spi)
		u.Reqid = reqid
		u.Lft = nl.XfrmLifetimeCfg{SoftPacketLimit: 5, HardPacketLimit: 10, SoftByteLimit: 1000, HardByteLimit: 2000}
		u.Curlft = nl.XfrmLifetimeCur{Packets: pkts, Bytes: bytes}
		return &u
	}
	for _, c := range []struct {
		name string
		u    *nl.XfrmUsersaInfo
		hard bool
		ok   bool
		want dataplane.Expiry
	}{
		{"inbound soft packets", mk(0xc1000001, ids.in, 5, 500), false, true, dataplane.Expiry{InSPI: 0xc1000001, Reason: "packet limit"}},
		{"outbound hard packets", mk(0x0badcafe, ids.out, 10, 500), true, true, dataplane.Expiry{InSPI: 0xc1000001, Hard: true, Reason: "packet limit"}},
		{"outbound soft bytes", mk(0x0badcafe, ids.out, 3, 1000), false, true, dataplane.Expiry{InSPI: 0xc1000001, Reason: "byte limit"}},
		{"hard bytes", mk(0xc1000001, ids.in, 6, 2100), true, true, dataplane.Expiry{InSPI: 0xc1000001, Hard: true, Reason: "byte limit"}},
		{"hard lifetime", mk(0xc1000001, ids.in, 6, 100), true, true, dataplane.Expiry{InSPI: 0xc1000001, Hard: true, Reason: "lifetime"}},
		{"outbound of an unknown slot", mk(0x0badcafe, o.reqIDsForSlot(4).out, 10, 0), true, false, dataplane.Expiry{}},
		{"foreign", mk(0xc1000001, 7, 10, 0), true, false, dataplane.Expiry{}},
	} {
		e, ok := ExpiryFromKernel(o, c.u, c.hard, lookup)
		if ok != c.ok || e != c.want {
			t.Errorf("%s: got %+v %v, want %+v %v", c.name, e, ok, c.want, c.ok)
		}
	}
	ah := mk(0xc1000001, ids.in, 10, 0)
	ah.Id.Proto = uint8(netlink.XFRM_PROTO_AH)
	if _, ok := ExpiryFromKernel(o, ah, true, lookup); ok {
		t.Error("an AH state's expiry was reported")
	}
}
