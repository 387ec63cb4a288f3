package xfrm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// policyString prints what a policy says to the kernel.
func policyString(p netlink.XfrmPolicy) string {
	s := fmt.Sprintf("%s -> %s proto %d ports %d/%d dir %d prio %d action %d", p.Src, p.Dst, p.Proto, p.SrcPort, p.DstPort, p.Dir, p.Priority, p.Action)
	for _, t := range p.Tmpls {
		s += fmt.Sprintf(" tmpl %s->%s proto %d mode %d reqid %d spi %d", t.Src, t.Dst, t.Proto, t.Mode, t.Reqid, t.Spi)
	}
	if p.Mark != nil {
		s += fmt.Sprintf(" mark %#x/%#x", p.Mark.Value, p.Mark.Mask)
	}
	return s + fmt.Sprintf(" ifid %d", p.Ifid)
}

// A batched policy says what the policy says: the message policyRequest
// builds, read back by the parser of the kernel's policy dumps, is the
// policy again (IPv4 and IPv6 selectors, ports, mark, interface ID).
func TestPolicyRequestParsesBack(t *testing.T) {
	o := testOpts()
	sa := testSA()
	sa.RemoteTS = append(sa.RemoteTS, dataplane.Selector{Start: netip.MustParseAddr("10.21.0.7"), End: netip.MustParseAddr("10.21.0.7"),
		IPProto: 17, StartPort: 53, EndPort: 53})
	sa.LocalTS = append(sa.LocalTS, sel("fd00:30::", "fd00:30::ffff"))
	sa.RemoteTS = append(sa.RemoteTS, sel("fd00:20::", "fd00:20::ffff"))
	pols, err := BuildPolicies(o, sa, o.reqIDsForSlot(3))
	if err != nil {
		t.Fatal(err)
	}
	pols = append(pols, &netlink.XfrmPolicy{Src: pols[0].Src, Dst: pols[0].Dst, Dir: netlink.XFRM_DIR_OUT, Priority: 7,
		Mark: &netlink.XfrmMark{Value: 0x42, Mask: 0xff}, Ifid: 9, Tmpls: pols[0].Tmpls})
	v6 := 0
	for _, p := range pols {
		b := policyRequest(p).Serialize()
		if len(b) < unix.SizeofNlMsghdr {
			t.Fatalf("short message %x", b)
		}
		hdr := nl.NativeEndian()
		if typ, flags := hdr.Uint16(b[4:6]), hdr.Uint16(b[6:8]); typ != nl.XFRM_MSG_NEWPOLICY || flags != unix.NLM_F_REQUEST|unix.NLM_F_CREATE|unix.NLM_F_EXCL {
			t.Errorf("header type %d flags %#x", typ, flags)
		}
		if n := hdr.Uint32(b[0:4]); int(n) != len(b) {
			t.Errorf("nlmsg_len %d, message %d bytes", n, len(b))
		}
		got, err := parsePolicy(b[unix.SizeofNlMsghdr:])
		if err != nil {
			t.Fatal(err)
		}
		if p.Mark != nil {
			// What the library sends too: a mask of 0 would mean all ones.
			if got.Mark == nil || *got.Mark != *p.Mark {
				t.Errorf("mark %v, want %v", got.Mark, p.Mark)
			}
		}
		if policyString(got) != policyString(*p) {
			t.Errorf("policy read back:\n got %s\nwant %s", policyString(got), policyString(*p))
		}
		if p.Dst.IP.To4() == nil {
			v6++
		}
	}
	if v6 == 0 {
		t.Fatal("no IPv6 policy built")
	}
}

