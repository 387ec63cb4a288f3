package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpAndVersionExitZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"--count", "3", "--help"}} {
		code, out, _ := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "Usage: ikeload") || !strings.Contains(out, "-scenario") {
			t.Errorf("%q: exit %d, stdout %q", args, code, out)
		}
	}
	for _, sub := range []string{"gen-pki", "compare", "flood"} {
		if code, out, _ := runCLI(t, sub, "--help"); code != 0 || !strings.Contains(out, "Usage: ikeload "+sub) {
			t.Errorf("%s --help: exit %d, %q", sub, code, out)
		}
	}
	code, out, _ := runCLI(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "ikeload ") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "not defined: -bogus"},
		{[]string{"--count", "x"}, "invalid value"},
		{[]string{"--psk", "k", "--vip", "extra"}, `unexpected argument "extra"`},
		{[]string{"--psk", "k", "stray", "--count", "5"}, `flag --count after the argument "stray"`},
		{[]string{"--psk", "k", "--vip", "--scenario", "nope"}, `--scenario "nope"`},
		{[]string{"--psk", "k", "--vip", "--count", "0"}, "--count 0"},
		{[]string{"--vip"}, "need --psk"},
		{[]string{"--psk", "k"}, "--local-ts is required"},
		{[]string{"--psk", "k", "--vip", "--server", "nowhere"}, "--server"},
		{[]string{"--psk", "k", "--vip", "--ports-per-gateway", "3"}, "--ports-per-gateway"},
		{[]string{"compare"}, "no reports"},
		{[]string{"compare", "a.json", "--html", "x"}, "flag --html after the argument"},
		{[]string{"gen-pki"}, "--dir is required"},
		{[]string{"flood"}, "--duration is required"},
		{[]string{"flood", "--duration", "1s", "--init-rate", "0", "--bad-rate", "0"}, "not both 0"},
		{[]string{"flood", "--duration", "1s", "--server", "nowhere"}, "--server"},
		{[]string{"flood", "--duration", "1s", "extra"}, `unexpected argument "extra"`},
		{[]string{"flood", "--duration", "1s", "--spoof", "2001:db8::/64"}, "--spoof"},
		{[]string{"flood", "--duration", "1s", "--spoof", "nonsense"}, "--spoof"},
	} {
		code, out, errOut := runCLI(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("%q: exit %d (want 2), stderr %q (want %q), stdout %q", c.args, code, errOut, c.want, out)
		}
	}
}

func TestScenarioPresets(t *testing.T) {
	parse := func(args ...string) *loadFlags {
		t.Helper()
		f := newLoadFlags()
		if err := f.parse(args, &bytes.Buffer{}); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		return f
	}
	if f := parse("--scenario", "steady"); f.hold != time.Minute || f.dpd != 10*time.Second || f.keepalive != 5*time.Second {
		t.Errorf("steady: hold %v dpd %v keepalive %v", f.hold, f.dpd, f.keepalive)
	}
	// An explicit flag wins over the preset, wherever it stands.
	if f := parse("--hold", "5s", "--scenario", "churn"); f.hold != 5*time.Second || f.churn != 20 {
		t.Errorf("churn with --hold 5s: hold %v churn %v", f.hold, f.churn)
	}
	if f := parse("--scenario", "burst"); f.window != 0 || f.rate != 0 {
		t.Errorf("burst: window %d rate %v", f.window, f.rate)
	}
	if f := parse("--scenario", "rekey-storm"); !f.rekeyStorm {
		t.Error("rekey-storm without the storm")
	}
	// A rate alone means open loop; with a window both hold.
	if f := parse("--rate", "50"); f.window != 0 {
		t.Errorf("--rate 50: window %d, want 0", f.window)
	}
	if f := parse("--rate", "50", "--window", "10"); f.window != 10 {
		t.Errorf("--rate 50 --window 10: window %d", f.window)
	}
	if f := parse(); f.window != 100 || f.scenario != "ramp" {
		t.Errorf("defaults: window %d scenario %s", f.window, f.scenario)
	}
}

