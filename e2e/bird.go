//go:build linux

package e2e

// A BIRD 2 router in a network namespace: BGP sessions with the nodes,
// ECMP routes to the anycast address in the namespace's kernel table
// (merge paths), per-flow (L4) hashing. BIRD runs in the foreground as the
// test's child with its own control socket and PID file; Debian's service
// is never used.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// BirdPath and BirdcPath are BIRD 2 as Debian installs it (package bird2).
const (
	BirdPath  = "/usr/sbin/bird"
	BirdcPath = "/usr/sbin/birdc"
)

// requireBird is requireNetns plus BIRD 2: skipped, or failed with CI=true.
func requireBird(t testing.TB) {
	t.Helper()
	requireNetns(t)
	for _, p := range []string{BirdPath, BirdcPath} {
		if _, err := exec.LookPath(p); err != nil {
			missingDependency(t, "anycast test needs "+p+" (Debian package bird2)")
		}
	}
}

// BirdNeighbor is one BGP session of the router.
type BirdNeighbor struct {
	Name     string // BIRD protocol name
	Local    string // the router's address on the link
	Addr     string // the neighbour's
	ASN      uint32 // the neighbour's AS
	Password string // TCP MD5, optional
	IPv6     bool   // an IPv6 session carrying IPv6 unicast only (IPv4 unicast otherwise)
}

// BirdConfig is the router.
type BirdConfig struct {
	RouterID  string
	ASN       uint32
	HoldTime  int // seconds; the session's hold time is the smaller of both sides'
	Neighbors []BirdNeighbor
}

// Bird is a running BIRD.
type Bird struct {
	NS   string
	Sock string
	Proc *Process
}

func (c BirdConfig) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
log stderr all;
protocol device { scan time 1; }
protocol kernel {
  ipv4 { import none; export all; };
  merge paths on;
}
`, c.RouterID)
	for _, n := range c.Neighbors {
		if n.IPv6 {
			b.WriteString("protocol kernel {\n  ipv6 { import none; export all; };\n  merge paths on;\n}\n")
			break
		}
	}
	for _, n := range c.Neighbors {
		fmt.Fprintf(&b, `protocol bgp %s {
  local %s as %d;
  neighbor %s as %d;
  hold time %d;
  keepalive time 1;
  connect retry time 1;
  error wait time 1, 2;
`, n.Name, n.Local, c.ASN, n.Addr, n.ASN, c.HoldTime)
		if n.Password != "" {
			fmt.Fprintf(&b, "  password %q;\n", n.Password)
		}
		if n.IPv6 {
			b.WriteString("  ipv6 { import all; export none; };\n}\n")
		} else {
			b.WriteString("  ipv4 { import all; export none; };\n}\n")
		}
	}
	return b.String()
}

// StartBird writes the configuration into dir and runs bird in ns.
func StartBird(t *testing.T, tp *Topology, ns, dir string, c BirdConfig) *Bird {
	t.Helper()
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(c.text()), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &Bird{NS: ns, Sock: filepath.Join(dir, "bird.ctl")}
	if out, err := exec.Command(BirdPath, "-p", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("bird -p: %v\n%s\n%s", err, out, c.text())
	}
	b.Proc = tp.StartProcess(t, "bird", ns, BirdPath, "-f", "-c", conf, "-s", b.Sock, "-P", filepath.Join(dir, "bird.pid"))
	return b
}

// Birdc runs a birdc command on the router's socket.
func (b *Bird) Birdc(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, BirdcPath, append([]string{"-s", b.Sock}, args...)...).CombinedOutput()
	return string(out), err
}

// Established reports the BGP protocols whose session is up.
func (b *Bird) Established(ctx context.Context) (map[string]bool, error) {
	out, err := b.Birdc(ctx, "show", "protocols")
	if err != nil {
		return nil, fmt.Errorf("birdc show protocols: %v: %s", err, out)
	}
	up := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && f[1] == "BGP" && strings.Contains(l, "Established") {
			up[f[0]] = true
		}
	}
	return up, nil
}

var nexthopVia = regexp.MustCompile(`via (\S+)`)

// NextHops lists the next hops of the kernel route to prefix in ns
// (sorted; none when there is no route).
func NextHops(ctx context.Context, ns, prefix string) ([]string, error) {
	fam := "-4"
	if strings.Contains(prefix, ":") {
		fam = "-6"
	}
	out, err := run(ctx, nil, "ip", fam, "-n", ns, "route", "show", prefix)
	if err != nil {
		return nil, err
	}
	var hops []string
	for _, m := range nexthopVia.FindAllStringSubmatch(out, -1) {
		hops = append(hops, m[1])
	}
	sort.Strings(hops)
	return hops, nil
}

// WaitNextHops polls the kernel route until its next hops are want and
// returns how long that took (polled every 20 ms).
func WaitNextHops(ctx context.Context, ns, prefix string, want []string, limit time.Duration) (time.Duration, error) {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	sort.Strings(want)
	var last []string
	for {
		hops, err := NextHops(ctx, ns, prefix)
		if err == nil && strings.Join(hops, ",") == strings.Join(want, ",") {
			return time.Since(t0), nil
		}
		if err == nil {
			last = hops
		}
		select {
		case <-ctx.Done():
			return time.Since(t0), fmt.Errorf("route %s in %s: next hops %v, want %v", prefix, ns, last, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
