//go:build linux

package xfrm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// The kernel tests need root and a kernel with ESP. The build hosts have
// XFRM but no ESP, so they run in the VM tier (make test-vm sets
// IKEFLEET_VM=1, where a missing prerequisite is a failure); elsewhere they
// run where the kernel allows and skip otherwise.
func requireKernel(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if err := Available(); err != nil {
		why = err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("IKEFLEET_VM") == "1" {
		t.Fatalf("kernel xfrm test in the VM: %s", why)
	}
	t.Skipf("kernel xfrm test: %s (runs in the VM tier: make test-vm)", why)
}

// requireRoot is for the tests that need root (a network namespace) but
// not ESP: they run on the build hosts too. CI and the VM tier run as
// root, so there a missing root is a failure.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("IKEFLEET_VM") == "1" || os.Getenv("CI") == "true" {
		t.Fatal("needs root (a network namespace); CI and the VM tier run as root")
	}
	t.Skip("needs root (a network namespace)")
}

// inNS runs fn on a thread inside ns.
func inNS(t testing.TB, ns netns.NsHandle, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// side is one end of a test link: its own namespace, a veth end with outer
// address outer/24, an inner address on lo, a netlink handle.
type side struct {
	ns    netns.NsHandle
	h     *netlink.Handle
	outer netip.Addr
	inner netip.Addr
	dev   string
}

func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// joinSides opens a netlink handle in each side's namespace and joins
// them with a veth pair named after their devs (down, no addresses).
func joinSides(t *testing.T, conc, gw *side) {
	t.Helper()
	for _, s := range []*side{conc, gw} {
		h, err := netlink.NewHandleAt(s.ns)
		if err != nil {
			t.Fatal(err)
		}
		s.h = h
		t.Cleanup(h.Close)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: conc.dev}, PeerName: gw.dev, PeerNamespace: netlink.NsFd(gw.ns)}
	if err := conc.h.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
}

// newPair builds conc (192.168.100.2, inner 10.30.0.1) and gw
// (192.168.100.1, inner 10.20.0.1) joined by a veth pair.
func newPair(t *testing.T) (conc, gw *side) {
	t.Helper()
	conc = &side{ns: newNS(t), outer: netip.MustParseAddr("192.168.100.2"), inner: netip.MustParseAddr("10.30.0.1"), dev: "conc0"}
	gw = &side{ns: newNS(t), outer: netip.MustParseAddr("192.168.100.1"), inner: netip.MustParseAddr("10.20.0.1"), dev: "gw0"}
	joinSides(t, conc, gw)
	for _, s := range []*side{conc, gw} {
		lo, err := s.h.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		dev, err := s.h.LinkByName(s.dev)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			l netlink.Link
			a netip.Prefix
		}{{dev, netip.PrefixFrom(s.outer, 24)}, {lo, netip.PrefixFrom(s.inner, 32)}} {
			a := &net.IPNet{IP: ipOf(c.a.Addr()), Mask: net.CIDRMask(c.a.Bits(), 32)}
			if err := s.h.AddrAdd(c.l, &netlink.Addr{IPNet: a}); err != nil {
				t.Fatal(err)
			}
			if err := s.h.LinkSetUp(c.l); err != nil {
				t.Fatal(err)
			}
		}
		// The inner address is on lo: IPv4 accepts packets for it on any
		// interface, but refuses them from lo's martian checks otherwise.
	}
	return conc, gw
}

