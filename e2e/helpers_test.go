package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// ikeloadSummary finds ikeload's JSON summary in its stdout: the last JSON
// object with "established" and "failed" fields, on one line or (indented)
// as the whole output.
func ikeloadSummary(stdout string) (map[string]any, error) {
	has := func(m map[string]any) bool {
		_, e := m["established"]
		_, f := m["failed"]
		return e && f
	}
	lines := strings.Split(stdout, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var m map[string]any
		if json.Unmarshal([]byte(strings.TrimSpace(lines[i])), &m) == nil && has(m) {
			return m, nil
		}
	}
	var m map[string]any
	if json.Unmarshal([]byte(strings.TrimSpace(stdout)), &m) == nil && has(m) {
		return m, nil
	}
	return nil, fmt.Errorf("no JSON summary with \"established\" and \"failed\" in ikeload's stdout:\n%s", stdout)
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startConcentratord starts concentratord --config cfg in the conc
// namespace and waits until it listens.
func startConcentratord(t *testing.T, ctx context.Context, tp *Topology, bin, name, cfg string) *Process {
	t.Helper()
	p := tp.StartProcess(t, name, tp.Conc, bin, "--config", cfg)
	p.mustWaitLog(t, ctx, 20*time.Second, "listening", nil)
	return p
}

// mustWaitLog is WaitLog bounded by d that fails the test.
func (p *Process) mustWaitLog(t *testing.T, ctx context.Context, d time.Duration, msg string, attrs map[string]string) LogRecord {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	r, err := p.WaitLog(wctx, msg, attrs)
	if err != nil {
		t.Fatalf("%s: %v", p.Name, err)
	}
	return r
}
