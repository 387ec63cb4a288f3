//go:build linux

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// redirectTarget is the second node's address in the conc namespace.
const redirectTarget = "192.168.100.3"

func redirectNodeConfig(id, listen, gossip, join string, port int) string {
	j := ""
	if join != "" {
		j = "\n    join: [" + join + "]"
	}
	return fmt.Sprintf(`node:
  id: %[1]s
log:
  level: info
  format: json
ike:
  listen: [%[2]s]
  force_encap: true
  proposals: [%[3]s]
  esp_proposals: [%[4]s]
identity:
  id: %[5]s
auth:
  psks:
    - id: %[6]s
      secret: %[7]q
children:
  local_ts: [%[8]s]
  remote_ts: [10.20.0.0/16]
dataplane:
  mode: memory
statestore:
  mode: none
metrics:
  listen: 127.0.0.1:%[9]d
admin:
  listen: 127.0.0.1:%[10]d
anycast:
  health:
    interval: 200ms
  members:
    listen: %[11]s%[12]s
  redirect:
    enabled: true
    unicast: %[2]s
`, id, listen, IKEProp, ESPProp, ConcID, GWPSKID, TestPSK, ConcLAN, port, port+1, gossip, j)
}

// TestRedirectStrongSwanToLiveNode: two nodes gossip (memberlist); the
// first drains (concentratorctl drain), and strongSwan connecting to it
// is redirected (RFC 5685) to the second, where its SA comes up; its log
// says so.
func TestRedirectStrongSwanToLiveNode(t *testing.T) {
	requireNetns(t)
	bin, ctl := Binary(t, "concentratord"), Binary(t, "concentratorctl")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	if _, err := tp.Exec(ctx, tp.Conc, "ip", "addr", "add", redirectTarget+"/24", "dev", "conc0"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgA, cfgB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeFile(t, cfgA, []byte(redirectNodeConfig("a", ConcAddr, "127.0.0.1:7946", "", 9180)))
	writeFile(t, cfgB, []byte(redirectNodeConfig("b", redirectTarget, "127.0.0.1:7947", "127.0.0.1:7946", 9190)))
	a := tp.StartProcess(t, "node-a", tp.Conc, bin, "--config", cfgA)
	a.mustWaitLog(t, ctx, 20*time.Second, "listening", nil)
	b := tp.StartProcess(t, "node-b", tp.Conc, bin, "--config", cfgB)
	b.mustWaitLog(t, ctx, 20*time.Second, "listening", nil)
	a.mustWaitLog(t, ctx, 20*time.Second, "members: joined", map[string]string{"member": "b"})

	// Drain a: it answers new IKE_SA_INITs with REDIRECT to b (the only
	// live, healthy member), once it has heard b is healthy.
	out, err := tp.Exec(ctx, tp.Conc, ctl, "--addr", "127.0.0.1:9181", "drain", "-q")
	if err != nil {
		t.Fatalf("concentratorctl drain: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := tp.Exec(ctx, tp.Conc, ctl, "--addr", "127.0.0.1:9181", "nodes", "-o", "json")
		if err == nil && strings.Contains(out, `"unicast": "`+redirectTarget+`"`) && strings.Contains(out, `"healthy": true`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node a never saw b healthy: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)
	out, err = gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "30")
	if err != nil {
		t.Fatalf("strongSwan initiate: %v\n%s\n--- gw log ---\n%s", err, out, tail(gw.Log(), 8<<10))
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := FindIKESA(sas, "conc")
	if !ok || sa.Get("remote-host") != redirectTarget || sa.Get("state") != "ESTABLISHED" {
		t.Fatalf("gw SA %+v (found %v), want ESTABLISHED with %s", sa, ok, redirectTarget)
	}
	saysRedirected(t, "the gateway", gw)
	b.mustWaitLog(t, ctx, 5*time.Second, "IKE_SA established", map[string]string{"peer_id": GWPSKID})
	a.mustWaitLog(t, ctx, 5*time.Second, "IKE_SA_INIT redirected (RFC 5685)", map[string]string{"to": redirectTarget})
}

// saysRedirected fails unless the strongSwan gateway's log mentions a
// redirect, and logs the lines that do.
func saysRedirected(t *testing.T, who string, gw *StrongSwan) {
	t.Helper()
	var said []string
	for _, l := range strings.Split(gw.Log(), "\n") {
		if strings.Contains(strings.ToLower(l), "redirect") {
			said = append(said, strings.TrimSpace(l))
		}
	}
	if len(said) == 0 {
		t.Fatalf("%s's log does not mention the redirect:\n%s", who, tail(gw.Log(), 8<<10))
	}
	t.Logf("%s's log:\n%s", who, strings.Join(said, "\n"))
}

// oneSA matches a member with one IKE SA in concentratorctl nodes -o json.
var oneSA = regexp.MustCompile(`"sas": "?1"?[,\n}]`)

// TestRedirectOverloaded: the overload redirect. Node a takes at most one
// IKE SA (anycast.redirect.max_sas: 1); the first gateway's SA comes up
// on it. Once a has counted that SA, a second gateway connecting to a is
// redirected (RFC 5685) to b, the other live member, where its SA comes
// up; its log says so and a logs the redirect.
func TestRedirectOverloaded(t *testing.T) {
	requireNetns(t)
	bin, ctl := Binary(t, "concentratord"), Binary(t, "concentratorctl")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	if _, err := tp.Exec(ctx, tp.Conc, "ip", "addr", "add", redirectTarget+"/24", "dev", "conc0"); err != nil {
		t.Fatal(err)
	}
	gw2NS, gw2Addr := tp.AddGateway(t, "gw2", 2)
	const gw2PSK = "gw2-overload-secret-0123456789"
	psk2 := fmt.Sprintf("    - id: %s\n      secret: %q\nchildren:\n", gw2ID, gw2PSK)
	dir := t.TempDir()
	cfgA, cfgB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	confA := strings.Replace(redirectNodeConfig("a", ConcAddr, "127.0.0.1:7946", "", 9180), "children:\n", psk2, 1)
	confA = strings.Replace(confA, "    enabled: true\n", "    enabled: true\n    max_sas: 1\n", 1)
	confB := strings.Replace(redirectNodeConfig("b", redirectTarget, "127.0.0.1:7947", "127.0.0.1:7946", 9190), "children:\n", psk2, 1)
	if !strings.Contains(confA, "max_sas: 1") || !strings.Contains(confA, gw2ID) || !strings.Contains(confB, gw2ID) {
		t.Fatal("node configurations not as meant")
	}
	writeFile(t, cfgA, []byte(confA))
	writeFile(t, cfgB, []byte(confB))
	a := tp.StartProcess(t, "node-a", tp.Conc, bin, "--config", cfgA)
	a.mustWaitLog(t, ctx, 20*time.Second, "listening", nil)
	b := tp.StartProcess(t, "node-b", tp.Conc, bin, "--config", cfgB)
	b.mustWaitLog(t, ctx, 20*time.Second, "listening", nil)
	a.mustWaitLog(t, ctx, 20*time.Second, "members: joined", map[string]string{"member": "b"})

	initiate := func(s *StrongSwan) {
		t.Helper()
		if out, err := s.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "30"); err != nil {
			t.Fatalf("%s: initiate: %v\n%s\n--- log ---\n%s", s.Name, err, out, tail(s.Log(), 8<<10))
		}
	}
	remote := func(s *StrongSwan) string {
		t.Helper()
		sas, err := s.ListSAs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sa, ok := FindIKESA(sas, "conc")
		if !ok || sa.Get("state") != "ESTABLISHED" {
			t.Fatalf("%s: SA %+v (found %v), want ESTABLISHED", s.Name, sa, ok)
		}
		return sa.Get("remote-host")
	}
	gw1 := NewStrongSwan(t, tp, "gw1", tp.GW)
	gw1.Start(GatewaySwanctlConf(AuthPSK), nil)
	initiate(gw1)
	if r := remote(gw1); r != ConcAddr {
		t.Fatalf("gw1's SA is with %s, want %s (a is below max_sas)", r, ConcAddr)
	}
	// a gossips its SA count and b's health; wait until a counts its SA
	// and knows b is a live, healthy target.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := tp.Exec(ctx, tp.Conc, ctl, "--addr", "127.0.0.1:9181", "nodes", "-o", "json")
		if err == nil && strings.Contains(out, `"unicast": "`+redirectTarget+`"`) && strings.Contains(out, `"healthy": true`) &&
			oneSA.MatchString(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node a never counted its SA and saw b healthy: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	gw2 := NewStrongSwan(t, tp, "gw2", gw2NS)
	gw2.Start(gw2Conf(gw2Addr, gw2PSK), nil)
	initiate(gw2)
	if r := remote(gw2); r != redirectTarget {
		t.Fatalf("gw2's SA is with %s, want %s (redirected: a holds max_sas)", r, redirectTarget)
	}
	saysRedirected(t, "gw2", gw2)
	b.mustWaitLog(t, ctx, 5*time.Second, "IKE_SA established", map[string]string{"peer_id": gw2ID})
	rec := a.mustWaitLog(t, ctx, 5*time.Second, "IKE_SA_INIT redirected (RFC 5685)", map[string]string{"to": redirectTarget})
	if d, _ := rec.Attr("draining"); d != "false" {
		t.Errorf("a's redirect log says draining=%s, want false (overload)", d)
	}
	if r := remote(gw1); r != ConcAddr {
		t.Errorf("gw1's SA moved to %s", r)
	}
}
