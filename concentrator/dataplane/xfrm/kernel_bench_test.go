package xfrm

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// BenchmarkKernelInstallRemove measures what one CHILD SA costs the data
// plane in the kernel: Install (two states, three policies: a virtual IP
// behind a NAT) and Remove, one SA after the other as a node's shard does
// them, CPU time included the kernel's. Run in the VM:
// run-in-vm.sh DIR ./xfrm.test -test.run '^$' -test.bench InstallRemove.
func BenchmarkKernelInstallRemove(b *testing.B) {
	ctx := context.Background()
	d := benchDataPlane(b)
	i := 0
	for b.Loop() {
		sa := tunnelSA(0xd1000000+uint32(i), 0x0f100000+uint32(i))
		sa.Remote = netip.AddrPortFrom(sa.Remote.Addr(), uint16(10000+i%50000))
		vip := netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)})
		sa.VirtualIP, sa.RemoteTS = vip, []dataplane.Selector{{Start: vip, End: vip, EndPort: 0xffff}}
		if err := d.Install(ctx, sa); err != nil {
			b.Fatal(err)
		}
		if err := d.Remove(ctx, sa.InSPI); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkKernelRekey measures a CHILD rekey as the data plane sees it:
// the successor (the same selectors, new SPIs) installed, taking the
// predecessor's policies over, then the predecessor removed. Run in the
// VM: run-in-vm.sh DIR ./xfrm.test -test.run '^$' -test.bench Rekey.
func BenchmarkKernelRekey(b *testing.B) {
	ctx := context.Background()
	d := benchDataPlane(b)
	vip := netip.MustParseAddr("10.99.0.9")
	child := func(i int) *dataplane.ChildSA {
		sa := tunnelSA(0xd2000000+uint32(i), 0x0f200000+uint32(i))
		sa.VirtualIP, sa.RemoteTS = vip, []dataplane.Selector{{Start: vip, End: vip, EndPort: 0xffff}}
		return sa
	}
	prev := child(0)
	if err := d.Install(ctx, prev); err != nil {
		b.Fatal(err)
	}
	i := 1
	for b.Loop() {
		sa := child(i)
		if err := d.Install(ctx, sa); err != nil {
			b.Fatal(err)
		}
		if err := d.Remove(ctx, prev.InSPI); err != nil {
			b.Fatal(err)
		}
		prev = sa
		i++
	}
}

// benchDataPlane is a data plane in a namespace of its own (lo up, the
// node's address 192.168.100.2/24 on it, pool 10.99.0.0/16) for the
// kernel benchmarks, closed at the benchmark's end; it skips where the
// kernel has no ESP.
func benchDataPlane(b *testing.B) *DataPlane {
	if os.Geteuid() != 0 || Available() != nil {
		b.Skip("needs root and a kernel with ESP (the VM tier)")
	}
	ns := newBenchNS(b)
	o := DefaultOptions()
	o.NetNS, o.MSSClamp = ns, false
	o.Pools = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")}
	d, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	_ = h.LinkSetUp(lo)
	_ = h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 100, 2), Mask: net.CIDRMask(24, 32)}})
	return d
}
