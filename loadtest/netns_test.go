package loadtest_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/loadtest"
)

// A flood runs inside a network namespace the test creates (as root),
// where forged sources can be used and the node's answers to them routed
// away, as they are lost on their way to a spoofing attacker's victims:
//
//	lo      127.0.0.1, nsNodeAddr/32: the node, the gateways, the generator
//	sink0   veth (peer sink1); route nsSpoof via a next hop on sink0 that
//	        does not exist: answers to forged sources leave the node's
//	        socket and the interface as they would leave a NIC, and sink1
//	        drops the frames on arrival (not its MAC address). On loopback
//	        they would be received again, by the generator's sockets or as
//	        ICMP errors, at the node's expense.
const (
	floodNetnsEnv = "IKEFLEET_FLOOD_NETNS" // the namespace this test binary runs in
	nsNodeAddr    = "10.77.0.1"
	nsSpoof       = "198.18.0.0/15" // RFC 2544's benchmarking range
)

var nsCount atomic.Int64

// inFloodNetns reports whether this test binary runs in a namespace made
// by runInFloodNetns.
func inFloodNetns() bool { return os.Getenv(floodNetnsEnv) != "" }

// floodAddrs are the node's address and the prefix of forged sources
// (invalid: none, the generator's sockets bind ever new loopback
// addresses) of the namespace this test runs in.
func floodAddrs() (node netip.Addr, spoof netip.Prefix) {
	if inFloodNetns() {
		return netip.MustParseAddr(nsNodeAddr), netip.MustParsePrefix(nsSpoof)
	}
	return netip.MustParseAddr("127.0.0.1"), netip.Prefix{}
}

// runInFloodNetns runs test t again in a child of this test binary inside
// a fresh network namespace, logs the child's output and fails t if the
// child fails; it returns true when it did, and the caller returns. Inside
// the namespace, or without root (then the flood stays on loopback with
// ordinary sockets; under CI=true that fails the test), it returns false
// and the caller runs the test itself.
func runInFloodNetns(t *testing.T) bool {
	t.Helper()
	if inFloodNetns() {
		return false
	}
	_, ipErr := exec.LookPath("ip")
	if os.Geteuid() != 0 || ipErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the flood needs root and ip(8) for its network namespace (euid %d, ip: %v)", os.Geteuid(), ipErr)
		}
		t.Logf("not root or no ip(8): the flood runs on loopback, from ordinary sockets")
		return false
	}
	ns := fmt.Sprintf("ikfflood-%d-%d", os.Getpid(), nsCount.Add(1))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	ip("-n", ns, "addr", "add", nsNodeAddr+"/32", "dev", "lo")
	// The answers' next hop is a neighbour that does not exist: its frames
	// reach sink1, are not addressed to it and are dropped on arrival.
	ip("-n", ns, "link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
	ip("-n", ns, "link", "set", "sink0", "up")
	ip("-n", ns, "link", "set", "sink1", "up")
	ip("-n", ns, "addr", "add", "10.78.0.1/30", "dev", "sink0")
	ip("-n", ns, "neigh", "replace", "10.78.0.2", "lladdr", "02:00:00:00:00:02", "dev", "sink0", "nud", "permanent")
	ip("-n", ns, "route", "add", nsSpoof, "via", "10.78.0.2", "dev", "sink0")

	args := []string{"netns", "exec", ns, os.Args[0], "-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+(time.Until(d)-10*time.Second).String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), floodNetnsEnv+"="+ns)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("test in namespace %s: %v", ns, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			t.Logf("[netns %s] %s", ns, sc.Text())
		}
		io.Copy(io.Discard, pr)
	})
	err := cmd.Wait()
	pw.Close()
	wg.Wait()
	if err != nil {
		t.Fatalf("test in namespace %s (pid %d): %v", ns, cmd.Process.Pid, err)
	}
	return true
}

// A spoofed flood's datagrams arrive from forged addresses of the prefix
// (each its own address and port), pass the kernel's UDP checksum check,
// and add up to the report; the node's answers to them leave through the
// dummy device instead of coming back.
func TestFloodSpoofedSources(t *testing.T) {
	if runInFloodNetns(t) {
		return
	}
	addr, spoof := floodAddrs()
	if !spoof.IsValid() {
		if os.Getenv("CI") == "true" {
			t.Fatal("forged sources need the flood's network namespace (root)")
		}
		t.Skip("forged sources need the flood's network namespace (root)")
	}
	var socks [2]*net.UDPConn
	for i := range socks {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadBuffer(4 << 20)
		socks[i] = c
	}
	port := func(i int) netip.AddrPort { return socks[i].LocalAddr().(*net.UDPAddr).AddrPort() }
	var mu sync.Mutex
	got, outside := 0, 0
	sources := map[netip.AddrPort]bool{}
	var wg sync.WaitGroup
	for _, c := range socks {
		wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				mu.Lock()
				got++
				sources[from] = true
				if !spoof.Contains(from.Addr()) {
					outside++
				}
				mu.Unlock()
			}
		})
	}
	// An answer to a forged source leaves through sink0.
	sink, err := net.InterfaceByName("sink0")
	if err != nil {
		t.Fatal(err)
	}
	txBefore := ifaceTxPackets(t, sink.Name)
	if _, err := socks[0].WriteToUDPAddrPort([]byte("answer"), netip.AddrPortFrom(spoof.Addr().Next(), 500)); err != nil {
		t.Fatalf("answer to a forged source: %v", err)
	}
	if tx := ifaceTxPackets(t, sink.Name) - txBefore; tx != 1 {
		t.Errorf("answer to a forged source: %d packets left %s, want 1", tx, sink.Name)
	}

	rep, err := loadtest.Flood(context.Background(), loadtest.FloodOptions{Server: port(0), ServerNATT: port(1).Port(),
		InitRate: 1000, BadRate: 1000, Duration: time.Second, Spoof: spoof})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	sent := int(rep.Inits + rep.Malformed)
	t.Logf("sent %d IKE_SA_INIT + %d malformed (%d send errors); received %d from %d distinct address:ports, %d outside %v",
		rep.Inits, rep.Malformed, rep.SendErrors, got, len(sources), outside, spoof)
	switch {
	case !rep.Spoofed || rep.Sources != sent:
		t.Errorf("report: %+v", rep)
	case rep.SendErrors != 0:
		t.Errorf("%d send errors", rep.SendErrors)
	case got > sent || got < sent*9/10: // a starved reader may lose a few; never more than were sent
		t.Errorf("received %d datagrams, the report says %d were sent", got, sent)
	case outside != 0:
		t.Errorf("%d datagrams from outside %v", outside, spoof)
	case len(sources) < got*9/10:
		t.Errorf("%d distinct sources for %d datagrams", len(sources), got)
	}
}

// ifaceTxPackets is the interface's transmitted-packet counter.
func ifaceTxPackets(t *testing.T, name string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + name + "/statistics/tx_packets")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
