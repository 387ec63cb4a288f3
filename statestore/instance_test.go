package statestore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Two processes never share a node id: a second one with another instance
// waits out the first's lease and, since it is still renewed, refuses to
// register; once the first is killed its registration lapses and the
// second takes the id over.
func TestDuplicateNodeID(t *testing.T) {
	e := startEtcd(t, false)
	first := testConfig(t, "gw-node")
	first.LeaseTTL = 2 * time.Second
	a, err := Open(tctx(t, 10*time.Second), dial(t, e.Endpoints()), first)
	if err != nil {
		t.Fatal(err)
	}
	second := first
	second.Instance = "another-installation"
	second.PeerAddr = "second:9"
	_, err = Open(tctx(t, 20*time.Second), dial(t, e.Endpoints()), second)
	var inUse *NodeIDInUseError
	if !errors.As(err, &inUse) || inUse.NodeID != "gw-node" {
		t.Fatalf("second node with the same id: %v, want *NodeIDInUseError", err)
	}
	if !a.CanSend() {
		t.Fatal("the first node lost its registration to a duplicate")
	}
	t.Logf("refused: %v", err)

	// The first one dies (lease not revoked): the id is free after its TTL.
	o1, _ := a.Registration()
	a.Abandon()
	b := open(t, dial(t, e.Endpoints()), second)
	if o2, _ := b.Registration(); o2.Epoch <= o1.Epoch || !b.CanSend() {
		t.Fatalf("after the first died: %v (first %v)", o2, o1)
	}
}

func TestLoadInstance(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	a, err := LoadInstance(dir)
	if err != nil || len(a) != 32 {
		t.Fatalf("first: %q %v", a, err)
	}
	b, err := LoadInstance(dir)
	if err != nil || b != a {
		t.Fatalf("second: %q %v, want %q", b, err, a)
	}
	fi, err := os.Stat(filepath.Join(dir, instanceFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
}