// In the kernel, each message of a batch has its own outcome: a policy
// whose selector is taken fails alone (EEXIST) while the ones after it
// are added; a batch whose last message fails says so too. Policies need
// XFRM but not ESP: this runs on the build hosts too (root).
func TestBatchOutcomesPerMessage(t *testing.T) {
	requireRoot(t)
	ns := newNS(t)
	raw, err := newRawXfrm(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.close()
	o := testOpts()
	pols, err := BuildPolicies(o, testSA(), o.reqIDsForSlot(1))
	if err != nil {
		t.Fatal(err)
	}
	reqs := []*nl.NetlinkRequest{policyRequest(pols[0]), policyRequest(pols[0]), policyRequest(pols[1])}
	errs := answerErrs(raw.batch(reqs))
	if errs[0] != nil || !errors.Is(errs[1], syscall.EEXIST) || errs[2] != nil {
		t.Fatalf("batch outcomes %v, want [nil EEXIST nil]", errs)
	}
	got, err := raw.policies()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d policies in the kernel, want 2", len(got))
	}
	errs = answerErrs(raw.batch([]*nl.NetlinkRequest{policyRequest(pols[2]), policyRequest(pols[1])}))
	if errs[0] != nil || !errors.Is(errs[1], syscall.EEXIST) {
		t.Fatalf("batch outcomes %v, want [nil EEXIST]", errs)
	}
	// The socket holds no answer of these batches: a request after them
	// reads its own.
	if got, err := raw.policies(); err != nil || len(got) != 3 {
		t.Fatalf("policies: %d, %v; want 3", len(got), err)
	}
	// Gets answer with the object (or that it is gone) in the same batch
	// as a delete.
	missing := *pols[0]
	missing.Dst = &net.IPNet{IP: net.IPv4(10, 99, 0, 0), Mask: net.CIDRMask(24, 32)}
	ans := raw.batch([]*nl.NetlinkRequest{policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[0]),
		policyIDRequest(nl.XFRM_MSG_GETPOLICY, &missing), policyIDRequest(nl.XFRM_MSG_DELPOLICY, pols[1])})
	if ans[0].err != nil || !isGone(ans[1].err) || ans[1].data != nil || ans[2].err != nil || ans[2].data != nil {
		t.Fatalf("get, get of a missing policy, delete: %+v", ans)
	}
	if cur, err := parsePolicy(ans[0].data); err != nil || policyString(cur) != policyString(*pols[0]) {
		t.Fatalf("the get's answer: %v, %v; want %s", policyString(cur), err, policyString(*pols[0]))
	}
	if got, err := raw.policies(); err != nil || len(got) != 2 {
		t.Fatalf("policies after the delete: %d, %v; want 2", len(got), err)
	}
	// A batch whose sequence numbers wrap around is answered as well.
	raw.sh.Seq = ^uint32(0) - 1
	for i, a := range raw.batch([]*nl.NetlinkRequest{policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[0]),
		policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[2]), policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[0]),
		policyIDRequest(nl.XFRM_MSG_GETPOLICY, pols[2])}) {
		if a.err != nil || a.data == nil {
			t.Fatalf("get %d across the wrap: %v", i, a.err)
		}
	}
	// More than a datagram's worth: every request is answered.
	var many []*netlink.XfrmPolicy
	for i := range 3*maxBatch + 5 {
		p := *pols[0]
		p.Dst = &net.IPNet{IP: net.IPv4(10, 98, byte(i>>8), byte(i)), Mask: net.CIDRMask(32, 32)}
		many = append(many, &p)
	}
	var adds, gets []*nl.NetlinkRequest
	for _, p := range many {
		adds = append(adds, policyRequest(p))
		gets = append(gets, policyIDRequest(nl.XFRM_MSG_GETPOLICY, p))
	}
	for i, a := range raw.batch(adds) {
		if a.err != nil {
			t.Fatalf("add %d of %d: %v", i, len(adds), a.err)
		}
	}
	for i, a := range raw.batch(gets) {
		cur, err := parsePolicy(a.data)
		if a.err != nil || err != nil || policyString(cur) != policyString(*many[i]) {
			t.Fatalf("get %d of %d: %v, %v, %s", i, len(gets), a.err, err, policyString(cur))
		}
	}
	// A datagram whose answers overflow the socket: each request has its
	// answer or an error saying that answers were lost, and the next
	// batch finds the socket empty.
	var flood []*nl.NetlinkRequest
	for range 8 {
		for _, p := range many {
			flood = append(flood, policyIDRequest(nl.XFRM_MSG_GETPOLICY, p))
		}
	}
	ans = make([]answer, len(flood))
	raw.datagram(flood, ans)
	answered, lost := 0, 0
	for i, a := range ans {
		switch {
		case a.err == nil && a.data != nil:
			answered++
		case errors.Is(a.err, syscall.ENOBUFS):
			lost++
		default:
			t.Fatalf("request %d of %d: %v, %d bytes", i, len(flood), a.err, len(a.data))
		}
	}
	if lost == 0 {
		t.Fatalf("%d gets in one datagram, all answered: no overflow to test", len(flood))
	}
	t.Logf("%d gets in one datagram: %d answered, %d lost", len(flood), answered, lost)
	for i, a := range raw.batch(gets) {
		if a.err != nil || a.data == nil {
			t.Fatalf("after the overflow, get %d of %d: %v", i, len(gets), a.err)
		}
	}
}

func answerErrs(ans []answer) []error {
	errs := make([]error, len(ans))
	for i, a := range ans {
		errs[i] = a.err
	}
	return errs
}
