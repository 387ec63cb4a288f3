//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	gw2ID  = "gw2@iot.example"
	gw2LAN = "10.20.2.0/24"
)

// ctlRun is one concentratorctl command run inside the conc namespace.
type ctlRun struct {
	code           int
	stdout, stderr string
}

// adminCtl runs the real concentratorctl binary against concentratord's
// admin API (its default, 127.0.0.1:9179 in the conc namespace) and logs
// the command with its output: the transcript of the test.
func adminCtl(t *testing.T, ctx context.Context, tp *Topology, bin string, args ...string) ctlRun {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", tp.Conc, bin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	r := ctlRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("concentratorctl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ concentratorctl %s    # exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, indentStderr(r.stderr))
	return r
}

func indentStderr(s string) string {
	if s == "" {
		return ""
	}
	return "[stderr] " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n[stderr] ") + "\n"
}

func mustCtl(t *testing.T, ctx context.Context, tp *Topology, bin string, args ...string) string {
	t.Helper()
	r := adminCtl(t, ctx, tp, bin, args...)
	if r.code != 0 {
		t.Fatalf("concentratorctl %s: exit %d", strings.Join(args, " "), r.code)
	}
	return r.stdout
}

// gw2Conf is gw1's swanctl.conf for gw2: its own address, identity, PSK
// and LAN.
func gw2Conf(addr, psk string) string {
	c := GatewaySwanctlConf(AuthPSK)
	for _, r := range [][2]string{
		{"local_addrs = " + GWAddr, "local_addrs = " + addr},
		{GWPSKID, gw2ID},
		{TestPSK, psk},
		{"local_ts = " + GWLAN, "local_ts = " + gw2LAN},
	} {
		c = strings.ReplaceAll(c, r[0], r[1])
	}
	return c
}

// reloadSwanctl replaces a running charon's swanctl.conf and loads it.
func reloadSwanctl(t *testing.T, s *StrongSwan, conf string) {
	t.Helper()
	writeFile(t, filepath.Join(s.SwanctlDir(), "swanctl.conf"), []byte(conf))
	if out, err := s.Swanctl("--load-all", "--noprompt"); err != nil {
		t.Fatalf("%s: reload: %v\n%s", s.Name, err, out)
	}
}

// scrape reads concentratord's /metrics (the metrics listener, in the
// conc namespace) into sample -> value, logs the ikefleet_* samples named
// by families, and returns them.
func scrape(t *testing.T, tp *Topology, step string, families ...string) map[string]float64 {
	t.Helper()
	code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics %s: %d %v", step, code, err)
	}
	m := map[string]float64{}
	var shown []string
	for _, l := range strings.Split(body, "\n") {
		i := strings.LastIndexByte(l, ' ')
		if strings.HasPrefix(l, "#") || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		m[l[:i]] = v
		for _, f := range families {
			if strings.HasPrefix(l, f+"{") || strings.HasPrefix(l, f+" ") {
				shown = append(shown, l)
			}
		}
	}
	t.Logf("/metrics %s:\n%s", step, strings.Join(shown, "\n"))
	return m
}

