package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const unitFile = "systemd/concentratord.service"

// unitKeys parses a unit file into section.key -> values (in order).
func unitKeys(t *testing.T, text string) map[string][]string {
	t.Helper()
	keys := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: line %q is not KEY=VALUE", unitFile, l)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	return keys
}

var daemon struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	out  []byte
}

// goTool is the go command running the test (go test puts its GOROOT/bin
// first in PATH).
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// buildDaemon builds cmd/concentratord once per test run.
func buildDaemon(t *testing.T) string {
	t.Helper()
	daemon.once.Do(func() {
		daemon.dir, daemon.err = os.MkdirTemp("", "deploy-test-")
		if daemon.err != nil {
			return
		}
		daemon.bin = filepath.Join(daemon.dir, "concentratord")
		cmd := exec.Command(goTool(), "build", "-o", daemon.bin, "../cmd/concentratord")
		daemon.out, daemon.err = cmd.CombinedOutput()
	})
	if daemon.err != nil {
		t.Fatalf("go build: %v\n%s", daemon.err, daemon.out)
	}
	return daemon.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if daemon.dir != "" {
		os.RemoveAll(daemon.dir)
	}
	os.Exit(code)
}

// The unit asks for what the daemon needs and nothing more.
func TestSystemdUnitSettings(t *testing.T) {
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	k := unitKeys(t, string(b))
	one := func(key string) string {
		v := k[key]
		if len(v) != 1 {
			t.Errorf("%s: set %d times, want once", key, len(v))
			return ""
		}
		return v[0]
	}
	caps := func(key string) []string {
		f := strings.Fields(one(key))
		slices.Sort(f)
		return f
	}
	want := []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
	if got := caps("Service.CapabilityBoundingSet"); !slices.Equal(got, want) {
		t.Errorf("CapabilityBoundingSet %v, want %v", got, want)
	}
	if got := caps("Service.AmbientCapabilities"); !slices.Equal(got, want) {
		t.Errorf("AmbientCapabilities %v, want %v (the service user is not root)", got, want)
	}
	for key, want := range map[string]string{
		"Service.User":            "ikefleet",
		"Service.ProtectSystem":   "strict",
		"Service.StateDirectory":  "ikefleet",
		"Service.NoNewPrivileges": "yes",
		"Service.KillSignal":      "SIGTERM",
		"Service.ExecReload":      "/bin/kill -HUP $MAINPID",
		"Install.WantedBy":        "multi-user.target",
	} {
		if got := one(key); got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	if d, err := time.ParseDuration(one("Service.TimeoutStopSec")); err != nil || d < 30*time.Second {
		t.Errorf("TimeoutStopSec %q: want a duration of at least 30s for the drain", one("Service.TimeoutStopSec"))
	}
	start := strings.Fields(one("Service.ExecStart"))
	pre := strings.Fields(one("Service.ExecStartPre"))
	if !slices.Equal(pre, append(slices.Clone(start), "--check")) {
		t.Errorf("ExecStartPre %v: want ExecStart %v with --check", pre, start)
	}
	// The daemon accepts the unit's command line.
	bin := buildDaemon(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "concentratord.yaml")
	if err := os.WriteFile(cfg, []byte("identity: {id: conc.example}\nauth: {psks: [{id: gw1@iot.example, secret: systemd-test-psk-0123456789}]}\nchildren: {local_ts: [10.30.0.0/24], pool: 10.99.0.0/16}\nstatestore: {mode: none}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(pre[1:])
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("ExecStart %v has no --config FILE", start)
	}
	args[i+1] = cfg
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("configuration OK")) {
		t.Errorf("concentratord %v: %v\n%s", args, err, out)
	}
}

// systemd-analyze verifies the unit (any warning fails) and rates its
// exposure. Under CI=true a missing systemd-analyze fails the test.
func TestSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze not found (Debian package systemd); .ci/run installs it")
		}
		t.Skip("systemd-analyze not found (Debian package systemd)")
	}
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := buildDaemon(t)
	// verify checks that the executables exist: point at the one just built.
	unit := filepath.Join(dir, "concentratord.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(b, []byte("/usr/local/bin/concentratord"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	if err != nil || len(ownLines(out, unit)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 0.0 (locked down) to 10.0; the unit scores about 2.2.
	out, err = exec.Command(sa, "security", "--offline=true", "--threshold=25", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.5 (%v)\n%s", err, out)
	}
	// The checks can fail: a misspelt setting is reported.
	bad := filepath.Join(dir, "bad.service")
	if err := os.WriteFile(bad, bytes.Replace(b, []byte("ProtectSystem=strict"), []byte("ProtectSystem=strikt"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command(sa, "verify", bad).CombinedOutput(); !bytes.Contains(out, []byte("strikt")) {
		t.Errorf("systemd-analyze verify did not report ProtectSystem=strikt:\n%s", out)
	}
}

// ownLines are the lines of systemd-analyze's output about our unit:
// verify also loads the host's units and warns about them (e.g. a
// deprecated setting in another package's service), which is not ours
// to fail on.
func ownLines(out []byte, unit string) []string {
	var own []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "/") && !strings.HasPrefix(l, unit) {
			continue
		}
		own = append(own, l)
	}
	return own
}
