//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/internal/syncbuf"
)

// StopGrace is how long Process.Stop waits after SIGTERM before SIGKILL.
const StopGrace = 5 * time.Second

// Process is a long-lived command running inside a namespace
// (ip netns exec NS ARGV...; ip execs, so the PID is the command's own).
// Its stdout and stderr are captured in memory.
type Process struct {
	Name string // label for logs
	NS   string // namespace it runs in

	cmd            *exec.Cmd
	stdout, stderr syncbuf.Buffer
	done           chan struct{} // closed when the process has exited
	waitErr        error         // valid after done

	stopOnce sync.Once
	stopErr  error
}

// StartProcess starts argv inside namespace ns. The process is stopped by
// PID (SIGTERM, SIGKILL after StopGrace) by t.Cleanup and by the topology's
// teardown; it also gets SIGKILL if the test binary dies. When the test has
// failed, cleanup logs the process's stdout and stderr.
func (tp *Topology) StartProcess(t testing.TB, name, ns string, argv ...string) *Process {
	t.Helper()
	p := &Process{Name: name, NS: ns, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A leftover child that inherited stdout must not block Wait forever.
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, ns, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	tp.track(p)
	t.Cleanup(func() {
		err := p.Stop()
		if t.Failed() {
			t.Logf("%s (pid %d, netns %s) exit: %v\n--- stdout ---\n%s\n--- stderr ---\n%s",
				name, p.PID(), ns, err, tail(p.Stdout(), 64<<10), tail(p.Stderr(), 64<<10))
		}
	})
	return p
}

// PID is the process id (of the command itself).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stdout returns everything the process has written to stdout so far.
func (p *Process) Stdout() string { return p.stdout.String() }

// Stderr returns everything the process has written to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit by itself and returns its exit error
// (nil for status 0), or ctx's error if it is still running when ctx ends.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", p.Name, ctx.Err())
	}
}

// Stop sends SIGTERM to the process by PID, and SIGKILL if it has not exited
// after StopGrace. It returns the exit error: nil when the process exited
// with status 0 (before or because of SIGTERM). Calling it again returns the
// same result.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		if p.Exited() {
			p.stopErr = p.waitErr
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			p.stopErr = p.waitErr
		case <-time.After(StopGrace):
			_ = p.cmd.Process.Kill()
			<-p.done
			p.stopErr = fmt.Errorf("%s (pid %d) ignored SIGTERM for %v; killed", p.Name, p.PID(), StopGrace)
		}
	})
	return p.stopErr
}

// WaitLine waits until a line of stdout satisfies match and returns it. It
// gives up when ctx ends or when the process exits without such a line.
func (p *Process) WaitLine(ctx context.Context, match func(line string) bool) (string, error) {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		exited := p.Exited() // read before scanning: a last line is not missed
		for _, line := range strings.Split(p.Stdout(), "\n") {
			if match(line) {
				return line, nil
			}
		}
		if exited {
			return "", fmt.Errorf("%s exited (%v) without the expected line", p.Name, p.waitErr)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
	}
}

// LogRecord is one JSON log line (log/slog's JSONHandler): "time", "level",
// "msg" and the attributes.
type LogRecord map[string]any

// Msg returns the record's "msg".
func (r LogRecord) Msg() string { s, _ := r["msg"].(string); return s }

// Attr returns the attribute key as a string: a top-level key, or failing
// that the first one found inside a slog group (nested object).
func (r LogRecord) Attr(key string) (string, bool) {
	return findAttr(map[string]any(r), key)
}

func findAttr(m map[string]any, key string) (string, bool) {
	if v, ok := m[key]; ok {
		return fmt.Sprint(v), true
	}
	for _, v := range m {
		if g, ok := v.(map[string]any); ok {
			if s, ok := findAttr(g, key); ok {
				return s, true
			}
		}
	}
	return "", false
}

// Matches reports whether the record has message msg and every attribute
// in attrs with the given (string form of its) value.
func (r LogRecord) Matches(msg string, attrs map[string]string) bool {
	if r.Msg() != msg {
		return false
	}
	for k, want := range attrs {
		if got, ok := r.Attr(k); !ok || got != want {
			return false
		}
	}
	return true
}

// LogRecords parses the JSON lines of stdout so far; other lines are skipped.
func (p *Process) LogRecords() []LogRecord {
	var recs []LogRecord
	for _, line := range strings.Split(p.Stdout(), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r LogRecord
		if json.Unmarshal([]byte(line), &r) == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

// WaitLog waits for a JSON log line on stdout with message msg and the given
// attributes (see LogRecord.Matches).
func (p *Process) WaitLog(ctx context.Context, msg string, attrs map[string]string) (LogRecord, error) {
	var rec LogRecord
	_, err := p.WaitLine(ctx, func(line string) bool {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			return false
		}
		var r LogRecord
		if json.Unmarshal([]byte(line), &r) != nil || !r.Matches(msg, attrs) {
			return false
		}
		rec = r
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for %s log {msg:%q %v}: %w", p.Name, msg, attrs, err)
	}
	return rec, nil
}

// ExitCode returns the exit status of a process that has exited, or -1
// (still running, or killed by a signal).
func (p *Process) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode()
	}
	if p.waitErr == nil {
		return 0
	}
	return -1
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[... " + fmt.Sprint(len(s)-n) + " bytes cut ...]\n" + s[len(s)-n:]
}
