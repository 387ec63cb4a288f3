//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// nsPrefix starts every namespace this harness creates; the full name is
// ikf-<pid>-<n>-<role>, so parallel test binaries and leftovers never clash.
const nsPrefix = "ikf-"

var (
	nsCounter      atomic.Int64
	sweepStaleOnce sync.Once
	staleNS        = regexp.MustCompile(`^ikf-(\d+)-\d+-[a-z0-9]+$`)
)

// Topology is one gw / nat / conc set of network namespaces:
//
//	[gw]  lan0 10.20.0.1/24
//	[gw]  gw0 10.10.1.2/24 --- nat-gw 10.10.1.1 [nat] nat-conc 192.168.100.1 --- conc0 192.168.100.2/24 [conc]
//	                                                                              core0 10.30.0.1/24     [conc]
//
// The nat namespace masquerades everything leaving nat-conc and forwards
// nothing unsolicited towards the gateway side. conc has no route to
// 10.10.1.0/24: it only ever sees the NAT's public address.
type Topology struct {
	GW, NAT, Conc string // namespace names

	prefix string   // ikf-<pid>-<n>-: every namespace of this topology starts with it
	others []string // further namespaces (the cluster topology's), removed at teardown

	t     testing.TB
	mu    sync.Mutex
	procs []*Process
}

// NewTopology creates the namespaces, registers their removal (after every
// process started through the topology is stopped) with t.Cleanup, and fails
// the test if anything goes wrong. It calls requireNetns first.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	requireNetns(t)
	sweepStaleOnce.Do(func() { sweepStale(t) })
	prefix := fmt.Sprintf("%s%d-%d-", nsPrefix, os.Getpid(), nsCounter.Add(1))
	tp := &Topology{GW: prefix + "gw", NAT: prefix + "nat", Conc: prefix + "conc", prefix: prefix, t: t}
	t.Cleanup(tp.teardown)
	// Generous: under emulation (the kernel tier's VM) right after another
	// topology's teardown, setting one up takes tens of seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := tp.setup(ctx); err != nil {
		t.Fatalf("topology %s*: %v", prefix, err)
	}
	return tp
}

// Namespaces returns the namespace names, gw first (those of the cluster
// topology: its own).
func (tp *Topology) Namespaces() []string {
	var ns []string
	for _, n := range []string{tp.GW, tp.NAT, tp.Conc} {
		if n != "" {
			ns = append(ns, n)
		}
	}
	return append(ns, tp.others...)
}

// newBareTopology registers (with t.Cleanup) a topology of no namespaces
// yet, whose namespaces are named <prefix><role>: the cluster topology adds
// its own to it.
func newBareTopology(t testing.TB) *Topology {
	t.Helper()
	requireNetns(t)
	sweepStaleOnce.Do(func() { sweepStale(t) })
	prefix := fmt.Sprintf("%s%d-%d-", nsPrefix, os.Getpid(), nsCounter.Add(1))
	tp := &Topology{prefix: prefix, t: t}
	t.Cleanup(tp.teardown)
	return tp
}

