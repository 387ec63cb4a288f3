package lb

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func alive(ms []Member) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		if m.Alive {
			out[m.Name] = true
		}
	}
	return out
}

// Three members gossiping on loopback: they find each other through one,
// spread health and load, pick the least loaded healthy other member as a
// redirect target, and notice a member that stops without leaving.
func TestMembersThreeOnLoopback(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	var ms []*Members
	for i, name := range []string{"n1", "n2", "n3"} {
		cfg := MembersConfig{Listen: "127.0.0.1:0"}
		if i > 0 {
			cfg.Join = []string{ms[0].Addr()}
		}
		m, err := NewMembers(cfg, name, Meta{Unicast: "192.0.2." + string(rune('1'+i))}, log)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ms = append(ms, m)
	}
	for _, m := range ms {
		waitFor(t, "three alive members", func() bool { return len(alive(m.List())) == 3 })
	}
	// n1 draining, n2 loaded, n3 lightly loaded: n3 is n1's target; then
	// n3 unhealthy: n2.
	ms[0].SetLocal(Meta{Healthy: true, Draining: true, SAs: 10})
	ms[1].SetLocal(Meta{Healthy: true, SAs: 500})
	ms[2].SetLocal(Meta{Healthy: true, SAs: 20})
	waitFor(t, "n3 as the redirect target", func() bool {
		a, ok := ms[0].RedirectTarget()
		return ok && a == netip.MustParseAddr("192.0.2.3")
	})
	waitFor(t, "n1's drain seen by n2", func() bool {
		for _, m := range ms[1].List() {
			if m.Name == "n1" {
				return m.Draining && m.SAs == 10
			}
		}
		return false
	})
	ms[2].SetLocal(Meta{Healthy: false, SAs: 20})
	waitFor(t, "n2 as the target once n3 is unhealthy", func() bool {
		a, ok := ms[0].RedirectTarget()
		return ok && a == netip.MustParseAddr("192.0.2.2")
	})
	// n2 stops without leaving (a crash): the others find it dead.
	ms[1].mu.Lock()
	ms[1].closed = true // Close would Leave: not for a crash
	ms[1].mu.Unlock()
	if err := ms[1].ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		waitFor(t, "n2 found dead", func() bool { a := alive(ms[i].List()); return len(a) == 2 && !a["n2"] })
	}
	if _, ok := ms[0].RedirectTarget(); ok {
		t.Fatal("a redirect target with n2 dead, n3 unhealthy")
	}
}

// With members.secret_key_file, gossip is encrypted and authenticated:
// two members with the key find each other; one without it, or with
// another key, cannot join them, and they never list it. A key file the
// group or others may read is refused, naming the field.
func TestMembersSecretKey(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	dir := t.TempDir()
	keyFile := func(name, hexKey string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(hexKey+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := keyFile("k", strings.Repeat("ab", 32), 0o600)
	other := keyFile("o", strings.Repeat("cd", 32), 0o600)
	a, err := NewMembers(MembersConfig{Listen: "127.0.0.1:0", SecretKeyFile: key}, "a", Meta{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := NewMembers(MembersConfig{Listen: "127.0.0.1:0", SecretKeyFile: key, Join: []string{a.Addr()}}, "b", Meta{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	waitFor(t, "a and b together", func() bool { return len(alive(a.List())) == 2 && len(alive(b.List())) == 2 })
	for _, k := range []string{"", other} {
		m, err := NewMembers(MembersConfig{Listen: "127.0.0.1:0", SecretKeyFile: k}, "intruder", Meta{Unicast: "203.0.113.9"}, log)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := m.Join([]string{a.Addr()}); err == nil || n != 0 {
			t.Errorf("key %q: joined %d members", k, n)
		}
		time.Sleep(500 * time.Millisecond) // a gossip round or two
		if got := alive(a.List()); got["intruder"] {
			t.Errorf("key %q: a lists the intruder: %v", k, got)
		}
		m.Close()
	}
	loose := keyFile("loose", strings.Repeat("ab", 32), 0o644)
	var fe *FieldError
	if _, err := NewMembers(MembersConfig{Listen: "127.0.0.1:0", SecretKeyFile: loose}, "c", Meta{}, log); !errors.As(err, &fe) ||
		fe.Field != "members.secret_key_file" || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("key file readable by others: %v", err)
	}
}
