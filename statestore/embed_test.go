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
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	pickAddr = func(addr string) (string, error) {
		if addr != "" {
			return addr, nil
		}
		picks++
		if picks == 1 { // the first pick: a port someone holds meanwhile
			return taken.Addr().String(), nil
		}
		return freeAddr(addr)
	}
	defer func() { pickAddr = freeAddr }()
	e, err := StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatalf("start with the first picked port taken: %v", err)
	}
	defer e.Close()
	if picks < 3 || strings.Contains(e.Endpoints()[0], taken.Addr().String()) {
		t.Fatalf("%d picks, client endpoint %v (taken: %v)", picks, e.Endpoints(), taken.Addr())
	}
	// A configured address is not replaced.
	_, err = StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true, ClientAddr: taken.Addr().String()})
	if err == nil {
		t.Fatal("a configured address that is taken: started anyway")
	}
}
