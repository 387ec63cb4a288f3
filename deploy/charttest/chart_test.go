package charttest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.concentratord.yaml from the chart")

func TestChartLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion("v1.31.0")
	if err != nil {
		t.Fatal(err)
	}
	// Lint mode logs each missing required value through the log package.
	log.SetOutput(io.Discard)
	defer log.SetOutput(os.Stderr)
	for _, file := range append([]string{""}, exampleValues(t)...) {
		name := filepath.Base(file)
		if file == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, readValues(t, file), namespace, kv)
			for _, m := range l.Messages {
				// Lint mode turns missing required values into warnings;
				// rendering (TestDefaultsNameWhatIsRequired) makes them errors.
				if file == "" && m.Severity == support.WarningSev && strings.Contains(m.Err.Error(), "is required") {
					continue
				}
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %v", m)
				} else {
					t.Logf("lint: %v", m)
				}
			}
		})
	}
}

func TestValuesMatchSchema(t *testing.T) {
	c := loadChart(t)
	for _, file := range append([]string{filepath.Join(chartDir, "values.yaml")}, exampleValues(t)...) {
		vals, err := chartutil.CoalesceValues(c, readValues(t, file))
		if err != nil {
			t.Fatal(err)
		}
		if err := chartutil.ValidateAgainstSchema(c, vals); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}

// The schema refuses what concentratord or the chart would refuse later,
// and says where.
func TestSchemaRejects(t *testing.T) {
	c := loadChart(t)
	base := readValues(t, exampleValues(t)[0])
	for _, tc := range []struct {
		path string
		v    any
		want string // part of the error
	}{
		{"concentrator.config.ike.port", "500", "/concentrator/config/ike/port"},
		{"concentrator.config.ike.prot", 500, "prot"},
		{"concentrator.config.ike.dpd_delay", "60 seconds", "/concentrator/config/ike/dpd_delay"},
		{"concentrator.config.ike.retransmit_tries", 0, "/concentrator/config/ike/retransmit_tries"},
		{"concentrator.config.ike.fragment_size", 100, "/concentrator/config/ike/fragment_size"},
		{"concentrator.config.dataplane.mode", "kernel", "/concentrator/config/dataplane/mode"},
		{"concentrator.config.dataplane.xfrm.hthresh4", []any{32}, "/concentrator/config/dataplane/xfrm/hthresh4"},
		{"concentrator.config.statestore", map[string]any{"mode": "none"}, "statestore"},
		{"concentrator.config.identity", map[string]any{"id": "x"}, "identity"},
		{"concentrator.identity.sendCert", "never", "/concentrator/identity/sendCert"},
		{"concentrator.auth.psks", []any{map[string]any{"id": "gw1@iot.example"}}, "/concentrator/auth/psks/0"},
		{"concentrator.auth.psks", []any{map[string]any{"id": "gw1@iot.example", "key": "../etc/passwd"}}, "/concentrator/auth/psks/0/key"},
		{"concentrator.auth.credentialStore", "yes", "/concentrator/auth/credentialStore"},
		{"concentrator.auth.eap.radius.servers", []any{map[string]any{"address": "radius:1812"}}, "/concentrator/auth/eap/radius/servers/0"},
		{"concentrator.auth.eap.radius.servers", []any{map[string]any{"address": "radius:1812", "secretKey": "../s"}}, "/concentrator/auth/eap/radius/servers/0/secretKey"},
		{"concentrator.auth.eap.radius.servers", []any{map[string]any{"address": "radius 1812", "secretKey": "s"}}, "/concentrator/auth/eap/radius/servers/0/address"},
		{"concentrator.auth.eap.radius.timeout", "2 seconds", "/concentrator/auth/eap/radius/timeout"},
		{"concentrator.auth.eap.radius.accounting", true, "accounting"},
		{"concentrator.auth.revocation", map[string]any{"ocsp": "maybe"}, "/concentrator/auth/revocation/ocsp"},
		{"concentrator.auth.revocation", map[string]any{"failOpen": true}, "failOpen"},
		{"concentrator.auth.revocation", map[string]any{"timeout": "3"}, "/concentrator/auth/revocation/timeout"},
		{"etcd.mode", "embedded", "/etcd/mode"},
		{"etcd.endpoints", []any{"etcd-0:2379"}, "/etcd/endpoints/0"},
		{"etcd.leaseTTL", "1500ms", "/etcd/leaseTTL"},
		{"etcd.bundled.replicas", 2, "/etcd/bundled/replicas"},
		{"clusterKey.secretName", "Not_A_Name", "/clusterKey/secretName"},
		{"admin.listen", "localhost", "/admin/listen"},
		{"bgp.enabled", true, "/bgp/enabled"},
		{"metrics.prot", 1, "prot"},
		{"extra", 1, "extra"},
	} {
		vals, err := chartutil.CoalesceValues(c, set(t, base, tc.path, tc.v))
		if err != nil {
			t.Fatal(err)
		}
		err = chartutil.ValidateAgainstSchema(c, vals)
		if err == nil {
			t.Errorf("%s = %#v: schema accepted it", tc.path, tc.v)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %#v: error does not mention %q: %v", tc.path, tc.v, tc.want, err)
		}
	}
}

// Values without a safe default make rendering fail, naming the value.
func TestDefaultsNameWhatIsRequired(t *testing.T) {
	c := loadChart(t)
	steps := []struct {
		want string // the error names this value
		path string // then this setting satisfies it
		v    any
	}{
		{"concentrator.identity.id", "concentrator.identity.id", "vpn.example"},
		{"concentrator.config.children.local_ts", "concentrator.config.children.local_ts", []any{"10.30.0.0/24"}},
		{"clusterKey.secretName", "clusterKey.secretName", "ck"},
		{"admin.tlsSecret", "admin.tlsSecret", "admin"},
		{"etcd.tls.clientSecret", "etcd.tls.clientSecret", "etcd-client"},
		{"etcd.bundled.serverSecret", "etcd.bundled.serverSecret", "etcd-server"},
	}
	vals := map[string]any{}
	for _, s := range steps {
		_, err := render(c, vals)
		if err == nil || !strings.Contains(err.Error(), s.want+" is required") {
			t.Fatalf("render with %v: want an error naming %s, got %v", vals, s.want, err)
		}
		vals = set(t, vals, s.path, s.v)
	}
	renderObjects(t, c, vals)
	// Inconsistent values are named too.
	for _, tc := range []struct {
		path string
		v    any
		want string
	}{
		{"etcd.endpoints", []any{"https://etcd-0:2379"}, "etcd.endpoints must be empty with etcd.mode bundled"},
		{"concentrator.auth.psks", []any{map[string]any{"id": "gw1@iot.example", "key": "gw1"}}, "concentrator.auth.pskSecret is required"},
		{"concentrator.auth.caSecret", "cas", "concentrator.identity.certSecret is empty"},
		{"concentrator.auth.eap.radius.servers", []any{map[string]any{"address": "radius:1812", "secretKey": "r"}}, "concentrator.auth.eap.radius.secretName is required"},
		{"concentrator.auth.eap", map[string]any{"radius": map[string]any{"secretName": "radius", "servers": []any{map[string]any{"address": "radius:1812", "secretKey": "r"}}}}, "concentrator.identity.certSecret is empty"},
		{"concentrator.auth.eap.identities", []any{"*@eap.example"}, "need concentrator.auth.eap.radius.servers"},
		{"metrics.bindAddress", "127.0.0.1", "metrics.bindAddress 127.0.0.1 is loopback"},
	} {
		if _, err := render(c, set(t, vals, tc.path, tc.v)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s = %v: want an error containing %q, got %v", tc.path, tc.v, tc.want, err)
		}
	}
	// Loopback metrics are fine when nothing scrapes through the Service.
	lo := set(t, set(t, set(t, vals, "metrics.bindAddress", "127.0.0.1"), "metrics.service.enabled", false), "metrics.serviceMonitor.enabled", false)
	if _, err := render(c, lo); err != nil {
		t.Errorf("loopback metrics without Service or ServiceMonitor: %v", err)
	}
	ext := set(t, set(t, vals, "etcd.mode", "external"), "etcd.endpoints", []any{"http://etcd-0:2379"})
	if _, err := render(c, ext); err == nil || !strings.Contains(err.Error(), "etcd.endpoints[0]") {
		t.Errorf("plain http endpoint with TLS on: want an error naming etcd.endpoints[0], got %v", err)
	}
	if _, err := render(c, set(t, ext, "etcd.endpoints", []any{})); err == nil || !strings.Contains(err.Error(), "etcd.endpoints is required") {
		t.Errorf("external etcd without endpoints: want an error naming etcd.endpoints, got %v", err)
	}
}

// concentratord.yaml rendered from each example is kept in testdata, where
// the main module's deploy test parses it with concentratord's own
// configuration parser. The files must be what the chart renders now.
func TestRenderedConfigGolden(t *testing.T) {
	c := loadChart(t)
	for _, file := range exampleValues(t) {
		o := renderObjects(t, c, readValues(t, file))
		cm := configMap(t, o)
		name := strings.TrimSuffix(filepath.Base(file), "-values.yaml")
		golden := filepath.Join("testdata", name+".concentratord.yaml")
		got := []byte(cm.Data["concentratord.yaml"])
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (go test ./... -update rewrites it)", err)
		}
		if string(want) != string(got) {
			t.Errorf("%s differs from what %s renders (go test . -update rewrites it):\n%s", golden, file, got)
		}
	}
}