func (s *side) dataplane(t *testing.T, mod func(*Options)) *DataPlane {
	t.Helper()
	o := DefaultOptions()
	o.NetNS = s.ns
	if mod != nil {
		mod(&o)
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// espSocket opens the side's NAT-T socket with UDP_ENCAP_ESPINUDP: without
// it the kernel does not decapsulate ESP-in-UDP.
func (s *side) espSocket(t *testing.T, port int) {
	t.Helper()
	var c *net.UDPConn
	err := inNS(t, s.ns, func() (err error) {
		c, err = net.ListenUDP(udpNet(s.outer), &net.UDPAddr{IP: ipOf(s.outer), Port: port})
		if err != nil {
			return err
		}
		return EnableESPInUDP(c)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
}

// mirror is the gateway's view of sa.
func mirror(sa *dataplane.ChildSA) *dataplane.ChildSA {
	m := *sa
	m.InSPI, m.OutSPI = sa.OutSPI, sa.InSPI
	m.Local, m.Remote = sa.Remote, sa.Local
	m.In, m.Out = sa.Out, sa.In
	m.LocalTS, m.RemoteTS = sa.RemoteTS, sa.LocalTS
	return &m
}

// tunnelSA is testSA between newPair's sides (gateway NAT-T port 4501).
func tunnelSA(in, out uint32) *dataplane.ChildSA {
	sa := testSA()
	sa.InSPI, sa.OutSPI = in, out
	return sa
}

// udpThrough sends a datagram from src's inner address to dst's inner
// address and waits for it; the routes and policies must carry it.
func udpThrough(t *testing.T, src, dst *side, payload []byte) error {
	t.Helper()
	return udpBetween(t, src, dst, src.inner, dst.inner, payload)
}

func udpNet(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

// udpBetween is udpThrough from address from of src to address to of dst.
func udpBetween(t *testing.T, src, dst *side, from, toAddr netip.Addr, payload []byte) error {
	t.Helper()
	var rc, sc *net.UDPConn
	if err := inNS(t, dst.ns, func() (err error) {
		rc, err = net.ListenUDP(udpNet(toAddr), &net.UDPAddr{IP: ipOf(toAddr)})
		return err
	}); err != nil {
		return err
	}
	defer rc.Close()
	if err := inNS(t, src.ns, func() (err error) {
		sc, err = net.ListenUDP(udpNet(from), &net.UDPAddr{IP: ipOf(from)})
		return err
	}); err != nil {
		return err
	}
	defer sc.Close()
	to := rc.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 2048)
	for try := 0; try < 3; try++ {
		if _, err := sc.WriteToUDP(payload, to); err != nil {
			return fmt.Errorf("send %s -> %s: %w", from, to, err)
		}
		_ = rc.SetReadDeadline(time.Now().Add(time.Second))
		n, sender, err := rc.ReadFromUDP(buf)
		if err == nil {
			if !bytes.Equal(buf[:n], payload) || !sender.IP.Equal(ipOf(from)) {
				return fmt.Errorf("got %d bytes from %v", n, sender)
			}
			return nil
		}
	}
	return fmt.Errorf("datagram %s -> %s did not arrive", from, toAddr)
}

// ourPolicies and ourStates count what the kernel holds in our reqid range
// (and in total).
func kernelCounts(t *testing.T, h *netlink.Handle, o *Options) (states, policies, foreign int) {
	t.Helper()
	ss, err := h.XfrmStateList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if _, _, ok := o.ours(uint32(s.Reqid)); ok {
			states++
		} else {
			foreign++
		}
	}
	ps, err := h.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if _, _, ok := o.ours(policyReqID(&p)); ok {
			policies++
		} else {
			foreign++
		}
	}
	return
}

func routeTo(t *testing.T, h *netlink.Handle, prefix string) *netlink.Route {
	t.Helper()
	family := netlink.FAMILY_V4
	if netip.MustParsePrefix(prefix).Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	rs, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == prefix {
			return &r
		}
	}
	return nil
}

func TestKernelAvailable(t *testing.T) {
	requireKernel(t)
	if err := Available(); err != nil {
		t.Fatal(err)
	}
}

func TestKernelInstallListRemove(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, _ := newPair(t)
	d := conc.dataplane(t, nil)
	sa := tunnelSA(0xc1000001, 0x0badcafe)

	t0 := time.Now()
	c0 := d.raw.calls.Load()
	if err := d.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	t.Logf("one CHILD SA (2 states, 3 policies, 1 route): %v", time.Since(t0))
	// One datagram: a send and the batch's acknowledgement.
	if n := d.raw.calls.Load() - c0; n != 2 {
		t.Errorf("install: %d netlink system calls in batches, want 2", n)
	}
	// Idempotent: the states answer EEXIST, the policies are ours already.
	if err := d.Install(ctx, sa); err != nil {
		t.Fatalf("second install: %v", err)
	}
	// EEXIST straight from the kernel is success for a state we build again.
	in, _, _ := BuildStates(&d.opts, sa, d.sas[sa.InSPI].ids)
	if err := conc.h.XfrmStateAdd(in); !isExist(err) {
		t.Fatalf("adding an installed state: %v, want EEXIST", err)
	}
	st, pol, _ := kernelCounts(t, conc.h, &d.opts)
	if st != 2 || pol != 3 {
		t.Fatalf("kernel holds %d states and %d policies, want 2 and 3", st, pol)
	}
	r := routeTo(t, conc.h, "10.20.0.0/24")
	if r == nil || r.Protocol != d.opts.RouteProtocol || !r.Src.Equal(ipOf(conc.inner)) {
		t.Fatalf("route to the remote TS: %+v, want protocol %d src %s", r, d.opts.RouteProtocol, conc.inner)
	}

	list, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("List: %d SAs", len(list))
	}
	got := list[0]
	if got.InSPI != sa.InSPI || got.OutSPI != sa.OutSPI || got.Local != sa.Local || got.Remote != sa.Remote ||
		!got.ESN || got.EncrID != sa.EncrID || !bytes.Equal(got.In.Encr, sa.In.Encr) || !bytes.Equal(got.Out.Encr, sa.Out.Encr) ||
		!slices.Equal(got.LocalTS, sa.LocalTS) || !slices.Equal(got.RemoteTS, sa.RemoteTS) {
		t.Errorf("List: %+v\nwant %+v", got, sa)
	}

	c0 = d.raw.calls.Load()
	if err := d.Remove(ctx, sa.InSPI); err != nil {
		t.Fatal(err)
	}
	// One datagram, no policy read: a send, the two states' last
	// counters and the batch's acknowledgement.
	if n := d.raw.calls.Load() - c0; n != 4 {
		t.Errorf("remove: %d netlink system calls in batches, want 4", n)
	}
	if err := d.Remove(ctx, sa.InSPI); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &d.opts); st != 0 || pol != 0 {
		t.Errorf("after Remove: %d states, %d policies left", st, pol)
	}
	if r := routeTo(t, conc.h, "10.20.0.0/24"); r != nil {
		t.Errorf("after Remove: route %v left", r)
	}
	if list, _ := d.List(ctx); len(list) != 0 {
		t.Errorf("List after Remove: %v", list)
	}
}

