//go:build linux

package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// flushConntrack deletes every connection tracking entry in namespace ns
// (ctnetlink IPCTNL_MSG_CT_DELETE without attributes), as `conntrack -F`
// does: the NAT forgets its mappings.
func flushConntrack(ns string) error {
	return InNetns(ns, func() error {
		fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, 12 /* NETLINK_NETFILTER */)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
			return err
		}
		msg := make([]byte, 16+4)
		binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
		binary.NativeEndian.PutUint16(msg[4:], 1<<8|2) // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
		binary.NativeEndian.PutUint16(msg[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK)
		binary.NativeEndian.PutUint32(msg[8:], 1)
		msg[16] = syscall.AF_INET // nfgenmsg: family, version 0, res_id 0
		if err := syscall.Sendto(fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		if n >= 20 && binary.NativeEndian.Uint16(buf[4:]) == syscall.NLMSG_ERROR {
			if e := int32(binary.NativeEndian.Uint32(buf[16:])); e != 0 {
				return fmt.Errorf("conntrack flush: %v", syscall.Errno(-e))
			}
		}
		return nil
	})
}

// TestNATMappingChange: strongSwan gw1 behind the nftables NAT, user-space
// data plane. Mid-traffic the NAT's masquerade moves to another port range
// and its conntrack table is flushed: the gateway's ESP comes from a new
// port, the data plane reports it, concentratord checks the new address
// with an INFORMATIONAL and moves the SA when gw1 answers. Pings both ways
// resume; the time they took is reported (not asserted). strongSwan's own
// liveness checks are set beyond the test so that only this path can
// move the SA.
func TestNATMappingChange(t *testing.T) {
	requireNetns(t)
	natRemapping(t, userspaceConfig(t, ESPProp), "userspace", "", "")
}

// TestNATAddressChange is TestNATMappingChange with a NAT that re-maps
// the gateway to another public address as well as another port (a
// carrier NAT pool): the SA moves to the new address.
func TestNATAddressChange(t *testing.T) {
	requireNetns(t)
	natRemapping(t, userspaceConfig(t, ESPProp), "userspace", "", NATSecondAddr)
}

// TestKernelNATMappingChange is TestNATMappingChange with the kernel data
// plane (VM tier): strongSwan with kernel ESP, concentratord with
// dataplane.mode xfrm. The kernel reports ESP-in-UDP from the new port
// (XFRM_MSG_MAPPING), concentratord checks the new address and moves the
// SA: its outbound state's encapsulation then names the new port.
func TestKernelNATMappingChange(t *testing.T) {
	requireKernelESP(t)
	tp := natRemapping(t, xfrmConfig(t), "xfrm", KernelCharonPlugins, "")
	checkKernelRemapped(t, tp, NATPublicAddr)
}

// TestKernelNATAddressChange is TestNATAddressChange with the kernel data
// plane (VM tier): the kernel reports the new address and port, and the
// concentrator re-adds its states (their IDs hold the addresses) and
// re-points its policies' templates at the NAT's new address.
func TestKernelNATAddressChange(t *testing.T) {
	requireKernelESP(t)
	tp := natRemapping(t, xfrmConfig(t), "xfrm", KernelCharonPlugins, NATSecondAddr)
	checkKernelRemapped(t, tp, NATSecondAddr)
}

// checkKernelRemapped checks the concentrator's xfrm states and policies
// after a re-mapping: the outbound state sends to the NAT's new port at
// peer, the inbound state expects it (else the kernel reports every
// packet), and the policies' templates name peer.
func checkKernelRemapped(t *testing.T, tp *Topology, peer string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "state")
	if err != nil {
		t.Fatal(err)
	}
	ports := xfrmEncapPortRE.FindAllStringSubmatch(out, -1)
	if len(ports) != 2 {
		t.Fatalf("conc: %d encapsulated states, want 2:\n%s", len(ports), out)
	}
	for _, p := range ports {
		// One of the ports is ours (4500), the other the NAT's, now
		// from the new masquerade range.
		a, _ := strconv.Atoi(p[1])
		b, _ := strconv.Atoi(p[2])
		if min(a, b) != 4500 || max(a, b) < natRemapLow || max(a, b) > natRemapHigh {
			t.Errorf("conc: state with encap sport %s dport %s: want 4500 and a port of the NAT's new range %d-%d\n%s",
				p[1], p[2], natRemapLow, natRemapHigh, out)
		}
	}
	for _, want := range []string{"src " + ConcAddr + " dst " + peer, "src " + peer + " dst " + ConcAddr} {
		if !strings.Contains(out, want) {
			t.Errorf("conc: no state %q:\n%s", want, out)
		}
	}
	pol, err := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "policy")
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []string{NATPublicAddr, NATSecondAddr} {
		if other != peer && strings.Contains(out+pol, " "+other+" ") {
			t.Errorf("conc: states or policies still name %s after the move to %s:\n%s\n%s", other, peer, out, pol)
		}
	}
	if !strings.Contains(pol, "dst "+peer) || !strings.Contains(pol, "src "+peer) {
		t.Errorf("conc: policy templates do not name %s:\n%s", peer, pol)
	}
}

var xfrmEncapPortRE = regexp.MustCompile(`encap type espinudp sport (\d+) dport (\d+)`)

