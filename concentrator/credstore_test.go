package concentrator

import (
	"fmt"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// BenchmarkCredentialLookup: the PSK lookup of an authentication against
// a store of 100,000 devices, through the layers the engine sees (the
// configuration's PSKs first, then the store's).
func BenchmarkCredentialLookup(b *testing.B) {
	c := newCredCache()
	for i := 1; i <= 100000; i++ {
		c.set(fmt.Sprintf("gw%d@iot.example", i), &statestore.Credential{Kind: statestore.CredentialPSK, Secret: []byte("device-psk-0123456789")})
	}
	l := layeredPSKs{static: ike.PSKMap{"gw0@iot.example": []byte("x")}, store: c}
	id, _ := ike.ParseIdentity("gw100000@iot.example")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, ok := l.PSK(id); !ok {
			b.Fatal("not found")
		}
	}
}

func TestLayeredCredentials(t *testing.T) {
	c := newCredCache()
	c.set("gw1@iot.example", &statestore.Credential{Kind: statestore.CredentialPSK, Secret: []byte("from-the-store")})
	c.set("gw2@iot.example", &statestore.Credential{Kind: statestore.CredentialPSK, Secret: []byte("from-the-store")})
	l := layeredPSKs{static: ike.PSKMap{"gw1@iot.example": []byte("from-the-file")}, store: c}
	for id, want := range map[string]string{"gw1@iot.example": "from-the-file", "gw2@iot.example": "from-the-store", "gw3@iot.example": ""} {
		pid, _ := ike.ParseIdentity(id)
		k, ok := l.PSK(pid)
		if string(k) != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", id, k, ok, want)
		}
	}
	if err := c.set("gw4.iot.example", &statestore.Credential{Kind: statestore.CredentialPubKey, Secret: []byte("not DER")}); err == nil {
		t.Error("a public key that does not parse was accepted")
	}
	c.set("gw2@iot.example", nil)
	if _, ok := c.PSK(ike.Identity{Type: ike.IDRFC822Addr, Data: []byte("gw2@iot.example")}); ok {
		t.Error("a revoked PSK is still held")
	}
}
