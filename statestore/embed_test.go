package statestore

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A port picked for the embedded member may be taken before etcd binds it
// (another process, parallel tests): the member picks again instead of
// failing the node's start.
func TestEmbeddedPicksAgainWhenPortTaken(t *testing.T) {
	taken, picks := pickTaken(t, 1) // the first pick
	e, err := StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatalf("start with the first picked port taken: %v", err)
	}
	defer e.Close()
	if *picks < 3 || strings.Contains(e.Endpoints()[0], taken) {
		t.Fatalf("%d picks, client endpoint %v (taken: %v)", *picks, e.Endpoints(), taken)
	}
	// A configured address is not replaced.
	_, err = StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true, ClientAddr: taken})
	if err == nil {
		t.Fatal("a configured address that is taken: started anyway")
	}
}

// The same for a stand-alone node's member (OpenEmbedded), whose ports are
// chosen at its first start and kept in its data directory: a port taken
// before etcd binds it is chosen again, and the file names the ports the
// member got; once it has them, a restart keeps them.
func TestOpenEmbeddedChoosesAgainWhenPortTaken(t *testing.T) {
	taken, picks := pickTaken(t, 2) // the first start's peer port
	dir := t.TempDir()
	e, err := OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatalf("first start with a chosen port taken: %v", err)
	}
	addrs, err := os.ReadFile(filepath.Join(dir, embeddedAddrsFile))
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if *picks != 4 || strings.Contains(string(addrs), taken) {
		t.Fatalf("%d picks, addresses kept %q (taken: %v)", *picks, addrs, taken)
	}
	e, err = OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer e.Close()
	again, _ := os.ReadFile(filepath.Join(dir, embeddedAddrsFile))
	if *picks != 4 || string(again) != string(addrs) {
		t.Fatalf("restart chose ports again: %d picks, %q then %q", *picks, addrs, again)
	}
}

// pickTaken makes the n-th port picked for an embedded member one that
// someone holds meanwhile (its address is returned) and counts the picks,
// until the test ends.
func pickTaken(t *testing.T, n int) (taken string, picks *int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	picks = new(int)
	pickAddr = func(addr string) (string, error) {
		if addr != "" {
			return addr, nil
		}
		if *picks++; *picks == n {
			return l.Addr().String(), nil
		}
		return freeAddr(addr)
	}
	t.Cleanup(func() {
		pickAddr = freeAddr
		l.Close()
	})
	return l.Addr().String(), picks
}