// sample sums the samples of family name whose labels include every one
// of labels (`kind="child"`).
func sample(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(k, l)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

var adminFamilies = []string{"ikefleet_ike_sas", "ikefleet_child_sas", "ikefleet_rekeys_total", "ikefleet_handshakes_total",
	"ikefleet_handshake_failures_total", "ikefleet_draining", "ikefleet_dataplane_packets_total"}

type ctlSA struct {
	SPI      string `json:"spi"`
	PeerID   string `json:"peer_id"`
	Remote   string `json:"remote"`
	State    string `json:"state"`
	Children []struct {
		InSPI      string `json:"in_spi"`
		OutSPI     string `json:"out_spi"`
		InPackets  uint64 `json:"in_packets"`
		OutPackets uint64 `json:"out_packets"`
	} `json:"children"`
}

// TestAdminCLI drives the real concentratorctl against a running
// concentratord (user-space data plane, embedded state store) with two
// strongSwan gateways behind the NAT: status, sas list, sas show (traffic
// counters), rekey (strongSwan sees the new CHILD SA), terminate
// (strongSwan's SA is gone), reload (a changed PSK file: the old PSK is
// refused for a new connection), drain (new IKE SAs refused, then
// resumed), and the event feed.
func TestAdminCLI(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctl := Binary(t, "concentratorctl")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	gw2NS, gw2Addr := tp.AddGateway(t, "gw2", 2)

	dir := t.TempDir()
	pskFile := filepath.Join(dir, "gw2.psk")
	writeFile(t, pskFile, []byte("gw2-first-secret-0123456789\n"))
	c := userspaceConfig(t, ESPProp)
	c = strings.Replace(c, "children:\n", fmt.Sprintf("    - id: %s\n      secret_file: %s\nchildren:\n", gw2ID, pskFile), 1)
	if !strings.Contains(c, pskFile) {
		t.Fatal("config has no children section")
	}
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(c))
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)
	conc.mustWaitLog(t, ctx, 10*time.Second, "admin API listening", map[string]string{"addr": "127.0.0.1:9179"})

	gw1 := NewStrongSwan(t, tp, "gw1", tp.GW)
	gw1.Start(GatewaySwanctlConf(AuthPSK), nil)
	gw2 := NewStrongSwan(t, tp, "gw2", gw2NS)
	gw2.Start(gw2Conf(gw2Addr, "gw2-first-secret-0123456789"), nil)
	initiate := func(s *StrongSwan) error {
		out, err := s.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "15")
		if err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		return nil
	}
	for _, s := range []*StrongSwan{gw1, gw2} {
		if err := initiate(s); err != nil {
			t.Fatalf("%s: initiate: %v", s.Name, err)
		}
	}

	before := scrape(t, tp, "with two gateways up", adminFamilies...)
	if sample(before, "ikefleet_ike_sas", `state="established"`) != 2 || sample(before, "ikefleet_draining") != 0 {
		t.Fatalf("/metrics with two gateways up: %v", before)
	}

	// status and the list: two gateways, both behind the NAT's address.
	out := mustCtl(t, ctx, tp, ctl, "status")
	if !strings.Contains(out, "1 nodes, 2 IKE SAs") || !strings.Contains(out, "conc-e2e *") || !strings.Contains(out, "SERVING") ||
		!strings.Contains(out, "embedded, reachable") {
		t.Fatalf("status:\n%s", out)
	}
	out = mustCtl(t, ctx, tp, ctl, "sas", "list")
	if !strings.Contains(out, GWPSKID) || !strings.Contains(out, gw2ID) || !strings.Contains(out, "(2 of 2 IKE SAs)") {
		t.Fatalf("sas list:\n%s", out)
	}
	var list struct {
		SAs []ctlSA `json:"sas"`
	}
	if err := json.Unmarshal([]byte(mustCtl(t, ctx, tp, ctl, "sas", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	sas := map[string]ctlSA{}
	for _, sa := range list.SAs {
		if sa.State != "ESTABLISHED" || !strings.HasPrefix(sa.Remote, NATPublicAddr+":") || len(sa.Children) != 1 {
			t.Fatalf("SA %+v", sa)
		}
		sas[sa.PeerID] = sa
	}
	sa1, sa2 := sas[GWPSKID], sas[gw2ID]
	if sa1.SPI == "" || sa2.SPI == "" || sa1.Remote == sa2.Remote {
		t.Fatalf("want gw1 and gw2 at two NAT ports: %+v", list.SAs)
	}
	// The SPIs are strongSwan's too.
	gwSAs, err := gw1.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g1, _ := FindIKESA(gwSAs, "conc")
	if g1.Get("responder-spi") != sa1.SPI {
		t.Fatalf("gw1's responder SPI %s, concentratorctl's %s", g1.Get("responder-spi"), sa1.SPI)
	}

	// show: traffic through gw1's tunnel in the data plane's counters.
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 3, 56); err != nil {
		t.Fatal(err)
	}
	out = mustCtl(t, ctx, tp, ctl, "sas", "show", sa1.SPI)
	if !strings.Contains(out, "CHILD SAs: 1") || !strings.Contains(out, sa1.Children[0].InSPI) {
		t.Fatalf("sas show:\n%s", out)
	}
	var shown ctlSA
	json.Unmarshal([]byte(mustCtl(t, ctx, tp, ctl, "sas", "show", sa1.SPI, "-o", "json")), &shown)
	if len(shown.Children) != 1 || shown.Children[0].InPackets < 3 || shown.Children[0].OutPackets < 3 {
		t.Fatalf("counters after 3 pings: %+v", shown)
	}

	// The event feed, followed from here on.
	events := tp.StartProcess(t, "concentratorctl events", tp.Conc, ctl, "events", "-o", "json")

	// rekey: strongSwan sees the new CHILD SA, SPIs crossed.
	oldIn, _ := childSPIs(t, ctx, gw1)
	var rk struct {
		Old   string `json:"old_in_spi"`
		Child struct {
			In  string `json:"in_spi"`
			Out string `json:"out_spi"`
		} `json:"child"`
	}
	if err := json.Unmarshal([]byte(mustCtl(t, ctx, tp, ctl, "rekey", sa1.SPI, "-o", "json")), &rk); err != nil {
		t.Fatal(err)
	}
	if rk.Old != sa1.Children[0].InSPI || rk.Child.In == "" || rk.Child.In == rk.Old {
		t.Fatalf("rekey answer %+v", rk)
	}
	gwIn, gwOut := waitChildChange(t, ctx, gw1, oldIn)
	if gwIn != rk.Child.Out || gwOut != rk.Child.In {
		t.Fatalf("strongSwan's new CHILD SA %s/%s (in/out), concentratorctl's %s/%s", gwIn, gwOut, rk.Child.In, rk.Child.Out)
	}
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 2, 56); err != nil {
		t.Fatalf("after the rekey: %v", err)
	}
	afterRekey := scrape(t, tp, "after the rekey", adminFamilies...)
	if d := sample(afterRekey, "ikefleet_rekeys_total", `kind="child"`, `initiator="us"`) -
		sample(before, "ikefleet_rekeys_total", `kind="child"`, `initiator="us"`); d != 1 {
		t.Errorf("ikefleet_rekeys_total{kind=child,initiator=us} went up by %v, want 1", d)
	}

	// terminate gw2: strongSwan's SA is gone.
	r := adminCtl(t, ctx, tp, ctl, "terminate", sa2.SPI)
	if r.code != 0 || r.stdout != "terminated 1 of 1 IKE SAs\n" || !strings.Contains(r.stderr, "1/1") {
		t.Fatalf("terminate: exit %d", r.code)
	}
	if _, err := gw2.WaitSAs(ctx, func(s []IKESA) bool { return len(s) == 0 }); err != nil {
		t.Fatalf("gw2 keeps its SA: %v", err)
	}
	if _, err := events.WaitLine(ctx, func(l string) bool {
		return strings.Contains(l, `"kind":"IKE_DELETED"`) && strings.Contains(l, sa2.SPI)
	}); err != nil {
		t.Fatalf("no IKE_DELETED event for %s: %v\n%s", sa2.SPI, err, events.Stdout())
	}
	if !strings.Contains(events.Stdout(), `"kind":"CHILD_REKEYED"`) {
		t.Errorf("no CHILD_REKEYED event:\n%s", events.Stdout())
	}

	// reload: gw2's PSK file changes; the old PSK is refused for a new
	// connection, the new one gets in.
	writeFile(t, pskFile, []byte("gw2-second-secret-9876543210\n"))
	out = mustCtl(t, ctx, tp, ctl, "reload")
	if !strings.Contains(out, "2 (0 added, 0 removed, 1 changed)") {
		t.Fatalf("reload:\n%s", out)
	}
	if err := initiate(gw2); err == nil {
		t.Fatal("gw2 got in with the old PSK after the reload")
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "IKE_SA failed", map[string]string{"notify": "AUTHENTICATION_FAILED"})
	afterReload := scrape(t, tp, "after the old PSK was refused", adminFamilies...)
	if d := sample(afterReload, "ikefleet_handshake_failures_total", `AUTHENTICATION_FAILED`) -
		sample(before, "ikefleet_handshake_failures_total", `AUTHENTICATION_FAILED`); d != 1 {
		t.Errorf("ikefleet_handshake_failures_total{reason=AUTHENTICATION_FAILED} went up by %v, want 1", d)
	}
	// SIGHUP reloads too.
	if err := conc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "SIGHUP: credentials reloaded", nil)
	reloadSwanctl(t, gw2, gw2Conf(gw2Addr, "gw2-second-secret-9876543210"))
	if err := initiate(gw2); err != nil {
		t.Fatalf("gw2 with the new PSK: %v", err)
	}

	// drain: new IKE SAs are refused with TEMPORARY_FAILURE, the
	// established ones stay; resumed, gw2 gets in again.
	if out, err := gw2.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Fatalf("gw2 terminate: %v\n%s", err, out)
	}
	r = adminCtl(t, ctx, tp, ctl, "drain")
	if r.code != 0 || !strings.Contains(r.stdout, "drained: new IKE SAs refused, SA state persisted") ||
		!strings.Contains(r.stderr, "refusing new SAs") {
		t.Fatalf("drain: exit %d", r.code)
	}
	if err := initiate(gw2); err == nil {
		t.Fatal("gw2 got in while the node drains")
	}
	if !strings.Contains(gw2.Log(), "TEMPORARY_FAILURE") {
		t.Errorf("gw2's log does not show TEMPORARY_FAILURE:\n%s", tail(gw2.Log(), 4<<10))
	}
	out = mustCtl(t, ctx, tp, ctl, "nodes")
	if !strings.Contains(out, "DRAINING") {
		t.Fatalf("nodes while draining:\n%s", out)
	}
	if m := scrape(t, tp, "while draining", "ikefleet_draining"); sample(m, "ikefleet_draining") != 1 {
		t.Errorf("ikefleet_draining is not 1 while draining")
	}
	if code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/readyz"); err != nil || code == 200 {
		t.Errorf("/readyz while draining: %d %v %s", code, err, body)
	}
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 2, 56); err != nil {
		t.Fatalf("gw1's tunnel while draining: %v", err)
	}
	mustCtl(t, ctx, tp, ctl, "drain", "--resume")
	if err := initiate(gw2); err != nil {
		t.Fatalf("gw2 after the drain: %v", err)
	}
	out = mustCtl(t, ctx, tp, ctl, "status")
	if !strings.Contains(out, "2 IKE SAs") || !strings.Contains(out, "SERVING") {
		t.Fatalf("status at the end:\n%s", out)
	}
	mustCtl(t, ctx, tp, ctl, "sas", "list")
	if m := scrape(t, tp, "at the end", adminFamilies...); sample(m, "ikefleet_draining") != 0 ||
		sample(m, "ikefleet_ike_sas", `state="established"`) != 2 {
		t.Errorf("/metrics at the end: draining %v, established %v", sample(m, "ikefleet_draining"), sample(m, "ikefleet_ike_sas", `state="established"`))
	}
	if err := events.Stop(); err != nil {
		t.Errorf("concentratorctl events on SIGTERM: %v", err)
	}
	t.Logf("$ concentratorctl events -o json    # stopped with SIGTERM\n%s", events.Stdout())
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
	_ = os.Remove(pskFile)
}
