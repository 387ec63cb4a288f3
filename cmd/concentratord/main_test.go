package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
	"github.com/ikefleet/ikefleet/internal/buildinfo"
)

// cli runs the command line as main does and returns the exit status and
// what went to stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := exitCode(run(context.Background(), args, &out, &errb), &errb)
	return code, out.String(), errb.String()
}

const example = "../../deploy/examples/concentratord.yaml"

func TestHelpVersionAndBadFlags(t *testing.T) {
	for _, h := range []string{"--help", "-h", "-help"} {
		code, out, _ := cli(t, h)
		if code != 0 || !strings.Contains(out, "Usage: concentratord") || !strings.Contains(out, "-print-config") {
			t.Errorf("%s: exit %d, stdout %q", h, code, out)
		}
	}
	code, out, _ := cli(t, "--version")
	if code != 0 || out != "concentratord "+buildinfo.Get()+" ("+buildinfo.GoVersion()+")\n" {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	for _, args := range [][]string{{"--bogus"}, {"--config"}, {"--config", example, "extra"}, {}, {"--check"}} {
		code, out, errs := cli(t, args...)
		if code != 2 || out != "" || errs == "" {
			t.Errorf("%q: exit %d (want 2), stdout %q, stderr %q", args, code, out, errs)
		}
	}
	if code, _, errs := cli(t, "--config", "/nonexistent.yaml"); code != 1 || !strings.Contains(errs, "nonexistent") {
		t.Errorf("missing file: exit %d, %q", code, errs)
	}
}

func TestListMetrics(t *testing.T) {
	code, out, _ := cli(t, "--list-metrics")
	if code != 0 || out != metrics.NamesText() {
		t.Fatalf("--list-metrics: exit %d\n%s", code, out)
	}
}

// --print-config prints what the node would run with: the file over the
// defaults, secrets redacted; it parses back to the same configuration
// and passes the schema.
func TestPrintConfig(t *testing.T) {
	code, out, errs := cli(t, "--config", example, "--print-config")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Contains(out, "interop-test-psk") || !strings.Contains(out, "secret: "+concentrator.Redacted) {
		t.Fatalf("secrets not redacted:\n%s", out)
	}
	if err := concentrator.CheckSchema([]byte(out)); err != nil {
		t.Fatalf("printed configuration fails the schema: %v\n%s", err, out)
	}
	const placeholder = "00112233445566778899aabbccddeeff" // a valid secret and secret_hex
	back, err := concentrator.ParseConfig([]byte(strings.ReplaceAll(out, concentrator.Redacted, placeholder)))
	if err != nil {
		t.Fatalf("printed configuration does not parse: %v\n%s", err, out)
	}
	want, err := concentrator.LoadConfig(example)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want.Auth.PSKs {
		for _, s := range []*string{&want.Auth.PSKs[i].Secret, &want.Auth.PSKs[i].SecretHex} {
			if *s != "" {
				*s = placeholder
			}
		}
	}
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", back, want)
	}
	// Without a file: the defaults, dataplane auto and metrics on loopback.
	code, out, _ = cli(t, "--print-config")
	if code != 0 || !strings.Contains(out, "mode: auto") || !strings.Contains(out, "listen: 127.0.0.1:9180") {
		t.Fatalf("--print-config without --config: exit %d\n%s", code, out)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", "identity: {id: conc.example}\nauth:\n  psks:\n    - {id: gw1@iot.example, secret: s3cret-0123456789ab}\n"+
		"children:\n  local_ts: [10.30.0.0/24]\n  remote_ts: [10.20.0.0/16]\n")
	if code, out, errs := cli(t, "--config", good, "--check"); code != 0 || !strings.Contains(out, "configuration OK") {
		t.Fatalf("good config: exit %d, %q %q", code, out, errs)
	}
	for _, tc := range []struct{ yaml, want string }{
		// The schema sees a duration written as a number before the decoder does.
		{"ike:\n  dpd_delay: 60\n", "ike.dpd_delay: schema:"},
		{"metrics:\n  listen: [a]\n", "metrics.listen: schema:"},
		{"statestore:\n  etcd_log_level: loud\n", "statestore.etcd_log_level: schema:"},
		// Validate's own checks still apply.
		{"metrics:\n  listen: localhost:1\n", "metrics.listen: not an IP address"},
		// And credentials are loaded.
		{"auth:\n  psks:\n    - {id: gw9@iot.example, secret_file: /nonexistent}\n", "auth.psks[1].secret"},
	} {
		base, _ := os.ReadFile(good)
		doc := string(base) + tc.yaml
		if strings.HasPrefix(tc.yaml, "auth:") {
			doc = strings.Replace(string(base), "    - {id: gw1@iot.example, secret: s3cret-0123456789ab}\n",
				"    - {id: gw1@iot.example, secret: s3cret-0123456789ab}\n    - {id: gw9@iot.example, secret_file: /nonexistent}\n", 1)
		}
		p := write("bad.yaml", doc)
		code, _, errs := cli(t, "--config", p, "--check")
		if code != 1 || !strings.Contains(errs, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %q", tc.yaml, code, errs, tc.want)
		}
	}
}