func TestInvariants(t *testing.T) {
	c := loadChart(t)
	for _, file := range exampleValues(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			vals := readValues(t, file)
			o := renderObjects(t, c, vals)
			coalesced, err := chartutil.CoalesceValues(c, vals)
			if err != nil {
				t.Fatal(err)
			}
			checkDaemonSet(t, o, coalesced)
			checkConfigFiles(t, o)
			checkPDB(t, o, coalesced)
			checkMetrics(t, o, coalesced)
			checkEtcd(t, o, coalesced)
			if !strings.Contains(o.notes, fullname) {
				t.Errorf("NOTES.txt does not name the release's DaemonSet:\n%s", o.notes)
			}
		})
	}
}

// The config checksum follows the ConfigMap and nothing else.
func TestConfigChecksum(t *testing.T) {
	c := loadChart(t)
	base := readValues(t, exampleValues(t)[0])
	sum := func(vals map[string]any) string {
		o := renderObjects(t, c, vals)
		ds := daemonSet(t, o)
		return ds.Spec.Template.Annotations["checksum/config"]
	}
	orig := sum(base)
	if got := sum(set(t, base, "concentrator.config.ike.dpd_delay", "30s")); got == orig {
		t.Error("changing concentrator.config.ike.dpd_delay left checksum/config unchanged: nodes would keep the old configuration")
	}
	if got := sum(set(t, base, "etcd.leaseTTL", "20s")); got == orig {
		t.Error("changing etcd.leaseTTL left checksum/config unchanged")
	}
	if got := sum(set(t, base, "concentrator.resources", map[string]any{"requests": map[string]any{"cpu": "1"}})); got != orig {
		t.Error("changing resources changed checksum/config")
	}
}

