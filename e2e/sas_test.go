package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// These tests need no root: they check the harness's parsers and configs.

func TestParseListSAs(t *testing.T) {
	b, err := os.ReadFile("testdata/list-sas-pretty.txt")
	if err != nil {
		t.Fatal(err)
	}
	sas, err := ParseListSAs(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != 2 {
		t.Fatalf("got %d SAs, want 2: %v", len(sas), sas)
	}
	sa, ok := FindIKESA(sas, "gw")
	if !ok || sa.Get("uniqueid") != "1" {
		t.Fatalf("FindIKESA: %v %v", sa, ok)
	}
	if got, want := sa.Get("remote-id"), "C=XX, O=ikefleet e2e, CN=gw1.iot.example"; got != want {
		t.Errorf("remote-id %q, want %q", got, want)
	}
	if got := sa.Proposal(); got != IKEPropSS {
		t.Errorf("Proposal() = %q, want %q", got, IKEPropSS)
	}
	c, ok := sa.Child("lan")
	if !ok || c.Get("state") != "INSTALLED" || c.Get("encap") != "yes" {
		t.Fatalf("child: %v %v", c, ok)
	}
	if !slices.Equal(c.LocalTS, []string{ConcLAN}) || !slices.Equal(c.RemoteTS, []string{GWLAN}) {
		t.Errorf("TS %v === %v", c.LocalTS, c.RemoteTS)
	}
	if len(sas[1].Children) != 0 || sas[1].Get("state") != "CONNECTING" {
		t.Errorf("second SA: %v", sas[1])
	}

	if sas, err := ParseListSAs("list-sas reply {\n}\n"); err != nil || len(sas) != 0 {
		t.Errorf("empty listing: %v, %v", sas, err)
	}
	for _, bad := range []string{"list-sa event {\n  gw {\n", "}\n", "list-sa event {\n  what\n}\n"} {
		if _, err := ParseListSAs(bad); err == nil {
			t.Errorf("ParseListSAs(%q): no error", bad)
		}
	}
}

func TestIkeloadSummary(t *testing.T) {
	for _, out := range []string{
		`{"established":1,"failed":0,"setup_ms":{"p50":3}}` + "\n",
		"starting\n{\"established\": 1, \"failed\": 0}\n",
		"{\n  \"established\": 1,\n  \"failed\": 0\n}\n",
	} {
		m, err := ikeloadSummary(out)
		if err != nil || m["established"] != float64(1) || m["failed"] != float64(0) {
			t.Errorf("ikeloadSummary(%q) = %v, %v", out, m, err)
		}
	}
	if _, err := ikeloadSummary(`{"count":1}`); err == nil {
		t.Error("summary without established/failed accepted")
	}
}

// TestConcentratordConfigKeys guards against schema drift: every key the
// interop tests put in concentratord's configuration must appear in the
// documented example (deploy/examples/concentratord.yaml), whose keys are
// the schema (unknown keys are errors).
func TestConcentratordConfigKeys(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(root + "/deploy/examples/concentratord.yaml")
	if err != nil {
		t.Fatalf("the example configuration is part of the repository: %v", err)
	}
	keys := map[string]bool{}
	for _, line := range strings.Split(string(example), "\n") {
		line = strings.TrimLeft(strings.TrimSpace(line), "- ")
		if k, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") && !strings.Contains(k, " ") {
			keys[k] = true
		}
	}
	for _, auth := range []Auth{AuthPSK, AuthECDSA} {
		for _, line := range strings.Split(ConcentratordConfig(auth, "/c", "/k", "/ca"), "\n") {
			line = strings.TrimLeft(strings.TrimSpace(line), "- ")
			if k, _, ok := strings.Cut(line, ":"); ok && !keys[k] {
				t.Errorf("%s config: key %q is not in deploy/examples/concentratord.yaml", auth, k)
			}
		}
	}
}