// The NAT's masquerade port range after the re-mapping.
const natRemapLow, natRemapHigh = 20000, 20999

// NATSecondAddr is the NAT's second public address (its pool's next one),
// for a re-mapping that changes the address too.
const NATSecondAddr = "192.168.100.3"

// natRemapping brings up gw1 (strongSwan with the given charon plugins, ""
// for the default) to concentratord with cfg (data plane mode), re-maps
// the NAT mid-ping and waits for pings to resume both ways. With newAddr
// the NAT maps UDP to that public address from then on, else to its own.
func natRemapping(t *testing.T, cfg, mode, plugins, newAddr string) *Topology {
	t.Helper()
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	cfgFile := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfgFile, []byte(cfg))
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfgFile)
	conc.mustWaitLog(t, ctx, 10*time.Second, "listening", map[string]string{"dataplane": mode})

	gw := NewStrongSwan(t, tp, "gw1", tp.GW)
	if plugins != "" {
		gw.Plugins = plugins
	}
	gwConf := strings.Replace(GatewaySwanctlConf(AuthPSK), "dpd_delay = 30s", "dpd_delay = 600s", 1)
	if gwConf == GatewaySwanctlConf(AuthPSK) {
		t.Fatal("gateway configuration has no dpd_delay = 30s to raise")
	}
	gw.Start(gwConf, nil)
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	both := []struct{ ns, src, dst string }{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}}
	for _, p := range both {
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, 2, 56); err != nil {
			t.Fatalf("before the re-mapping: %v", err)
		}
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := FindIKESA(sas, "conc")
	t.Logf("gw1's IKE SA before: local %s:%s", before.Get("local-host"), before.Get("local-port"))

	// The NAT re-maps: a new port range (and address), its table
	// forgotten.
	udp := "masquerade to :" + strconv.Itoa(natRemapLow) + "-" + strconv.Itoa(natRemapHigh)
	if newAddr != "" {
		if out, err := run(ctx, nil, "ip", "-n", tp.NAT, "addr", "add", newAddr+"/24", "dev", "nat-conc"); err != nil {
			t.Fatalf("NAT's second address: %v\n%s", err, out)
		}
		udp = "snat to " + newAddr + ":" + strconv.Itoa(natRemapLow) + "-" + strconv.Itoa(natRemapHigh)
	}
	rules := `flush chain ip nat postrouting
add rule ip nat postrouting oifname "nat-conc" meta l4proto udp ` + udp + `
add rule ip nat postrouting oifname "nat-conc" masquerade
`
	if out, err := run(ctx, strings.NewReader(rules), "ip", "netns", "exec", tp.NAT, "nft", "-f", "-"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	start := time.Now()
	if err := flushConntrack(tp.NAT); err != nil {
		t.Fatal(err)
	}
	// Pings both ways, one at a time, each given 500 ms, until each
	// direction has had an answer.
	resumed := make([]time.Duration, len(both))
	done := make(chan int, len(both))
	for i, p := range both {
		go func() {
			for ctx.Err() == nil && time.Since(start) < 60*time.Second {
				pctx, pcancel := context.WithTimeout(ctx, 500*time.Millisecond)
				err := tp.Ping(pctx, p.ns, p.src, p.dst, 1, 56)
				pcancel()
				if err == nil {
					resumed[i] = time.Since(start)
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			done <- i
		}()
	}
	for range both {
		<-done
	}
	if resumed[0] == 0 || resumed[1] == 0 {
		t.Fatalf("pings did not resume within 60 s after the re-mapping: gw→conc %v, conc→gw %v\n%s",
			resumed[0], resumed[1], conc.Stderr())
	}
	t.Logf("after the NAT re-mapped gw1: gw→conc pings resumed after %v, conc→gw after %v",
		resumed[0].Round(time.Millisecond), resumed[1].Round(time.Millisecond))
	for _, p := range both {
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, 3, 56); err != nil {
			t.Fatalf("after the re-mapping: %v", err)
		}
	}
	m := scrape(t, tp, "after the re-mapping", "ikefleet_nat_mapping_checks_total", "ikefleet_address_updates_total")
	if sample(m, "ikefleet_nat_mapping_checks_total") < 1 || sample(m, "ikefleet_address_updates_total") < 1 {
		t.Errorf("no mapping check or address update counted: %v", m)
	}
	conc.mustWaitLog(t, ctx, 5*time.Second, "NAT mapping changed: checking the new address", nil)
	if newAddr != "" {
		if sas, err := gw.ListSAs(ctx); err != nil {
			t.Fatal(err)
		} else if after, _ := FindIKESA(sas, "conc"); after.Get("local-host") != before.Get("local-host") {
			t.Errorf("gw1's IKE SA changed its address: %s, was %s", after.Get("local-host"), before.Get("local-host"))
		}
		seen := false
		for _, r := range conc.LogRecords() {
			if p, _ := r.Attr("peer"); r.Msg() == "NAT mapping changed: checking the new address" && strings.HasPrefix(p, newAddr+":") {
				seen = true
			}
		}
		if !seen {
			t.Errorf("no mapping check of the NAT's new address %s logged", newAddr)
		}
	}
	return tp
}