// The rendered configuration is what concentratord reads: its sections
// come from the values as they are, the managed ones from the chart.
func TestConfigFromValues(t *testing.T) {
	c := loadChart(t)
	vals := readValues(t, exampleValues(t)[0])
	o := renderObjects(t, c, vals)
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(configMap(t, o).Data["concentratord.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	want := vals["concentrator"].(map[string]any)["config"].(map[string]any)
	for _, section := range []string{"ike", "children", "dataplane"} {
		for k, v := range want[section].(map[string]any) {
			got := cfg[section].(map[string]any)[k]
			if !equalJSON(t, got, v) {
				t.Errorf("%s.%s: rendered %v, values say %v", section, k, got, v)
			}
		}
	}
	for _, section := range []string{"identity", "auth", "statestore", "metrics", "admin"} {
		if _, ok := cfg[section]; !ok {
			t.Errorf("rendered configuration has no %s section", section)
		}
	}
	if _, ok := cfg["node"]; ok {
		t.Error("node.id must be left to concentratord (the node's hostname): one ConfigMap serves every node")
	}
}

const fullname = releaseName + "-ikefleet"

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err1 := yaml.Marshal(a)
	jb, err2 := yaml.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(ja) == string(jb)
}

func sha256hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// pinned reports whether an image reference names a tag other than latest,
// or a sha256 digest.
func pinned(ref string) bool {
	if i := strings.Index(ref, "@sha256:"); i >= 0 {
		d := ref[i+len("@sha256:"):]
		_, err := hex.DecodeString(d)
		return len(d) == 64 && err == nil
	}
	last := ref[strings.LastIndex(ref, "/")+1:]
	i := strings.LastIndex(last, ":")
	if i < 0 {
		return false
	}
	tag := last[i+1:]
	return tag != "latest" && tagRE.MatchString(tag)
}

func TestPinned(t *testing.T) {
	for ref, want := range map[string]bool{
		"gcr.io/etcd-development/etcd:v3.6.16":   true,
		"golang:1.26.8-bookworm":                 true,
		"etcd":                                   false,
		"etcd:latest":                            false,
		"localhost:5000/etcd":                    false,
		"localhost:5000/etcd:v3":                 true,
		"etcd@sha256:" + strings.Repeat("a", 64): true,
	} {
		if got := pinned(ref); got != want {
			t.Errorf("pinned(%q) = %v, want %v", ref, got, want)
		}
	}
}

// auth.eap, auth.revocation and auth.credential_store come from the
// values (ci/eap-values.yaml): each RADIUS server's shared secret is a file
// of the mounted radius Secret (a key used by two servers is projected
// once), revocation is passed as concentratord spells it, and a chart
// without them writes none of them.
func TestAuthEAPRevocationCredentialStore(t *testing.T) {
	c := loadChart(t)
	vals := readValues(t, filepath.Join(chartDir, "ci", "eap-values.yaml"))
	vals = set(t, vals, "concentrator.auth.eap.radius.servers", []any{
		map[string]any{"address": "radius-a.infra.example:1812", "secretKey": "shared"},
		map[string]any{"address": "[2001:db8:53::10]:1812", "secretKey": "shared"},
		map[string]any{"address": "radius-c.infra.example", "secretKey": "radius-c"},
	})
	o := renderObjects(t, c, vals)
	var cfg struct {
		Auth map[string]any `json:"auth"`
	}
	if err := yaml.Unmarshal([]byte(configMap(t, o).Data["concentratord.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"cas":              []any{"/etc/ikefleet/ca/ca.crt"},
		"credential_store": true,
		"eap": map[string]any{
			"identities": []any{"*@eap.iot.example"},
			"max_rounds": float64(30),
			"radius": map[string]any{
				"servers": []any{
					map[string]any{"address": "radius-a.infra.example:1812", "secret_file": "/etc/ikefleet/radius/shared"},
					map[string]any{"address": "[2001:db8:53::10]:1812", "secret_file": "/etc/ikefleet/radius/shared"},
					map[string]any{"address": "radius-c.infra.example", "secret_file": "/etc/ikefleet/radius/radius-c"},
				},
				"timeout": "3s", "retries": float64(2), "nas_identifier": "ikefleet",
			},
		},
		"revocation": map[string]any{"ocsp": "require", "crl": "fetch", "fail_open": false, "timeout": "5s", "retries": float64(3), "retry_interval": "1m"},
	}
	gotJSON, _ := json.Marshal(cfg.Auth)
	wantJSON, _ := json.Marshal(want)
	if string(gotJSON) != string(wantJSON) {
		t.Errorf("auth rendered\n%s\nwant\n%s", gotJSON, wantJSON)
	}
	ds := daemonSet(t, o)
	v := findVolume(&ds.Spec.Template.Spec, "radius")
	if v == nil || v.Secret == nil || v.Secret.SecretName != "ikefleet-radius" {
		t.Fatalf("radius volume %+v, want Secret ikefleet-radius", v)
	}
	var keys []string
	for _, it := range v.Secret.Items {
		keys = append(keys, it.Key+"="+it.Path)
	}
	if strings.Join(keys, ",") != "shared=shared,radius-c=radius-c" {
		t.Errorf("radius Secret items %v, want each key once", keys)
	}
	checkConfigFiles(t, o)

	// Without them: no eap, revocation or credential_store in the config,
	// no radius volume.
	plain := renderObjects(t, c, readValues(t, filepath.Join(chartDir, "ci", "external-etcd-values.yaml")))
	text := configMap(t, plain).Data["concentratord.yaml"]
	for _, k := range []string{"eap:", "revocation:", "credential_store:", "/radius/"} {
		if strings.Contains(text, k) {
			t.Errorf("a chart without EAP, revocation or a credential store renders %q:\n%s", k, text)
		}
	}
	if findVolume(&daemonSet(t, plain).Spec.Template.Spec, "radius") != nil {
		t.Error("radius volume without RADIUS servers")
	}
}