// A configuration file with secrets in it that every account can read
// (the file and each directory above it open to others) gets a warning
// at start and from --check, naming the fields; one closed to others at
// any level, or with its secrets in files of their own, does not.
func TestCheckWarnsOfReadableSecrets(t *testing.T) {
	dir := t.TempDir()
	// t.TempDir and the directory above it are made 0700: open them up.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	psk := filepath.Join(dir, "gw1.psk")
	if err := os.WriteFile(psk, []byte("s3cret-0123456789ab\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "identity: {id: conc.example}\nchildren:\n  local_ts: [10.30.0.0/24]\n  remote_ts: [10.20.0.0/16]\n" +
		"statestore: {mode: none}\nauth:\n  psks:\n"
	inline := base + "    - {id: gw1@iot.example, secret: s3cret-0123456789ab}\n"
	inFile := base + "    - {id: gw1@iot.example, secret_file: " + psk + "}\n"
	const warning = "the configuration file holds secrets and every account on this host can read it"
	for _, tc := range []struct {
		name, doc     string
		file, dirMode os.FileMode
		warn          bool
	}{
		{"world-readable", inline, 0o644, 0o755, true},
		{"group only", inline, 0o640, 0o755, false},
		{"directory closed", inline, 0o644, 0o750, false},
		{"secrets in files", inFile, 0o644, 0o755, false},
	} {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(tc.doc), tc.file); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, tc.file) // past the umask
		os.Chmod(dir, tc.dirMode)
		code, out, errs := cli(t, "--config", p, "--check")
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", tc.name, code, errs)
		}
		if got := strings.Contains(out, warning); got != tc.warn {
			t.Errorf("%s: warned %v, want %v:\n%s", tc.name, got, tc.warn, out)
		} else if got && !strings.Contains(out, "auth.psks[0].secret") {
			t.Errorf("%s: the warning names no field:\n%s", tc.name, out)
		}
	}
	os.Chmod(dir, 0o755)

	// A fleet's PSKs inline: the warning names the first few and counts
	// the rest, instead of a line as long as the table.
	many := base
	for i := range 25 {
		many += fmt.Sprintf("    - {id: gw%d@iot.example, secret: s3cret-0123456789ab}\n", i)
	}
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte(many), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	code, out, errs := cli(t, "--config", p, "--check")
	if code != 0 {
		t.Fatalf("25 PSKs: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, warning) || !strings.Contains(out, "auth.psks[9].secret and 15 more") ||
		strings.Contains(out, "auth.psks[10].secret") || !strings.Contains(out, `"secrets":25`) {
		t.Errorf("25 PSKs: the warning does not name 10 fields and count the rest:\n%s", out)
	}
}
