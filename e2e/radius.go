package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// FreeRADIUSDir is where Debian's freeradius package keeps its
// configuration; tests copy it and adapt the copy.
const FreeRADIUSDir = "/etc/freeradius/3.0"

// RADIUSSecret is the shared secret between concentratord and the test's
// FreeRADIUS.
const RADIUSSecret = "radius-shared-secret-0123"

// FreeRADIUS is a FreeRADIUS server run by a test inside a namespace,
// listening on 127.0.0.1:1812 there, with its own configuration directory.
type FreeRADIUS struct {
	Dir  string // the raddb copy
	Proc *Process
}

// RADIUSUser is one user of the server's users file.
type RADIUSUser struct {
	Name, Password string // Cleartext-Password (EAP-MSCHAPv2, PEAP, TTLS); empty for EAP-TLS users
}

// requireFreeRADIUS gates a test on Debian's freeradius package: skipped
// without it, failed with CI=true.
func requireFreeRADIUS(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("freeradius")
	if err == nil {
		if _, err = os.Stat(FreeRADIUSDir); err == nil {
			return bin
		}
	}
	missingDependency(t, "EAP test needs FreeRADIUS (Debian package freeradius): "+err.Error())
	return ""
}

// StartFreeRADIUS runs FreeRADIUS in namespace ns for the client
// 127.0.0.1 (secret RADIUSSecret) and users. EAP-TLS uses serverCert /
// serverKey (PEM files) and trusts client certificates of caFile; the
// default EAP type is MSCHAPv2 (peers that want another method NAK it).
func StartFreeRADIUS(t testing.TB, tp *Topology, ns string, users []RADIUSUser, serverCert, serverKey, caFile string) *FreeRADIUS {
	t.Helper()
	bin := requireFreeRADIUS(t)
	dir := t.TempDir()
	raddb := filepath.Join(dir, "raddb")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := run(ctx, nil, "cp", "-a", FreeRADIUSDir, raddb); err != nil {
		t.Fatalf("copy %s: %v\n%s", FreeRADIUSDir, err, out)
	}
	for _, d := range []string{"run", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	edit := func(name string, rules ...string) {
		t.Helper()
		p := filepath.Join(raddb, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for i := 0; i+1 < len(rules); i += 2 {
			re := regexp.MustCompile(rules[i])
			if !re.MatchString(s) {
				t.Fatalf("FreeRADIUS %s: no line matches %q (package layout changed?)", name, rules[i])
			}
			s = re.ReplaceAllString(s, rules[i+1])
		}
		if err := os.WriteFile(p, []byte(s), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// Runs as root (it is ours), logs and pid file in the test's dir.
	edit("radiusd.conf",
		`(?m)^(\s*)(user|group) = freerad`, "$1#$2 = freerad",
		`(?m)^logdir = .*$`, "logdir = "+filepath.Join(dir, "log"),
		`(?m)^run_dir = .*$`, "run_dir = "+filepath.Join(dir, "run"))
	edit("mods-available/eap",
		`default_eap_type = md5`, "default_eap_type = mschapv2",
		`(?m)^(\s*)private_key_file = .*$`, "${1}private_key_file = "+serverKey,
		`(?m)^(\s*)certificate_file = .*$`, "${1}certificate_file = "+serverCert,
		`(?m)^(\s*)ca_file = .*$`, "${1}ca_file = "+caFile)
	clients := fmt.Sprintf("client localhost {\n\tipaddr = 127.0.0.1\n\tsecret = %s\n\trequire_message_authenticator = yes\n}\n", RADIUSSecret)
	if err := os.WriteFile(filepath.Join(raddb, "clients.conf"), []byte(clients), 0o640); err != nil {
		t.Fatal(err)
	}
	var u strings.Builder
	for _, x := range users {
		if x.Password != "" {
			fmt.Fprintf(&u, "%q Cleartext-Password := %q\n", x.Name, x.Password)
		}
	}
	u.WriteString("DEFAULT\n") // EAP-TLS users: the certificate is the credential
	if err := os.WriteFile(filepath.Join(raddb, "mods-config/files/authorize"), []byte(u.String()), 0o640); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, bin, "-C", "-d", raddb).CombinedOutput(); err != nil {
		t.Fatalf("FreeRADIUS configuration check: %v\n%s", err, out)
	}
	fr := &FreeRADIUS{Dir: raddb}
	fr.Proc = tp.StartProcess(t, "freeradius", ns, bin, "-f", "-l", "stdout", "-d", raddb)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if _, err := fr.Proc.WaitLine(wctx, func(l string) bool { return strings.Contains(l, "Ready to process requests") }); err != nil {
		t.Fatalf("FreeRADIUS did not start: %v\n%s%s", err, tail(fr.Proc.Stdout(), 8<<10), tail(fr.Proc.Stderr(), 8<<10))
	}
	return fr
}