func TestSourceDefaults(t *testing.T) {
	opts := func(args ...string) (string, string) {
		f := newLoadFlags()
		if err := f.parse(append([]string{"--psk", "k", "--vip"}, args...), &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		o, err := f.options()
		if err != nil {
			t.Fatal(err)
		}
		return o.Source.String(), o.Sources.String()
	}
	if a, p := opts(); a != "127.0.0.1" || p != "invalid Prefix" {
		t.Errorf("loopback default: %s %s", a, p)
	}
	if _, p := opts("--count", "20000"); p != "127.1.0.0/16" {
		t.Errorf("20000 gateways on loopback: %s", p)
	}
	if _, p := opts("--source", "127.9.0.0/20"); p != "127.9.0.0/20" {
		t.Errorf("--source prefix: %s", p)
	}
}

// gen-pki, then compare two JSON reports: the comparison table and one
// HTML page with both runs.
func TestGenPKIAndCompare(t *testing.T) {
	dir := t.TempDir()
	if code, _, errOut := runCLI(t, "gen-pki", "--dir", dir, "--responder-id", "conc.example"); code != 0 {
		t.Fatalf("gen-pki: %d %s", code, errOut)
	}
	for _, f := range []string{"ca.crt", "ca.key", "responder.crt", "responder.key"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	write := func(name, label string, perCPU float64) string {
		rep := map[string]any{"label": label, "scenario": "ramp", "attempted": 10, "established": 10, "consistent": true,
			"params": map[string]any{"auth": "psk", "count": 10}, "latency_ms": map[string]any{"p99": 4.0},
			"target": map[string]any{"pid": 1, "setups_per_cpu_s": perCPU}, "timeline": []map[string]any{{"setups": 10, "active": 10}}}
		b, _ := json.Marshal(rep)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := write("a.json", "ours", 900), write("b.json", "theirs", 300)
	html := filepath.Join(dir, "cmp.html")
	code, out, errOut := runCLI(t, "compare", "--html", html, "--baseline", "theirs", a, b)
	if code != 0 || !strings.Contains(out, "3.00x") {
		t.Fatalf("compare: %d\n%s\n%s", code, out, errOut)
	}
	page, err := os.ReadFile(html)
	if err != nil || !strings.Contains(string(page), "<svg") || !strings.Contains(string(page), "ours") {
		t.Fatalf("HTML: %v", err)
	}
}

// ikeload flood sends what it reports, to the ports it is given: IKE_SA_INIT
// requests from many source ports and addresses, and the malformed kinds,
// the garbage SK payloads naming the --known SAs, on both ports (NAT-T ones
// with the non-ESP marker).
func TestFloodSendsWhatItReports(t *testing.T) {
	ikeSock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ikeSock.Close()
	nattSock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer nattSock.Close()
	for _, c := range []*net.UDPConn{ikeSock, nattSock} {
		c.SetReadBuffer(4 << 20)
	}
	dir := t.TempDir()
	known := filepath.Join(dir, "known")
	if err := os.WriteFile(known, []byte("# spi_i spi_r\n0x1111111111111111 2222222222222222\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, "flood", "--known", filepath.Join(dir, "missing"), "--duration", "1s"); code != 1 || !strings.Contains(errOut, "missing") {
		t.Errorf("missing --known file: exit %d, %q", code, errOut)
	}

	type counts struct{ inits, sk, other int }
	var got [2]counts
	sources := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, c := range []*net.UDPConn{ikeSock, nattSock} {
		wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				b := buf[:n]
				if i == 1 {
					if n < 4 || binary.BigEndian.Uint32(b) != 0 {
						mu.Lock()
						got[i].other++
						mu.Unlock()
						continue
					}
					b = b[4:]
				}
				mu.Lock()
				sources[from.String()] = true
				h, herr := ike.DecodeHeader(b) // malformed kinds fail it
				switch {
				case herr == nil && h.Exchange == ike.IKE_SA_INIT:
					got[i].inits++
				case herr == nil && h.Exchange == ike.INFORMATIONAL && h.SPIi == 0x1111111111111111 && h.SPIr == 0x2222222222222222:
					got[i].sk++
				default:
					got[i].other++
				}
				mu.Unlock()
			}
		})
	}
	jsonOut := filepath.Join(dir, "flood.json")
	code, out, errOut := runCLI(t, "flood", "--server", "127.0.0.1",
		"--server-port", strconv.Itoa(ikeSock.LocalAddr().(*net.UDPAddr).Port),
		"--server-natt-port", strconv.Itoa(nattSock.LocalAddr().(*net.UDPAddr).Port),
		"--init-rate", "400", "--bad-rate", "400", "--duration", "1s", "--known", known, "--json-out", jsonOut)
	if code != 0 || !strings.HasPrefix(out, "flood: ") {
		t.Fatalf("flood: exit %d, %q, %q", code, out, errOut)
	}
	wg.Wait()
	var rep struct {
		Inits, Malformed, SendErrors uint64
		Sources                      int
	}
	b, err := os.ReadFile(jsonOut)
	if err == nil {
		err = json.Unmarshal(b, &rep)
	}
	if err != nil {
		t.Fatalf("--json-out: %v", err)
	}
	t.Logf("report %+v; received IKE port %+v, NAT-T port %+v, %d sources", rep, got[0], got[1], len(sources))
	// About a second at 400/s each. Nothing arrives that the report does
	// not count; loopback may drop a few when this process's readers are
	// starved on a busy machine, never many.
	if rep.Inits < 300 || rep.Malformed < 300 || rep.SendErrors != 0 {
		t.Errorf("report: %+v", rep)
	}
	inits, all := uint64(got[0].inits), uint64(got[0].inits+got[0].sk+got[0].other+got[1].sk+got[1].other)
	if inits > rep.Inits || all > rep.Inits+rep.Malformed || inits < rep.Inits*9/10 || all < (rep.Inits+rep.Malformed)*9/10 {
		t.Errorf("received %+v on the IKE port and %+v on the NAT-T port for %+v sent", got[0], got[1], rep)
	}
	if got[0].sk == 0 || got[1].sk == 0 || got[1].other != 0 || got[1].inits != 0 {
		t.Errorf("garbage SK payloads for the known SA: %d on the IKE port, %d on the NAT-T port (other %d)", got[0].sk, got[1].sk, got[1].other)
	}
	if len(sources) < 10 || rep.Sources < len(sources) {
		t.Errorf("%d distinct sources received, %d reported", len(sources), rep.Sources)
	}
}
