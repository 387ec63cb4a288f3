package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	for _, sub := range []string{"gen-pki", "compare"} {
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
