package concentrator

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

const minimal = `
identity:
  id: conc.example
auth:
  psks:
    - id: gw1@iot.example
      secret: s3cret-0123456789ab
children:
  local_ts: [10.30.0.0/24]
  remote_ts: [10.20.0.0/16]
`

func TestParseConfigMinimal(t *testing.T) {
	c, err := ParseConfig([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.IKE.Port != 500 || c.IKE.NATTPort != 4500 || c.DataPlane.Mode != "auto" || c.Metrics.Listen != "127.0.0.1:9180" || len(c.IKE.Proposals) == 0 {
		t.Fatalf("defaults not applied: %+v", c.IKE)
	}
	ec, err := c.engineConfig()
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := ec.PSKs.PSK(mustID(t, "gw1@iot.example")); !ok || string(k) != "s3cret-0123456789ab" {
		t.Fatal("PSK not loaded")
	}
	if !ec.ForceEncap || ec.CookieThreshold != 1000 {
		t.Fatalf("engine defaults: %+v", ec)
	}
}

func TestExampleConfigsValidate(t *testing.T) {
	for _, f := range []string{"../deploy/examples/concentratord.yaml", "../deploy/examples/demo.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseConfig(data); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// Every configuration error names the field it is about.
func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, field string }{
		{minimal + "ike:\n  bogus: 1\n", "ike.bogus"},
		{minimal + "statestore:\n  lease_ttl: 3s\n  keepalive_interval: 3s\n", "statestore.keepalive_interval"},
		{minimal + "statestore:\n  lease_ttl: 3s\n  fence_margin: 3s\n", "statestore.fence_margin"},
		{minimal + "statestore:\n  lease_ttl: 3s\n  fence_margin: 1s\n  keepalive_interval: 2s\n", "statestore.keepalive_interval"},
		{minimal + "statestore:\n  commit_delay: -1ms\n", "statestore.commit_delay"},
		{minimal + "statestore:\n  commit_delay: 1s\n", "statestore.commit_delay"},
		{minimal + "ike:\n  port: x\n", "ike.port"},
		{minimal + "ike:\n  listen: [not-an-ip]\n", "ike.listen[0]"},
		{minimal + "ike:\n  proposals: [aes256gcm16-prfsha256-x25519, 3des-sha1-modp1024]\n", "ike.proposals[1]"},
		{minimal + "ike:\n  esp_proposals: [rot13]\n", "ike.esp_proposals[0]"},
		{minimal + "ike:\n  half_open_timeout: -1s\n", "ike.half_open_timeout"},
		{minimal + "ike:\n  cookie_backlog: -1\n", "ike.cookie_backlog"},
		{minimal + "ike:\n  cookie_backlog: 8193\n", "ike.cookie_backlog"},
		{minimal + "ike:\n  socket_readers: -1\n", "ike.socket_readers"},
		{minimal + "ike:\n  socket_readers: 65\n", "ike.socket_readers"},
		{minimal + "log:\n  level: loud\n", "log.level"},
		{strings.Replace(minimal, "secret: s3cret-0123456789ab", "secret_hex: zz", 1), "auth.psks[0].secret"},
		{strings.Replace(minimal, "secret: s3cret-0123456789ab", "", 1), "auth.psks[0].secret"},
		{strings.Replace(minimal, "id: conc.example", "id: ''", 1), "identity.id"},
		{strings.Replace(minimal, "[10.30.0.0/24]", "[10.30.0.0/33]", 1), "children.local_ts[0]"},
		{minimal + "  pool: 10.0.0.0/31\n", "children.pool"},
		{minimal + "dataplane:\n  mode: warp\n", "dataplane.mode"},
		{strings.Replace(minimal, "  id: conc.example\n", "  id: conc.example\n  cert: /nonexistent.crt\n", 1), "identity.key"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("want an error at %s, got %v", tc.field, err)
		}
	}
	// A duplicated key is YAML's own error; it still says where.
	if _, err := ParseConfig([]byte(minimal + "ike:\n  port: 1\nike:\n  port: 2\n")); err == nil {
		t.Error("duplicate mapping key accepted")
	}
}

func TestEngineConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "c.pem")
	os.WriteFile(cert, []byte("not a certificate"), 0o600)
	c, err := ParseConfig([]byte(strings.Replace(minimal, "  id: conc.example\n", "  id: conc.example\n  cert: "+cert+"\n  key: "+cert+"\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.engineConfig()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "identity.cert" {
		t.Fatalf("bad certificate file: %v", err)
	}
	c, _ = ParseConfig([]byte(strings.Replace(minimal, "secret: s3cret-0123456789ab", "secret_file: "+filepath.Join(dir, "missing"), 1)))
	if _, err := c.engineConfig(); err == nil {
		t.Fatal("missing secret_file accepted")
	}
}

func mustID(t *testing.T, s string) ike.Identity {
	t.Helper()
	i, err := parseIdentity(s)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// cluster: errors name the field; plaintext only on loopback.
func TestClusterConfigErrors(t *testing.T) {
	base := "statestore:\n  mode: external\n  endpoints: [http://127.0.0.1:2379]\n  cluster_key_file: k.hex\n"
	for _, tc := range []struct{ cluster, field string }{
		{"cluster: {peer_listen: 127.0.0.1:0}", ""},
		{"cluster: {peer_listen: \"localhost:7000\", peer_advertise: \"127.0.0.1:7000\"}", ""},
		{"cluster: {peer_listen: \"0.0.0.0:7000\"}", "cluster.cert_file"},
		{"cluster: {peer_listen: \"127.0.0.1:7000\", peer_advertise: \"10.0.0.1:7000\"}", "cluster.cert_file"},
		{"cluster: {peer_listen: \"10.0.0.1:7000\", cert_file: c.pem, key_file: k.pem}", "cluster.ca_file"},
		{"cluster: {peer_listen: \"10.0.0.1:7000\", cert_file: c.pem, ca_file: ca.pem}", "cluster.key_file"},
		{"cluster: {peer_listen: \"10.0.0.1:7000\", ca_file: ca.pem}", "cluster.cert_file"},
		{"cluster: {fleet_rekeys_per_second: -1}", "cluster.fleet_rekeys_per_second"},
		{"cluster: {fleet_rekeys_per_second: 100}", ""},
		{"cluster: {peer_listen: nohost}", "cluster.peer_listen"},
		{"cluster: {peer_listen: \"example.com:7000\"}", "cluster.peer_listen"},
		{"cluster: {peer_advertise: \"127.0.0.1:7000\"}", "cluster.peer_listen"},
		{"cluster: {peer_listen: \"10.0.0.1:7000\", ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}", ""},
	} {
		_, err := ParseConfig([]byte(nodeConfig(1, "", base+tc.cluster+"\n")))
		var fe *FieldError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.cluster, err)
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
			t.Errorf("%s: %v, want an error naming %s", tc.cluster, err, tc.field)
		}
	}
	if _, err := ParseConfig([]byte(nodeConfig(1, "", "cluster: {peer_listen: 127.0.0.1:0}\n"))); err == nil ||
		!strings.Contains(err.Error(), "cluster.peer_listen") {
		t.Errorf("peer API without a state store: %v", err)
	}
}
