package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A scale run against real nodes, in miniature: 1,000 held, a probe,
// growth to 1,100, a probe, then a fresh node at 1,000 and a probe again.
// Each probe's gateways come and go, so the SAs held are where the report
// says.
func TestScaleRunProbesAFreshNodeAgain(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "concentratord")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "go"
	}
	if out, err := exec.Command(goTool, "build", "-o", bin, "../concentratord").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err = run(ctx, []string{"--rows", "", "--burst", "0", "--pin=false", "--engine-cpu", "100us", "--concentratord", bin,
		"--burst-config", "memory+embedded", "--scale", "1100", "--scale-probe", "200", "--scale-settle", "0",
		"--rate", "300", "--scale-rate", "600", "--timeout", "60s", "--cpuprofile", filepath.Join(t.TempDir(), "cpu")}, &out)
	s := out.String()
	if err != nil || strings.Contains(s, "scale: error") {
		t.Fatalf("run: %v\n%s", err, s)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`scale: memory\+embedded .*, 1100 SAs established; from 1,000 to them in [0-9]+ s \([0-9]+/s; asked 600/s\)`),
		regexp.MustCompile(`at 1,000 established [0-9.]+ ms .* at 1100 established [0-9.]+ ms .*: ratio [0-9.]+`),
		regexp.MustCompile(`again at 1,000 established, on a fresh node after the probe at 1100: [0-9.]+ ms .* against the mean of the two probes at 1,000 \([0-9.]+ ms\): ratio [0-9.]+`),
		regexp.MustCompile(`node during the probe at 1,000 again: .*0 handshakes failed.*, etcd transactions [0-9.]+ per SA`),
		// The probes' profiles (--cpuprofile), summed by part side by side.
		regexp.MustCompile(`where the node's CPU per setup and delete went in the probes \(their CPU profiles, [0-9.]+ s and [0-9.]+ s sampled`),
		regexp.MustCompile(`\n +at 1,000 +at 1100 +ratio\n( {4}\S.* +[0-9.]+ ms +[0-9.]+ ms +\S+\n)+`),
	} {
		if !want.MatchString(s) {
			t.Errorf("no %q in:\n%s", want, s)
		}
	}
}
