package concentrator

import (
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func TestEAPConfigValidation(t *testing.T) {
	withEAP := func(eap string) string {
		return strings.Replace(minimal, "auth:\n", "auth:\n  eap:\n"+eap, 1)
	}
	server := "    radius:\n      servers:\n        - address: 127.0.0.1:1812\n          secret: radius-shared-secret-0123\n"
	wantFieldErr(t, withEAP(server), "identity.cert", "EAP peers authenticate this node by its certificate")
	wantFieldErr(t, withEAP("    radius:\n      servers:\n        - secret: radius-shared-secret-0123\n"), "auth.eap.radius.servers[0].address", "required")
	wantFieldErr(t, withEAP("    radius:\n      servers:\n        - address: 127.0.0.1:1812\n"), "auth.eap.radius.servers[0].secret", "exactly one")
	wantFieldErr(t, withEAP("    radius:\n      servers:\n        - address: 127.0.0.1:1812\n          secret: short\n"), "auth.eap.radius.servers[0].secret", "too short")
	wantFieldErr(t, withEAP("    identities: [\"[\"]\n"+server), "auth.eap.identities[0]", "bad pattern")
	wantFieldErr(t, withEAP("    identities: [\"*@eap.example\"]\n"), "auth.eap.radius.servers", "no RADIUS server")
	wantFieldErr(t, withEAP(server+"      retries: 11\n"), "auth.eap.radius.retries", "0 (default 3) to 10")
	wantFieldErr(t, withEAP("    max_rounds: -1\n"+server), "auth.eap.max_rounds", "1000")

	// With a certificate the section is accepted, and its identity
	// patterns become the engine's policy.
	cfg := Config{Identity: IdentityConfig{Cert: "/c.pem"}}
	cfg.Auth.EAP = EAPConfig{Identities: []string{"*@eap.example"}, RADIUS: EAPRADIUSConfig{Servers: []RADIUSServerConfig{{Address: "127.0.0.1:1812", Secret: "radius-shared-secret-0123"}}}}
	if err := cfg.validateEAP(); err != nil {
		t.Fatal(err)
	}
	ec := cfg.eapEngineConfig()
	for id, want := range map[string]bool{"gw1@eap.example": true, "gw1@iot.example": false} {
		if got := ec.Allowed(ike.Identity{Type: ike.IDRFC822Addr, Data: []byte(id)}); got != want {
			t.Errorf("EAP allowed for %s: %v, want %v", id, got, want)
		}
	}
}