// TestKernelSuitesTraffic installs every suite on both ends of a veth pair
// (both ends driven by this package) and sends a datagram each way through
// the ESP-in-UDP tunnel; the kernel's counters must show it.
func TestKernelSuitesTraffic(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc := conc.dataplane(t, nil)
	dg := gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	for i, c := range []struct {
		name              string
		encr, bits, integ uint16
		encrLen, integLen int
		esn               bool
	}{
		{"aes128gcm16", encrAESGCM16, 128, 0, 20, 0, false},
		{"aes256gcm16-esn", encrAESGCM16, 256, 0, 36, 0, true},
		{"chacha20poly1305", encrChaCha20Poly1305, 0, 0, 36, 0, false},
		{"chacha20poly1305-esn", encrChaCha20Poly1305, 0, 0, 36, 0, true},
		{"aes128-sha256", encrAESCBC, 128, integHMACSHA256128, 16, 32, false},
		{"aes256-sha384", encrAESCBC, 256, integHMACSHA384192, 32, 48, false},
		{"aes256-sha512-esn", encrAESCBC, 256, integHMACSHA512256, 32, 64, true},
	} {
		before, err := dc.Report(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(c.name, func(t *testing.T) {
			sa := tunnelSA(0xc2000000+uint32(i), 0x0b000000+uint32(i))
			sa.EncrID, sa.EncrKeyBits, sa.IntegID, sa.ESN = c.encr, c.bits, c.integ, c.esn
			sa.In = dataplane.Keys{Encr: keyOf(c.encrLen, byte(1+i)), Integ: keyOf(c.integLen, byte(11+i))}
			sa.Out = dataplane.Keys{Encr: keyOf(c.encrLen, byte(21+i)), Integ: keyOf(c.integLen, byte(31+i))}
			if err := dc.Install(ctx, sa); err != nil {
				t.Fatal(err)
			}
			if err := dg.Install(ctx, mirror(sa)); err != nil {
				t.Fatal(err)
			}
			defer dc.Remove(ctx, sa.InSPI)
			defer dg.Remove(ctx, sa.OutSPI)
			if err := udpThrough(t, conc, gw, []byte("conc->gw "+c.name)); err != nil {
				t.Fatal(err)
			}
			if err := udpThrough(t, gw, conc, []byte("gw->conc "+c.name)); err != nil {
				t.Fatal(err)
			}
			cs, err := dc.Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs) != 1 || cs[0].InSPI != sa.InSPI || cs[0].InPackets < 1 || cs[0].OutPackets < 1 || cs[0].InBytes == 0 || cs[0].OutBytes == 0 {
				t.Errorf("conc counters %+v: want traffic both ways on %08x", cs, sa.InSPI)
			}
			// The wire carried ESP: the gateway's inbound SA decrypted it.
			gs, _ := dg.Counters(ctx)
			if len(gs) != 1 || gs[0].InPackets < 1 {
				t.Errorf("gw counters %+v", gs)
			}
		})
		// The SA is removed by now; Report's totals kept its traffic.
		after, err := dc.Report(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.InPackets <= before.InPackets || after.OutPackets <= before.OutPackets || after.InBytes <= before.InBytes {
			t.Errorf("%s: Report totals %+v did not grow from %+v", c.name, after, before)
		}
	}
}

// TestKernelReconcile: a node installed two SAs and restarted knowing only
// one. A fresh DataPlane adopts that one, removes the stray with its
// policies and route, and never touches a foreign state or policy.
func TestKernelReconcile(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	before := conc.dataplane(t, nil)
	keep := tunnelSA(0xc3000001, 0x0c000001)
	stray := tunnelSA(0xc3000002, 0x0c000002)
	stray.RemoteTS = []dataplane.Selector{sel("10.21.0.0", "10.21.0.255")}
	for _, sa := range []*dataplane.ChildSA{keep, stray} {
		if err := before.Install(ctx, sa); err != nil {
			t.Fatal(err)
		}
	}
	// Someone else's SA and policy (reqid 7): not ours.
	foreign := &netlink.XfrmState{Src: net.ParseIP("192.168.100.1"), Dst: net.ParseIP("192.168.100.2"),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Spi: 0x7777, Reqid: 7,
		Aead: &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: keyOf(20, 9), ICVLen: 128}}
	if err := conc.h.XfrmStateAdd(foreign); err != nil {
		t.Fatal(err)
	}
	fpol := &netlink.XfrmPolicy{Src: ipNet(netip.MustParsePrefix("10.40.0.0/24")), Dst: ipNet(netip.MustParsePrefix("10.41.0.0/24")),
		Dir: netlink.XFRM_DIR_OUT, Tmpls: []netlink.XfrmPolicyTmpl{{Src: net.ParseIP("192.168.100.2"), Dst: net.ParseIP("192.168.100.1"),
			Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Reqid: 7}}}
	if err := conc.h.XfrmPolicyAdd(fpol); err != nil {
		t.Fatal(err)
	}
	before.Close() // the old process is gone; the kernel keeps its SAs

	after := conc.dataplane(t, nil)
	list, err := after.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("a restarted node lists %d of its SAs (%v), want 2", len(list), err)
	}
	adopted, removed, err := after.Reconcile(ctx, []*dataplane.ChildSA{keep})
	if err != nil {
		t.Fatal(err)
	}
	if adopted != 1 || removed != 1 {
		t.Errorf("Reconcile: adopted %d removed %d, want 1 and 1", adopted, removed)
	}
	st, pol, foreignN := kernelCounts(t, conc.h, &after.opts)
	if st != 2 || pol != 3 || foreignN != 2 {
		t.Errorf("after Reconcile: %d states, %d policies of ours, %d foreign objects; want 2, 3, 2", st, pol, foreignN)
	}
	if routeTo(t, conc.h, "10.21.0.0/24") != nil {
		t.Error("the stray's route is left")
	}
	if routeTo(t, conc.h, "10.20.0.0/24") == nil {
		t.Error("the adopted SA's route is gone")
	}
	// The adopted SA still carries traffic.
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	dg := gw.dataplane(t, nil)
	if err := dg.Install(ctx, mirror(keep)); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, gw, conc, []byte("after restart")); err != nil {
		t.Error(err)
	}
	// A policy lost behind our back comes back; otherwise nothing to do.
	pols, _ := BuildPolicies(&after.opts, keep, after.sas[keep.InSPI].ids)
	if err := conc.h.XfrmPolicyDel(pols[2]); err != nil {
		t.Fatal(err)
	}
	adopted, removed, err = after.Reconcile(ctx, []*dataplane.ChildSA{keep})
	if _, pol, _ := kernelCounts(t, conc.h, &after.opts); pol != 3 {
		t.Errorf("Reconcile did not restore the deleted fwd policy: %d policies", pol)
	}
	if err != nil || adopted != 1 || removed != 0 {
		t.Errorf("second Reconcile: adopted %d removed %d err %v, want 1 0 nil", adopted, removed, err)
	}
	// Knowing nothing (today's restart: no state store yet) removes all of
	// ours and still nothing foreign.
	adopted, removed, err = after.Reconcile(ctx, nil)
	if err != nil || adopted != 0 || removed != 1 {
		t.Errorf("Reconcile(nil): adopted %d removed %d err %v, want 0 1 nil", adopted, removed, err)
	}
	if st, pol, foreignN := kernelCounts(t, conc.h, &after.opts); st != 0 || pol != 0 || foreignN != 2 {
		t.Errorf("after Reconcile(nil): %d states, %d policies of ours, %d foreign; want 0 0 2", st, pol, foreignN)
	}
	if r := routeTo(t, conc.h, "10.20.0.0/24"); r != nil {
		t.Errorf("route left: %v", r)
	}
	// Remove of an SA installed by an earlier process, without Reconcile.
	if err := after.Install(ctx, keep); err != nil {
		t.Fatal(err)
	}
	third := conc.dataplane(t, nil)
	if err := third.Remove(ctx, keep.InSPI); err != nil {
		t.Fatal(err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &after.opts); st != 0 || pol != 0 {
		t.Errorf("Remove by a restarted node: %d states %d policies left", st, pol)
	}
}