// addNamespace creates namespace <prefix><role> with lo up and rp_filter
// off, and has teardown remove it.
func (tp *Topology) addNamespace(ctx context.Context, role string) (string, error) {
	ns := tp.prefix + role
	tp.mu.Lock()
	tp.others = append(tp.others, ns)
	tp.mu.Unlock()
	if _, err := run(ctx, nil, "ip", "netns", "add", ns); err != nil {
		return "", err
	}
	if _, err := run(ctx, nil, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return ns, tp.Sysctl(ctx, ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
}

func (tp *Topology) setup(ctx context.Context) error {
	gw, nat, conc := tp.GW, tp.NAT, tp.Conc
	var cmds [][]string
	add := func(args ...string) { cmds = append(cmds, args) }
	for _, ns := range tp.Namespaces() {
		add("netns", "add", ns)
		add("-n", ns, "link", "set", "lo", "up")
	}
	// Each veth is created inside a private namespace with its peer moved
	// straight into the other one: the fixed interface names never exist in
	// the host namespace, so concurrent topologies cannot collide.
	add("-n", gw, "link", "add", "gw0", "type", "veth", "peer", "name", "nat-gw", "netns", nat)
	add("-n", gw, "addr", "add", GWAddr+"/24", "dev", "gw0")
	add("-n", nat, "addr", "add", NATInsideAddr+"/24", "dev", "nat-gw")
	add("-n", gw, "link", "set", "gw0", "up")
	add("-n", nat, "link", "set", "nat-gw", "up")
	add("-n", gw, "route", "add", "default", "via", NATInsideAddr)

	add("-n", nat, "link", "add", "nat-conc", "type", "veth", "peer", "name", "conc0", "netns", conc)
	add("-n", nat, "addr", "add", NATPublicAddr+"/24", "dev", "nat-conc")
	add("-n", conc, "addr", "add", ConcAddr+"/24", "dev", "conc0")
	add("-n", nat, "link", "set", "nat-conc", "up")
	add("-n", conc, "link", "set", "conc0", "up")

	// Inner networks. Some kernels here lack the dummy link type, so a veth
	// pair local to the namespace stands in for the LAN.
	inner := func(ns, dev, cidr string) {
		add("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev+"-peer")
		add("-n", ns, "addr", "add", cidr, "dev", dev)
		add("-n", ns, "link", "set", dev, "up")
		add("-n", ns, "link", "set", dev+"-peer", "up")
	}
	inner(gw, "lan0", GWLANAddr+"/24")
	inner(conc, "core0", ConcLANAddr+"/24")

	for _, c := range cmds {
		if _, err := run(ctx, nil, "ip", c...); err != nil {
			return err
		}
	}
	if err := tp.Sysctl(ctx, nat, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	// kernel-libipsec injects decrypted packets through its TUN device
	// (ipsec0): rp_filter would drop them.
	for _, ns := range []string{gw, conc} {
		if err := tp.Sysctl(ctx, ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
			return err
		}
	}
	rules := `table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "nat-conc" masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "nat-gw*" oifname "nat-conc" accept
  }
}
`
	if _, err := run(ctx, strings.NewReader(rules), "ip", "netns", "exec", nat, "nft", "-f", "-"); err != nil {
		return err
	}
	return nil
}

// Sysctl sets kernel parameters ("key=value") inside namespace ns.
func (tp *Topology) Sysctl(ctx context.Context, ns string, settings ...string) error {
	_, err := run(ctx, nil, "ip", append([]string{"netns", "exec", ns, "sysctl", "-qw"}, settings...)...)
	return err
}

// Exec runs a short command inside namespace ns and returns its combined
// output. Use StartProcess for anything long-lived.
func (tp *Topology) Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	return run(ctx, nil, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

func (tp *Topology) track(p *Process) {
	tp.mu.Lock()
	tp.procs = append(tp.procs, p)
	tp.mu.Unlock()
}

// teardown stops every process started through the topology, kills anything
// else still inside its namespaces (deleting a namespace does not end the
// processes in it), and deletes the namespaces.
func (tp *Topology) teardown() {
	tp.mu.Lock()
	procs := tp.procs
	tp.procs = nil
	tp.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Stop()
	}
	for _, ns := range tp.Namespaces() {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		if pids := nsPids(ns); len(pids) > 0 {
			tp.t.Logf("topology teardown: killing leftover processes in %s: %v", ns, pids)
			killPids(pids)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := run(ctx, nil, "ip", "netns", "del", ns); err != nil {
			tp.t.Logf("topology teardown: %v", err)
		}
		cancel()
	}
}

// sweepStale deletes namespaces left behind by earlier test binaries that
// died before their cleanup ran (their pid no longer exists), after killing
// whatever those runs left inside them.
func sweepStale(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // our own, or its test binary is still running
		}
		if pids := nsPids(f[0]); len(pids) > 0 {
			t.Logf("stale namespace %s: killing leftover processes %v", f[0], pids)
			killPids(pids)
		}
		if err := exec.Command("ip", "netns", "del", f[0]).Run(); err == nil {
			t.Logf("deleted stale namespace %s (test binary %d is gone)", f[0], pid)
		}
	}
}

func nsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func killPids(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// run executes a short command and returns its combined output; the error
// names the command and includes the output.
func run(ctx context.Context, stdin *strings.Reader, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// InNetns runs fn on an OS thread switched into namespace ns. Sockets that
// fn creates stay in ns for their whole life, whichever thread uses them
// later. The thread returns to its own namespace afterwards (if that fails
// the runtime discards the thread).
func InNetns(ns string, fn func() error) error {
	if sysSetns == 0 {
		return fmt.Errorf("setns: not implemented for %s", runtime.GOARCH)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := setns(self); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("setns back from %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func setns(f *os.File) error {
	_, _, errno := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// ListenPacket is net.ListenPacket inside namespace ns.
func (tp *Topology) ListenPacket(ns, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := InNetns(ns, func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

var pingID atomic.Uint32

// Ping sends count ICMP echo requests of size payload bytes from src (an
// address in namespace ns) to dst, 200 ms apart, and returns an error unless
// every one is answered within 2 s. It uses a raw socket, so it needs no ping
// binary.
func (tp *Topology) Ping(ctx context.Context, ns, src, dst string, count, size int) error {
	return tp.ping(ctx, ns, src, dst, count, size, false)
}

// ping is Ping (ICMP) or, with v6, Ping6 (ICMPv6).
func (tp *Topology) ping(ctx context.Context, ns, src, dst string, count, size int, v6 bool) error {
	name, network, request, reply := "ping", "ip4:icmp", byte(8), byte(0)
	if v6 {
		name, network, request, reply = "ping6", "ip6:ipv6-icmp", 128, 129
	}
	c, err := tp.ListenPacket(ns, network, src)
	if err != nil {
		return fmt.Errorf("%s from %s in %s: %w", name, src, ns, err)
	}
	defer c.Close()
	dstIP := net.ParseIP(dst)
	dstAddr := &net.IPAddr{IP: dstIP}
	id := uint16(os.Getpid()) ^ uint16(pingID.Add(1)<<8)
	payload := bytes.Repeat([]byte{0xa5}, size)
	got := 0
	buf := make([]byte, 65536)
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s %s -> %s: %d/%d replies: %w", name, src, dst, got, count, ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
		msg := make([]byte, 8+len(payload))
		msg[0] = request // echo request
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], uint16(seq))
		copy(msg[8:], payload)
		if !v6 { // the kernel computes ICMPv6's
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		}
		if _, err := c.WriteTo(msg, dstAddr); err != nil {
			return fmt.Errorf("%s %s -> %s: send: %w", name, src, dst, err)
		}
		deadline := time.Now().Add(2 * time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: this one is lost
			}
			if n < 8 || buf[0] != reply || binary.BigEndian.Uint16(buf[4:]) != id ||
				binary.BigEndian.Uint16(buf[6:]) != uint16(seq) || !net.ParseIP(from.String()).Equal(dstIP) {
				continue
			}
			got++
			break
		}
	}
	if got != count {
		return fmt.Errorf("%s %s -> %s (%d bytes) in %s: %d/%d replies", name, src, dst, size, ns, got, count)
	}
	return nil
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
