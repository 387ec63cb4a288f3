package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Commands are built at most once per test binary run, into one temporary
// directory that TestMain removes (CleanupBinaries).
var (
	buildMu  sync.Mutex
	buildDir string
	built    = map[string]buildResult{}
)

type buildResult struct {
	path string
	err  error
}

// Binary returns the path of the project's command ./cmd/<name> (e.g.
// "concentratord", "ikeload"), built with go build the first time a test
// asks for it. A failed build fails every test that asks for that command,
// with the compiler's output. With E2E_BIN_DIR set, $E2E_BIN_DIR/<name> is
// used as is instead.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("E2E_BIN_DIR"); dir != "" {
		p, err := filepath.Abs(filepath.Join(dir, name))
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			t.Fatalf("E2E_BIN_DIR: %v", err)
		}
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	r, ok := built[name]
	if !ok {
		start := time.Now()
		r.path, r.err = build(name)
		built[name] = r
		if r.err == nil {
			t.Logf("built ./cmd/%s in %v", name, time.Since(start).Round(time.Millisecond))
		}
	}
	if r.err != nil {
		t.Fatalf("build ./cmd/%s: %v", name, r.err)
	}
	return r.path
}

func build(name string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if buildDir == "" {
		if buildDir, err = os.MkdirTemp("", "ikf-bin-"); err != nil {
			return "", err
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(buildDir, name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w\n%s", err, b)
	}
	return out, nil
}

// moduleRoot is the directory holding go.mod, found upwards from the
// working directory (go test runs in the package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// CleanupBinaries removes the binaries Binary built. Call it from TestMain
// after m.Run.
func CleanupBinaries() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
		buildDir = ""
	}
	built = map[string]buildResult{}
}