// TestKernelRekeyTakeover: a rekeyed CHILD SA with the same selectors takes
// the policies over; removing the old one leaves them to the new one.
func TestKernelRekeyTakeover(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	old := tunnelSA(0xc4000001, 0x0d000001)
	nu := tunnelSA(0xc4000002, 0x0d000002)
	nu.In.Encr, nu.Out.Encr = keyOf(36, 7), keyOf(36, 8)
	// The successor's install: its batch (a send, the three policies'
	// EEXISTs, the last of them the batch's end), the policies' reads (a
	// send, three replies, the end), their updates (a send, the end).
	for k, sa := range []*dataplane.ChildSA{old, nu} {
		c0 := dc.raw.calls.Load()
		if err := dc.Install(ctx, sa); err != nil {
			t.Fatal(err)
		}
		if n, want := dc.raw.calls.Load()-c0, []uint64{2, 11}[k]; n != want {
			t.Errorf("install of %08x: %d netlink system calls in batches, want %d", sa.InSPI, n, want)
		}
		if err := dg.Install(ctx, mirror(sa)); err != nil {
			t.Fatal(err)
		}
	}
	if err := dc.Remove(ctx, old.InSPI); err != nil {
		t.Fatal(err)
	}
	if err := dg.Remove(ctx, old.OutSPI); err != nil {
		t.Fatal(err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &dc.opts); st != 2 || pol != 3 {
		t.Fatalf("after the rekey: %d states %d policies, want 2 and 3", st, pol)
	}
	if err := udpThrough(t, conc, gw, []byte("rekeyed")); err != nil {
		t.Fatal(err)
	}
	cs, _ := dc.Counters(ctx)
	if len(cs) != 1 || cs[0].InSPI != nu.InSPI || cs[0].OutPackets == 0 {
		t.Errorf("counters %+v: traffic should use the new SA", cs)
	}
	if routeTo(t, conc.h, "10.20.0.0/24") == nil {
		t.Error("the route went with the old SA")
	}
}

// TestKernelInboundPackets: the inbound states' packet counts, read in one
// batch, move with the peer's ESP; an SPI not installed is unknown.
func TestKernelInboundPackets(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	sa := tunnelSA(0xc4200001, 0x0d200001)
	if err := dc.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if err := dg.Install(ctx, mirror(sa)); err != nil {
		t.Fatal(err)
	}
	spis := []uint32{sa.InSPI, 0xc42000ff}
	got := make([]uint64, len(spis))
	c0 := dc.raw.calls.Load()
	dc.InboundPackets(ctx, spis, got)
	if got[0] != 0 || got[1] != ^uint64(0) {
		t.Fatalf("before traffic: %v, want [0 unknown]", got)
	}
	if n := dc.raw.calls.Load() - c0; n != 3 {
		t.Errorf("%d netlink system calls for one count, want 3 (a send, the reply, the batch's end)", n)
	}
	for i := 0; i < 3; i++ {
		if err := udpThrough(t, gw, conc, []byte("to the concentrator")); err != nil {
			t.Fatal(err)
		}
	}
	dc.InboundPackets(ctx, spis, got)
	if got[0] != 3 || got[1] != ^uint64(0) {
		t.Fatalf("after 3 datagrams from the gateway: %v, want [3 unknown]", got)
	}
	if err := udpThrough(t, conc, gw, []byte("to the gateway")); err != nil {
		t.Fatal(err)
	}
	dc.InboundPackets(ctx, spis[:1], got[:1])
	if got[0] != 3 {
		t.Fatalf("after a datagram out: %d inbound, want 3 still", got[0])
	}
}

// TestKernelRemoveKnowsTakenPolicies: a removal deletes the policies its
// SA holds without reading them, so the data plane must know which a
// successor took. Here the successor goes first (and deletes them), a
// third SA adds them afresh, and the first one's removal must leave the
// third's alone.
func TestKernelRemoveKnowsTakenPolicies(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, _ := newPair(t)
	d := conc.dataplane(t, nil)
	old := tunnelSA(0xc4100001, 0x0d100001)
	nu := tunnelSA(0xc4100002, 0x0d100002)
	third := tunnelSA(0xc4100003, 0x0d100003)
	for _, sa := range []*dataplane.ChildSA{old, nu} {
		if err := d.Install(ctx, sa); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Remove(ctx, nu.InSPI); err != nil {
		t.Fatal(err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &d.opts); st != 2 || pol != 0 {
		t.Fatalf("after the successor's removal: %d states %d policies, want 2 and 0 (the policies were its)", st, pol)
	}
	if err := d.Install(ctx, third); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(ctx, old.InSPI); err != nil {
		t.Fatal(err)
	}
	st, pol, _ := kernelCounts(t, conc.h, &d.opts)
	if st != 2 || pol != 3 {
		t.Fatalf("after the first SA's removal: %d states %d policies, want the third's 2 and 3", st, pol)
	}
	ps, err := conc.h.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	ids := d.sas[third.InSPI].ids
	for _, p := range ps {
		if r := policyReqID(&p); r != ids.in && r != ids.out {
			t.Errorf("policy %s %s -> %s has reqid %d, not the third SA's (%d, %d)", p.Dir, p.Src, p.Dst, r, ids.in, ids.out)
		}
	}
	if err := d.Remove(ctx, third.InSPI); err != nil {
		t.Fatal(err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &d.opts); st != 0 || pol != 0 {
		t.Errorf("after all removals: %d states %d policies left", st, pol)
	}
}

func TestKernelForeignPolicyConflict(t *testing.T) {
	requireKernel(t)
	conc, _ := newPair(t)
	d := conc.dataplane(t, nil)
	sa := tunnelSA(0xc5000001, 0x0e000001)
	pols, _ := BuildPolicies(&d.opts, sa, reqIDs{out: 7, in: 7})
	if err := conc.h.XfrmPolicyAdd(pols[0]); err != nil {
		t.Fatal(err)
	}
	err := d.Install(context.Background(), sa)
	if err == nil {
		t.Fatal("Install replaced a foreign policy")
	}
	t.Logf("as expected: %v", err)
	if st, pol, foreign := kernelCounts(t, conc.h, &d.opts); st != 0 || pol != 0 || foreign != 1 {
		t.Errorf("after the failed install: %d states %d policies of ours, %d foreign; want 0 0 1", st, pol, foreign)
	}
}

// TestKernelSPDAndMSS: New sets the SPD hash thresholds and installs the
// MSS clamp table; Close removes the table.
func TestKernelSPDAndMSS(t *testing.T) {
	requireKernel(t)
	conc, _ := newPair(t)
	d := conc.dataplane(t, nil)
	l4, r4, err := getSPDHashThresholds(conc.ns)
	if err != nil {
		t.Fatal(err)
	}
	if l4 != 0 || r4 != 32 {
		t.Errorf("hthresh4 %d %d, want 0 32", l4, r4)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(conc.ns)))
	if err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == MSSTable })
	}
	if !has() {
		t.Fatal("no MSS clamp table")
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: MSSTable}
	chains, _ := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != MSSTable {
			continue
		}
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatal(err)
		}
		n += len(rules)
	}
	if n != 3 {
		t.Errorf("%d MSS rules, want 3", n)
	}
	// A second instance replaces the table rather than failing.
	d2 := conc.dataplane(t, nil)
	d2.Close()
	d.Close()
	if has() {
		t.Error("Close left the MSS clamp table")
	}
}

