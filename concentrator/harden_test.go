package concentrator

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

func wantFieldErr(t *testing.T, doc, field, says string) {
	t.Helper()
	_, err := ParseConfig([]byte(doc))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != field || !strings.Contains(err.Error(), says) {
		t.Fatalf("want an error at %s saying %q, got %v\n%s", field, says, err, doc)
	}
}

func TestSecretsValidation(t *testing.T) {
	short := strings.Replace(minimal, "secret: s3cret-0123456789ab", "secret: x", 1)
	wantFieldErr(t, short, "auth.psks[0].secret", "too short")
	if _, err := ParseConfig([]byte(short + "ike: {allow_weak: true}\n")); err != nil {
		t.Fatalf("short PSK with ike.allow_weak: %v", err)
	}
	shortHex := strings.Replace(minimal, "secret: s3cret-0123456789ab", "secret_hex: 0011223344", 1)
	wantFieldErr(t, shortHex, "auth.psks[0].secret", "too short")

	noCreds := "identity: {id: conc.example}\nchildren: {local_ts: [10.30.0.0/24], pool: 10.99.0.0/16}\n"
	wantFieldErr(t, noCreds, "auth", "no credentials")

	ext := minimal + "statestore:\n  mode: external\n  cluster_key_file: /k\n"
	wantFieldErr(t, ext+"  endpoints: [https://10.0.0.1:2379]\n", "statestore.ca_file", "required")
	tls := "  ca_file: /ca.pem\n  cert_file: /c.pem\n  key_file: /k.pem\n"
	wantFieldErr(t, ext+tls+"  endpoints: [http://10.0.0.1:2379]\n", "statestore.endpoints[0]", "plain http")
	wantFieldErr(t, ext+tls+"  endpoints: [10.0.0.1:2379]\n", "statestore.endpoints[0]", "")
	wantFieldErr(t, ext+"  ca_file: /ca.pem\n  endpoints: [https://10.0.0.1:2379]\n", "statestore.cert_file", "required")
	for _, ep := range []string{"https://10.0.0.1:2379", "http://127.0.0.1:2379", "http://localhost:2379", "http://[::1]:2379"} {
		if _, err := ParseConfig([]byte(ext + tls + "  endpoints: [\"" + ep + "\"]\n")); err != nil {
			t.Fatalf("%s: %v", ep, err)
		}
	}
	// Another node's embedded member, through its socket: local, no TLS.
	if _, err := ParseConfig([]byte(ext + "  endpoints: [\"unix:///var/lib/ikefleet/etcd/client.sock\"]\n")); err != nil {
		t.Fatalf("unix socket endpoint: %v", err)
	}
	wantFieldErr(t, ext+"  endpoints: [\"unix://etcd/client.sock\"]\n", "statestore.endpoints[0]", "unix:///absolute/path")
	wantFieldErr(t, ext+"  endpoints: [\"unix:///run/etcd.sock\", https://10.0.0.1:2379]\n", "statestore.ca_file", "required")
	wantFieldErr(t, minimal+"log: {per_event_rate: -1}\n", "log.per_event_rate", "")
	wantFieldErr(t, minimal+"ike: {max_init_message_size: 100}\n", "ike.max_init_message_size", "")
	wantFieldErr(t, minimal+"ike: {half_open_prefix4: 33}\n", "ike.half_open_prefix4", "")
	// 50 x (2 x 8,192 + 1,024) bytes is more than half of 1 MiB; 25 is not.
	wantFieldErr(t, minimal+"ike: {max_half_open_per_prefix: 50, max_half_open_bytes: 1048576}\n", "ike.max_half_open_per_prefix", "more than half of ike.max_half_open_bytes")
	if _, err := ParseConfig([]byte(minimal + "ike: {max_half_open_per_prefix: 25, max_half_open_bytes: 1048576}\n")); err != nil {
		t.Fatal(err)
	}
}

