package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// CharonPath is strongSwan's IKE daemon as Debian installs it.
const CharonPath = "/usr/lib/ipsec/charon"

// missingDeps lists what this host lacks for namespace tests, empty if none.
func missingDeps() []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (euid 0)")
	}
	for _, bin := range []string{"ip", "nft", "sysctl", "swanctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" in PATH")
		}
	}
	if fi, err := os.Stat(CharonPath); err != nil || fi.Mode()&0o111 == 0 {
		missing = append(missing, CharonPath)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun (kernel-libipsec needs TUN)")
	}
	return missing
}

// requireNetns gates a namespace test. When something it needs is missing
// the test is skipped, or, with CI=true, fails naming what is missing: in
// CI a tier never silently skips.
func requireNetns(t testing.TB) {
	t.Helper()
	missing := missingDeps()
	if len(missing) == 0 {
		return
	}
	missingDependency(t, "network-namespace test needs: "+strings.Join(missing, ", "))
}

// missingDependency skips the test for a missing dependency (msg says
// which), or fails it with CI=true: in CI a tier never silently skips.
func missingDependency(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: missing dependencies are failures)", msg)
	}
	t.Skip(msg)
}