// TestKernelInstallRate measures installing many per-peer SAs (/32 remote
// selectors, hashed policies) — a kernel fact for docs/architecture.md.
func TestKernelInstallRate(t *testing.T) {
	requireKernel(t)
	n := 500 // ~13-25 s under TCG; IKEFLEET_INSTALL_N overrides
	if v, err := strconv.Atoi(os.Getenv("IKEFLEET_INSTALL_N")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	conc, _ := newPair(t)
	d := conc.dataplane(t, func(o *Options) {
		o.Pools = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")}
	})
	t0 := time.Now()
	for i := 0; i < n; i++ {
		sa := tunnelSA(0xd0000000+uint32(i), 0x0f000000+uint32(i))
		sa.Remote = netip.AddrPortFrom(sa.Remote.Addr(), uint16(10000+i))
		vip := netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)})
		sa.VirtualIP = vip
		sa.RemoteTS = []dataplane.Selector{{Start: vip, End: vip, EndPort: 0xffff}}
		if err := d.Install(ctx, sa); err != nil {
			t.Fatal(err)
		}
	}
	el := time.Since(t0)
	t.Logf("installed %d CHILD SAs (%d states, %d policies, 1 pool route) in %v: %.0f SAs/s",
		n, 2*n, 3*n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	rs, _ := conc.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: d.opts.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if len(rs) != 1 {
		t.Errorf("%d routes for %d peers in one pool, want 1", len(rs), n)
	}
	t0 = time.Now()
	adopted, removed, err := conc.dataplane(t, nil).Reconcile(ctx, nil)
	if err != nil || removed != n || adopted != 0 {
		t.Errorf("Reconcile(nil): adopted %d removed %d err %v", adopted, removed, err)
	}
	t.Logf("reconciled away %d SAs in %v", n, time.Since(t0).Round(time.Millisecond))
	if st, pol, _ := kernelCounts(t, conc.h, &d.opts); st != 0 || pol != 0 {
		t.Errorf("left: %d states %d policies", st, pol)
	}
}

// TestKernelUpdateAddresses: the gateway's NAT rebinds (new port), then it
// moves to a new address (MOBIKE); the SA follows both times in place and
// its counters and sequence numbers carry on.
func TestKernelUpdateAddresses(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	sa := tunnelSA(0xc6000001, 0x06000001)
	sa.ESN = false
	if err := dc.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	gsa := mirror(sa)
	if err := dg.Install(ctx, gsa); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, gw, conc, []byte("before")); err != nil {
		t.Fatal(err)
	}
	// NAT rebinding: the gateway's port becomes 4502.
	gw.espSocket(t, 4502)
	newRemote := netip.AddrPortFrom(sa.Remote.Addr(), 4502)
	if err := dc.UpdateAddresses(ctx, sa.InSPI, sa.Local, newRemote); err != nil {
		t.Fatal(err)
	}
	if err := dg.UpdateAddresses(ctx, gsa.InSPI, newRemote, gsa.Remote); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, gw, conc, []byte("rebound")); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, conc, gw, []byte("rebound back")); err != nil {
		t.Fatal(err)
	}
	c, err := dc.Counter(ctx, sa.InSPI)
	if err != nil {
		t.Fatal(err)
	}
	if c.InPackets < 2 || c.OutPackets < 1 {
		t.Errorf("counters after the port change %+v: want them carried on", c)
	}
	// MOBIKE: the gateway moves to 192.168.100.3.
	dev, _ := gw.h.LinkByName(gw.dev)
	if err := gw.h.AddrAdd(dev, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("192.168.100.3"), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	gw3 := &side{ns: gw.ns, h: gw.h, outer: netip.MustParseAddr("192.168.100.3"), inner: gw.inner, dev: gw.dev}
	gw3.espSocket(t, 4500)
	moved := netip.MustParseAddrPort("192.168.100.3:4500")
	if err := dc.UpdateAddresses(ctx, sa.InSPI, sa.Local, moved); err != nil {
		t.Fatal(err)
	}
	if err := dg.UpdateAddresses(ctx, gsa.InSPI, moved, gsa.Remote); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, gw, conc, []byte("moved")); err != nil {
		t.Fatal(err)
	}
	if err := udpThrough(t, conc, gw, []byte("moved back")); err != nil {
		t.Fatal(err)
	}
	c2, err := dc.Counter(ctx, sa.InSPI)
	if err != nil {
		t.Fatal(err)
	}
	if c2.InPackets <= c.InPackets || c2.OutPackets <= c.OutPackets {
		t.Errorf("counters after the move %+v (before %+v): the states must carry them over", c2, c)
	}
	list, _ := dc.List(ctx)
	if len(list) != 1 || list[0].Remote != moved {
		t.Errorf("List after the move: %+v", list)
	}
	// An ESN SA moves with its 64-bit numbers and replay window; the
	// outbound number jumps ahead by moveSeqSlack.
	esn := tunnelSA(0xc6000002, 0x06000002)
	esn.RemoteTS = []dataplane.Selector{sel("10.22.0.0", "10.22.0.255")}
	esn.OutSeq, esn.InSeqLow = 5<<32+7, 3<<32+9
	if err := dc.Install(ctx, esn); err != nil {
		t.Fatal(err)
	}
	if err := dc.UpdateAddresses(ctx, esn.InSPI, esn.Local, moved); err != nil {
		t.Fatalf("moving an ESN SA: %v", err)
	}
	out, _ := replayOf(t, dc, esn.InSPI, false)
	in, _ := replayOf(t, dc, esn.InSPI, true)
	if !out.ESN || out.OSeq != esn.OutSeq+moveSeqSlack || in.Seq != esn.InSeqLow || !seen(in, esn.InSeqLow) || !seen(in, esn.InSeqLow-5) {
		t.Errorf("moved ESN SA: out %+v in %+v", out, in)
	}
}

// TestKernelMSSClamp: a TCP connection from the gateway's LAN through the
// tunnel to a host behind the concentrator. The concentrator forwards it,
// and its nftables clamp lowers the MSS of the SYN (from the tunnel, to
// dataplane.xfrm.mss) and of the SYN-ACK (into the tunnel, to the bundle's
// MTU). Both ends see the clamped MSS; without the clamp they see 1460.
func TestKernelMSSClamp(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	const mss = 1300
	dc := conc.dataplane(t, func(o *Options) { o.MSS = mss })
	dg := gw.dataplane(t, func(o *Options) { o.MSSClamp = false })
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	sa := tunnelSA(0xc7000001, 0x07000001)
	if err := dc.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if err := dg.Install(ctx, mirror(sa)); err != nil {
		t.Fatal(err)
	}

	// A core host 10.30.0.5 behind the concentrator (10.30.0.254).
	core := &side{ns: newNS(t), inner: netip.MustParseAddr("10.30.0.5"), dev: "core1"}
	h, err := netlink.NewHandleAt(core.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	core.h = h
	if err := conc.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "core0"}, PeerName: "core1", PeerNamespace: netlink.NsFd(core.ns)}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		h    *netlink.Handle
		dev  string
		addr string
	}{{conc.h, "core0", "10.30.0.254"}, {core.h, "core1", "10.30.0.5"}, {core.h, "lo", ""}} {
		l, err := c.h.LinkByName(c.dev)
		if err != nil {
			t.Fatal(err)
		}
		if c.addr != "" {
			if err := c.h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(c.addr), Mask: net.CIDRMask(24, 32)}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := core.h.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.30.0.254")}); err != nil {
		t.Fatal(err)
	}
	if err := inNS(t, conc.ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}

	maxseg := func(c net.Conn) int {
		rc, _ := c.(*net.TCPConn).SyscallConn()
		var v int
		var serr error
		_ = rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
		if serr != nil {
			t.Fatal(serr)
		}
		return v
	}
	var ln net.Listener
	if err := inNS(t, core.ns, func() (err error) {
		ln, err = net.Listen("tcp4", "10.30.0.5:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- -1
			return
		}
		defer c.Close()
		accepted <- maxseg(c)
	}()
	var cl net.Conn
	if err := inNS(t, gw.ns, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ipOf(gw.inner)}}
		cl, err = d.Dial("tcp4", "10.30.0.5:8080")
		return err
	}); err != nil {
		t.Fatalf("TCP through the tunnel: %v", err)
	}
	defer cl.Close()
	srv := <-accepted
	cli := maxseg(cl)
	t.Logf("TCP_MAXSEG: core host %d (SYN from the tunnel, clamp %d), gateway %d (SYN-ACK into the tunnel, rt mtu)", srv, mss, cli)
	// TCP_MAXSEG is the MSS less options (timestamps: 12 bytes).
	if srv > mss || srv < mss-40 {
		t.Errorf("core host MSS %d: the SYN from the tunnel was not clamped to %d", srv, mss)
	}
	if cli >= 1448 || cli < 1300 {
		t.Errorf("gateway MSS %d: the SYN-ACK into the tunnel was not clamped to the bundle MTU", cli)
	}
}