// Private keys, PSK files and the cluster key readable by group or others
// are refused, naming the field.
func TestKeyFilePermissions(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "gw.psk")
	if err := os.WriteFile(psk, []byte("a-long-enough-psk-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(minimal, "secret: s3cret-0123456789ab", "secret_file: "+psk, 1) + "statestore: {mode: none}\nmetrics: {listen: \"\"}\nadmin: {listen: \"\"}\n"
	cfg, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	_, err = New(cfg, log, memory.New())
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "auth.psks[0].secret_file" || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("world-readable PSK file: %v", err)
	}
	if err := os.Chmod(psk, 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg, log, memory.New())
	if err != nil {
		t.Fatalf("PSK file 0600: %v", err)
	}
	_ = n

	key := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := statestore.LoadKeyring(key, ""); err == nil || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("group-readable cluster key: %v", err)
	}
	os.Chmod(key, 0o600)
	if _, err := statestore.LoadKeyring(key, ""); err != nil {
		t.Fatal(err)
	}

	// The other files of secrets: TLS keys of the admin API, the peer API
	// and the etcd client; RADIUS shared secrets.
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("radius-shared-secret-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ field, doc string }{
		{"admin.key_file", "admin: {listen: \"\", key_file: " + secret + "}\n"},
		{"cluster.key_file", "cluster: {key_file: " + secret + "}\n"},
		{"statestore.key_file", "statestore: {mode: external, key_file: " + secret + "}\n"},
		{"auth.eap.radius.servers[1].secret_file", "auth: {eap: {radius: {servers: [{secret_file: " + psk + "}, {secret_file: " + secret + "}]}}}\n"},
	} {
		c := cfg
		if err := yaml.Unmarshal([]byte(tc.doc), &c); err != nil {
			t.Fatal(err)
		}
		err := c.checkSecretFiles()
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), "group or others") {
			t.Errorf("%s readable by others: %v", tc.field, err)
		}
		os.Chmod(secret, 0o600)
		if err := c.checkSecretFiles(); err != nil {
			t.Errorf("%s 0600: %v", tc.field, err)
		}
		os.Chmod(secret, 0o644)
	}
	// New refuses it (so --check does).
	c := cfg
	c.Cluster.KeyFile = secret
	if _, err := New(c, log, memory.New()); !errors.As(err, &fe) || fe.Field != "cluster.key_file" {
		t.Fatalf("New with a world-readable cluster.key_file: %v", err)
	}
}

// Failures a flood can cause once per packet or per half-open SA are
// rate-limited; those of authenticated peers and our own initiations are
// not.
func TestPerPacketKinds(t *testing.T) {
	peer, err := ike.ParseIdentity("gw1@iot.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ev   ike.Event
		want bool
	}{
		{ike.Event{Kind: ike.EventDropped}, true},
		{ike.Event{Kind: ike.EventCookieSent}, true},
		{ike.Event{Kind: ike.EventIKEFailed, SPIi: 1, Notify: ike.NO_PROPOSAL_CHOSEN}, true},
		{ike.Event{Kind: ike.EventIKEFailed, SPIi: 1, SPIr: 2, Reason: "half-open SA timed out"}, true},
		{ike.Event{Kind: ike.EventIKEFailed, SPIi: 1, SPIr: 2, PeerID: peer, Notify: ike.AUTHENTICATION_FAILED}, false},
		{ike.Event{Kind: ike.EventIKEFailed, SPIi: 1, SPIr: 2, Initiator: true, Reason: "peer did not answer IKE_SA_INIT"}, false},
		{ike.Event{Kind: ike.EventIKEEstablished, SPIi: 1, SPIr: 2, PeerID: peer}, false},
	} {
		if _, _, got := perPacketKind(tc.ev); got != tc.want {
			t.Errorf("%+v: rate-limited %v, want %v", tc.ev, got, tc.want)
		}
	}
}
