package statestore

import (
	"net"
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