// TestKernelExpiries: an SA with a soft limit of 5 and a hard limit of 10
// packets. Traffic out of the concentrator expires its outbound state
// (soft, then hard: the kernel deletes it), traffic in expires the inbound
// state; every expiry reaches Expiries under the pair's inbound SPI, and
// Close closes the channel.
func TestKernelExpiries(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc := conc.dataplane(t, func(o *Options) { o.PacketSoftLimit, o.PacketHardLimit = 5, 10 })
	dg := gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	sa := tunnelSA(0xc7000001, 0x0e000001)
	sa.ESN = false
	if err := dc.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if err := dg.Install(ctx, mirror(sa)); err != nil {
		t.Fatal(err)
	}
	// A foreign state's expiry is not ours to report: this one expires
	// hard after a second, while the test runs.
	foreign := &netlink.XfrmState{
		Src: ipOf(conc.outer), Dst: ipOf(netip.MustParseAddr("192.168.100.9")), Proto: netlink.XFRM_PROTO_ESP,
		Mode: netlink.XFRM_MODE_TUNNEL, Spi: 0x0e0000ff, Reqid: 7,
		Aead:   &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: keyOf(20, 9), ICVLen: 128},
		Limits: netlink.XfrmStateLimits{TimeHard: 1},
	}
	if err := conc.h.XfrmStateAdd(foreign); err != nil {
		t.Fatal(err)
	}
	defer conc.h.XfrmStateDel(foreign)

	// send sends n datagrams from src's inner address to dst's and counts
	// those that arrive.
	send := func(src, dst *side, n int) int {
		t.Helper()
		var rc, sc *net.UDPConn
		if err := inNS(t, dst.ns, func() (err error) {
			rc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipOf(dst.inner)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if err := inNS(t, src.ns, func() (err error) {
			sc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipOf(src.inner)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		got := 0
		buf := make([]byte, 2048)
		for i := 0; i < n; i++ {
			_, _ = sc.WriteToUDP([]byte(fmt.Sprintf("datagram %d", i)), rc.LocalAddr().(*net.UDPAddr))
			_ = rc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, _, err := rc.ReadFromUDP(buf); err == nil {
				got++
			}
		}
		return got
	}
	next := func(what string) dataplane.Expiry {
		t.Helper()
		select {
		case e, ok := <-dc.Expiries():
			if !ok {
				t.Fatalf("%s: Expiries closed", what)
			}
			t.Logf("%s: %+v", what, e)
			return e
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no expiry within 5 s", what)
		}
		return dataplane.Expiry{}
	}
	check := func(what string, e dataplane.Expiry, hard bool) {
		t.Helper()
		if e.InSPI != sa.InSPI || e.Hard != hard || e.Reason != "packet limit" {
			t.Errorf("%s: %+v, want InSPI %08x hard=%v reason packet limit", what, e, sa.InSPI, hard)
		}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case e := <-dc.Expiries():
			t.Errorf("%s: unexpected expiry %+v", what, e)
		case <-time.After(300 * time.Millisecond):
		}
	}

	// Outbound: 10 packets pass (the soft expiry at the 6th), the 11th
	// hits the hard limit and the kernel deletes the state.
	if got := send(conc, gw, 3); got != 3 {
		t.Fatalf("%d of 3 datagrams through the tunnel", got)
	}
	quiet("below the soft limit")
	got := send(conc, gw, 12)
	check("outbound soft", next("outbound soft"), false)
	check("outbound hard", next("outbound hard"), true)
	t.Logf("outbound: %d+3 datagrams of 15 arrived", got)
	if got+3 != 10 {
		t.Errorf("%d datagrams went out, want 10 (the hard packet limit)", got+3)
	}
	quiet("after the outbound hard expiry")
	if _, err := conc.h.XfrmStateGet(&netlink.XfrmState{Dst: ipOf(gw.outer), Proto: netlink.XFRM_PROTO_ESP, Spi: int(sa.OutSPI)}); err == nil {
		t.Error("the outbound state outlived its hard expiry")
	}

	// Inbound: the gateway's traffic expires our inbound state the same way.
	got = send(gw, conc, 15)
	check("inbound soft", next("inbound soft"), false)
	check("inbound hard", next("inbound hard"), true)
	t.Logf("inbound: %d datagrams of 15 arrived", got)
	if got != 10 {
		t.Errorf("%d datagrams came in, want 10 (the hard packet limit)", got)
	}
	if d, o := dc.ExpiriesDropped(); d != 0 || o != 0 {
		t.Errorf("dropped %d, overruns %d", d, o)
	}
	// The data plane still removes what is left of the SA.
	if err := dc.Remove(ctx, sa.InSPI); err != nil {
		t.Fatal(err)
	}
	if st, pol, _ := kernelCounts(t, conc.h, &dc.opts); st != 0 || pol != 0 {
		t.Errorf("after Remove: %d states %d policies of ours", st, pol)
	}
	if err := dc.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case e, ok := <-dc.Expiries():
		if ok {
			t.Errorf("after Close: expiry %+v", e)
		}
	case <-time.After(time.Second):
		t.Error("Close did not close the Expiries channel")
	}
}

// sendDatagrams sends n datagrams from src's inner address to dst's, one
// at a time, and counts those that arrive (waiting up to 200 ms for each).
func sendDatagrams(t *testing.T, src, dst *side, n int) int {
	t.Helper()
	var rc, sc *net.UDPConn
	if err := inNS(t, dst.ns, func() (err error) {
		rc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipOf(dst.inner)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := inNS(t, src.ns, func() (err error) {
		sc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipOf(src.inner)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	got := 0
	buf := make([]byte, 2048)
	for i := 0; i < n; i++ {
		if _, err := sc.WriteToUDP([]byte(fmt.Sprintf("datagram %d", i)), rc.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		_ = rc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := rc.ReadFromUDP(buf); err == nil {
			got++
		}
	}
	return got
}

// replayOf reads the replay state of one of d's states (XFRM_MSG_GETAE).
func replayOf(t *testing.T, d *DataPlane, inSPI uint32, inbound bool) (Replay, uint32) {
	t.Helper()
	d.mu.Lock()
	e := d.sas[inSPI]
	d.mu.Unlock()
	if e == nil {
		t.Fatalf("no SA %08x", inSPI)
	}
	in, out, err := BuildStates(&d.opts, e.sa, e.ids)
	if err != nil {
		t.Fatal(err)
	}
	st := out
	if inbound {
		st = in
	}
	ev, err := d.raw.getAE(idOf(st))
	if err != nil {
		t.Fatalf("GETAE spi %08x: %v", uint32(st.Spi), err)
	}
	return ev.Replay, ev.Thresh
}

// seen reports whether an inbound replay state holds seq as received
// (legacy: bit top-seq; ESN: bit (seq-1) mod window of the ring).
func seen(r Replay, seq uint64) bool {
	if seq > r.Seq {
		return false
	}
	if !r.ESN {
		d := r.Seq - seq
		return d < 32 && r.Bitmap[0]&(1<<d) != 0
	}
	if r.Seq-seq >= uint64(r.Window) {
		return false
	}
	bit := (uint32(seq) - 1) % r.Window
	return r.Bitmap[bit/32]&(1<<(bit%32)) != 0
}

// TestKernelSeqStart: a CHILD SA installed with OutSeq=N continues at
// N+1: the concentrator's outbound state reads back oseq = N+sent, and
// the gateway's inbound state (restored at InSeqLow = N-5, every bit set)
// has received exactly N+1..N+sent and none of N-4..N: the first packet
// carried N+1. With ESN the numbers are 64-bit (high word 5).
func TestKernelSeqStart(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	for i, c := range []struct {
		name  string
		esn   bool
		start uint64
	}{{"legacy", false, 1000}, {"esn", true, 5<<32 + 1000}} {
		t.Run(c.name, func(t *testing.T) {
			sa := tunnelSA(0xc8000001+uint32(i), 0x08000001+uint32(i))
			sa.ESN, sa.OutSeq = c.esn, c.start
			gsa := mirror(sa)
			gsa.InSeqLow, gsa.OutSeq = c.start-5, 0
			if err := dc.Install(ctx, sa); err != nil {
				t.Fatal(err)
			}
			defer dc.Remove(ctx, sa.InSPI)
			if err := dg.Install(ctx, gsa); err != nil {
				t.Fatal(err)
			}
			defer dg.Remove(ctx, gsa.InSPI)
			if r, _ := replayOf(t, dc, sa.InSPI, false); r.OSeq != c.start || r.ESN != c.esn {
				t.Fatalf("installed outbound replay state %+v, want oseq %d", r, c.start)
			}
			const n = 4
			if got := sendDatagrams(t, conc, gw, n); got != n {
				t.Fatalf("%d of %d datagrams arrived", got, n)
			}
			out, _ := replayOf(t, dc, sa.InSPI, false)
			in, _ := replayOf(t, dg, gsa.InSPI, true)
			t.Logf("conc oseq %#x; gw seq %#x bitmap %x", out.OSeq, in.Seq, in.Bitmap)
			if out.OSeq != c.start+n {
				t.Errorf("oseq %d after %d packets, want %d", out.OSeq, n, c.start+n)
			}
			if in.Seq != c.start+n {
				t.Errorf("gateway received up to %d, want %d", in.Seq, c.start+n)
			}
			for s := c.start + 1; s <= c.start+n; s++ {
				if !seen(in, s) {
					t.Errorf("number %d not received", s)
				}
			}
			for s := c.start - 4; s <= c.start; s++ {
				if seen(in, s) {
					t.Errorf("number %d (<= OutSeq) was received: the SA reused it", s)
				}
			}
			if !seen(in, c.start-5) {
				t.Error("InSeqLow itself is not marked as received")
			}
		})
	}
}

// TestKernelInSeqLow: an inbound state restored at InSeqLow = L refuses
// the peer's numbers L-1 and L (replays: the kernel counts them) and
// accepts L+1 on, with and without ESN.
func TestKernelInSeqLow(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	for i, c := range []struct {
		name string
		esn  bool
		low  uint64
	}{{"legacy", false, 70000}, {"esn", true, 3<<32 + 64}} {
		t.Run(c.name, func(t *testing.T) {
			sa := tunnelSA(0xc9000001+uint32(i), 0x09000001+uint32(i))
			sa.ESN, sa.InSeqLow = c.esn, c.low
			gsa := mirror(sa)
			gsa.OutSeq = c.low - 2 // it sends L-1, L, L+1, ...
			if err := dc.Install(ctx, sa); err != nil {
				t.Fatal(err)
			}
			defer dc.Remove(ctx, sa.InSPI)
			if err := dg.Install(ctx, gsa); err != nil {
				t.Fatal(err)
			}
			defer dg.Remove(ctx, gsa.InSPI)
			if got := sendDatagrams(t, gw, conc, 5); got != 3 {
				t.Errorf("%d of 5 datagrams arrived, want 3 (L-1 and L refused)", got)
			}
			in, _ := replayOf(t, dc, sa.InSPI, true)
			if in.Seq != c.low+3 {
				t.Errorf("received up to %d, want %d", in.Seq, c.low+3)
			}
			st, err := conc.h.XfrmStateGet(&netlink.XfrmState{Dst: ipOf(conc.outer), Proto: netlink.XFRM_PROTO_ESP, Spi: int(sa.InSPI)})
			if err != nil {
				t.Fatal(err)
			}
			if st.Statistics.Replay != 2 {
				t.Errorf("kernel replay counter %d, want 2", st.Statistics.Replay)
			}
		})
	}
}

// TestKernelSeqProgress: the kernel's async events become SeqProgress
// reports, each exactly at its threshold: outbound at limit-margin (once
// per limit; SetSeqLimit re-arms), inbound every 2*margin; a kernel that
// passes the limit is counted. One event per report: the cost is counted.
func TestKernelSeqProgress(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	conc, gw := newPair(t)
	dc, dg := conc.dataplane(t, nil), gw.dataplane(t, nil)
	conc.espSocket(t, 4500)
	gw.espSocket(t, 4501)
	for i, esn := range []bool{false, true} {
		t.Run(fmt.Sprintf("esn=%v", esn), func(t *testing.T) {
			before := dc.SeqStats()
			sa := tunnelSA(0xca000001+uint32(i), 0x0a000001+uint32(i))
			start := uint64(100)
			if esn {
				start = 1<<32 - 50 // the reports cross into the second 2^32
			}
			// Grant 64, margin 16: the effective margin is 32, so the
			// outbound report comes at start+32 and inbound every 64.
			sa.ESN, sa.OutSeq, sa.OutSeqLimit, sa.OutSeqMargin = esn, start, start+64, 16
			gsa := mirror(sa)
			gsa.InSeqLow, gsa.OutSeq, gsa.OutSeqLimit, gsa.OutSeqMargin = start-1, 0, 0, 0 // the gateway reports nothing
			if err := dc.Install(ctx, sa); err != nil {
				t.Fatal(err)
			}
			defer dc.Remove(ctx, sa.InSPI)
			if err := dg.Install(ctx, gsa); err != nil {
				t.Fatal(err)
			}
			defer dg.Remove(ctx, gsa.InSPI)
			next := func(what string) dataplane.SeqProgress {
				t.Helper()
				select {
				case p := <-dc.SeqProgress():
					t.Logf("%s: %+v", what, p)
					return p
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: no report within 5 s", what)
				}
				return dataplane.SeqProgress{}
			}
			none := func(what string) {
				t.Helper()
				select {
				case p := <-dc.SeqProgress():
					t.Errorf("%s: unexpected report %+v", what, p)
				case <-time.After(200 * time.Millisecond):
				}
			}
			if got := sendDatagrams(t, conc, gw, 31); got != 31 {
				t.Fatalf("%d of 31 arrived", got)
			}
			none("below the threshold")
			sendDatagrams(t, conc, gw, 10)
			if p := next("outbound"); p.InSPI != sa.InSPI || p.OutSeq != start+32 {
				t.Errorf("outbound report %+v, want OutSeq %d", p, start+32)
			}
			none("once per limit")
			// Answered with OutSeq+block: the next report block/2 later.
			if err := dc.SetSeqLimit(ctx, sa.InSPI, start+32+64); err != nil {
				t.Fatal(err)
			}
			sendDatagrams(t, conc, gw, 30) // up to start+71
			if p := next("outbound after SetSeqLimit"); p.OutSeq != start+64 {
				t.Errorf("report %+v, want OutSeq %d", p, start+64)
			}
			// Inbound: the gateway sends 1, 2, ... (our InSeqLow is 0).
			sendDatagrams(t, gw, conc, 70)
			p := next("inbound")
			if p.InSeq != 64 || p.OutSeq != start+71 {
				t.Errorf("inbound report %+v, want InSeq 64 OutSeq %d", p, start+71)
			}
			// The cost so far: one event per report, one GETAE per report
			// (the other direction's number), no NEWAE (SetSeqLimit kept
			// the threshold: block/2 from the reported number).
			if st := dc.SeqStats(); st.Events-before.Events != 3 || st.Reports-before.Reports != 3 ||
				st.GetAE-before.GetAE != 3 || st.SetAE != before.SetAE {
				t.Errorf("after three reports: %+v (before %+v), want 3 events, 3 GETAE, no NEWAE", st, before)
			}
			// Nobody raises the limit (start+96): the kernel reaches it
			// (an event: the threshold kept after the second report) and
			// the reader sets the threshold to the next packet. Every
			// step waits for the reader's NEWAE to be answered (SetAE
			// counts answered round trips), so the count of events is
			// exact: a packet sent while the reader is still busy would
			// otherwise make an event more, and a slow machine could
			// send one or two of those.
			waitStats := func(what string, ok func(SeqStats) bool) SeqStats {
				t.Helper()
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					st := dc.SeqStats()
					if ok(st) {
						return st
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: stats %+v", what, st)
					}
				}
			}
			sendDatagrams(t, conc, gw, 25) // up to start+96, the limit
			waitStats("limit reached", func(st SeqStats) bool { return st.SetAE == before.SetAE+1 })
			// One packet past the limit: an event, counted, and the
			// reader turns the threshold off.
			sendDatagrams(t, conc, gw, 1)
			waitStats("limit passed", func(st SeqStats) bool {
				return st.OverLimit > before.OverLimit && st.SetAE == before.SetAE+2
			})
			sendDatagrams(t, conc, gw, 2) // no threshold: no event
			none("past the limit")
			st := dc.SeqStats()
			t.Logf("stats %+v (before %+v)", st, before)
			if st.OverLimit-before.OverLimit != 1 || st.SetAE-before.SetAE != 2 {
				t.Errorf("OverLimit %d, NEWAE %d; want 1 and 2", st.OverLimit-before.OverLimit, st.SetAE-before.SetAE)
			}
			// Two more events: reaching and passing the limit.
			if ev := st.Events - before.Events; ev != 5 || st.Reports-before.Reports != 3 {
				t.Errorf("%d events, %d reports; want 5 and 3", ev, st.Reports-before.Reports)
			}
			if st.Foreign != 0 || st.Dropped != 0 || st.Overruns != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// BenchmarkKernelSeqPoll measures what polling for sequence number
// progress would cost instead of async events, at n CHILD SAs
// (IKEFLEET_POLL_N, default 500): "getae" is one poll of every SA with
// XFRM_MSG_GETAE (two round trips per SA), "dump" one XFRM_MSG_GETSA dump
// of every state (what the netlink library offers; it carries the keys
// too). The event path costs one GETAE per report and nothing per idle SA.
// Run in the VM: run-in-vm.sh DIR ./xfrm.test -test.run '^$' -test.bench SeqPoll.
func BenchmarkKernelSeqPoll(b *testing.B) {
	n := 500
	if v, err := strconv.Atoi(os.Getenv("IKEFLEET_POLL_N")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	d := benchDataPlane(b)
	var ids []stateID
	for i := 0; i < n; i++ {
		sa := tunnelSA(0xd1000000+uint32(i), 0x0f100000+uint32(i))
		sa.Remote = netip.AddrPortFrom(sa.Remote.Addr(), uint16(10000+i))
		vip := netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)})
		sa.VirtualIP, sa.RemoteTS = vip, []dataplane.Selector{{Start: vip, End: vip, EndPort: 0xffff}}
		if err := d.Install(ctx, sa); err != nil {
			b.Fatal(err)
		}
		in, out, _ := BuildStates(&d.opts, sa, d.sas[sa.InSPI].ids)
		ids = append(ids, idOf(in), idOf(out))
	}
	b.Run("getae", func(b *testing.B) {
		for b.Loop() {
			for _, id := range ids {
				if _, err := d.raw.getAE(id); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/SA")
	})
	b.Run("dump", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.states(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/SA")
	})
}

func newBenchNS(b *testing.B) netns.NsHandle {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		b.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Close() })
	return ns
}
