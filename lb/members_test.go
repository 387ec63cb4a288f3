package lb

import (
	"log/slog"
	"net/netip"
	"testing"
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
