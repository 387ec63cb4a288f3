package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ikefleet/ikefleet/concentrator"
)

// Sections of concentratord.yaml that the chart writes itself; the others
// come from concentrator.config in the values, checked by the schema.
var chartManaged = []string{"node", "identity", "auth", "statestore", "metrics", "admin"}

// yamlFields returns the yaml names of a struct type's fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

// The rendered concentratord.yaml of each example values file (kept in
// deploy/charttest/testdata, which checks that it is what the chart
// renders) is a configuration concentratord accepts.
func TestChartConfigParses(t *testing.T) {
	files, err := filepath.Glob("charttest/testdata/*.concentratord.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("rendered configurations in charttest/testdata: %v (make test-chart writes them with -update)", files)
	}
	known := yamlFields(reflect.TypeOf(concentrator.Config{}))
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// The files it names live under /etc/ikefleet in the pod: make
			// them here, PSKs with content since parsing reads them.
			root := t.TempDir()
			text := strings.ReplaceAll(string(b), "/etc/ikefleet/", root+"/")
			var doc map[string]any
			if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
				t.Fatal(err)
			}
			for _, m := range regexp.MustCompile(regexp.QuoteMeta(root)+`/[^\s"']+`).FindAllString(text, -1) {
				if err := os.MkdirAll(filepath.Dir(m), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(m, []byte("psk-from-a-kubernetes-secret-0123456789\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// Sections this concentratord does not know yet (metrics and
			// admin are being added) are left out, and said so.
			for k := range doc {
				if _, ok := known[k]; !ok {
					if !slices.Contains(chartManaged, k) {
						t.Errorf("rendered section %q is neither a concentratord section nor one the chart manages", k)
					}
					t.Logf("section %q is not in concentrator.Config yet: not checked", k)
					delete(doc, k)
				}
			}
			clean, err := yaml.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := concentrator.ParseConfig(clean)
			if err != nil {
				t.Fatalf("concentratord refuses the chart's configuration: %v\n%s", err, clean)
			}
			if cfg.StateStore.Mode != "external" || len(cfg.StateStore.Endpoints) == 0 || cfg.StateStore.ClusterKeyFile == "" {
				t.Errorf("statestore %+v: want external etcd with a cluster key", cfg.StateStore)
			}
			if cfg.Node.ID != "" {
				t.Errorf("node.id %q: one ConfigMap serves every node, the id must default to the hostname", cfg.Node.ID)
			}
			if filepath.Base(f) == "eap.concentratord.yaml" {
				// auth.eap, auth.revocation and auth.credential_store as
				// the chart writes them from its values.
				a := cfg.Auth
				s := a.EAP.RADIUS.Servers
				if len(s) != 2 || s[0].Address != "radius-a.infra.example:1812" || s[1].Address != "[2001:db8:53::10]:1812" ||
					!strings.HasSuffix(s[0].SecretFile, "/radius/radius-a") || !strings.HasSuffix(s[1].SecretFile, "/radius/radius-b") ||
					s[0].Secret != "" || a.EAP.RADIUS.Timeout != 3*time.Second || a.EAP.RADIUS.Retries != 2 ||
					a.EAP.RADIUS.NASIdentifier != "ikefleet" || a.EAP.MaxRounds != 30 || !slices.Equal(a.EAP.Identities, []string{"*@eap.iot.example"}) {
					t.Errorf("auth.eap %+v", a.EAP)
				}
				r := a.Revocation
				if r.OCSP != "require" || r.CRL != "fetch" || r.FailOpen || r.Timeout != 5*time.Second || r.Retries != 3 || r.RetryInterval != time.Minute {
					t.Errorf("auth.revocation %+v", r)
				}
				if !a.CredentialStore {
					t.Error("auth.credential_store: want true")
				}
			}
		})
	}
}

// values.schema.json describes concentrator.config with exactly the fields
// and types of concentrator.Config; every section of Config is either in
// the schema or written by the chart.
func TestChartSchemaMatchesConfig(t *testing.T) {
	b, err := os.ReadFile("helm/ikefleet/values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	node := func(s map[string]any, path ...string) map[string]any {
		for _, p := range path {
			props, _ := s["properties"].(map[string]any)
			s, _ = props[p].(map[string]any)
			if s == nil {
				t.Fatalf("schema has no %s", strings.Join(path, "."))
			}
		}
		return s
	}
	cfgSchema := node(schema, "concentrator", "config")
	fields := yamlFields(reflect.TypeOf(concentrator.Config{}))
	props := cfgSchema["properties"].(map[string]any)
	var names []string
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		_, inSchema := props[name]
		managed := slices.Contains(chartManaged, name)
		switch {
		case inSchema && managed:
			t.Errorf("config section %s is both in the schema and written by the chart", name)
		case !inSchema && !managed:
			t.Errorf("concentratord section %s is neither in values.schema.json (concentrator.config) nor written by the chart", name)
		case inSchema:
			compareSchema(t, "concentrator.config."+name, props[name].(map[string]any), fields[name].Type)
		}
	}
	for name := range props {
		if _, ok := fields[name]; !ok {
			t.Errorf("schema allows concentrator.config.%s, which concentratord does not know", name)
		}
	}
	// The chart passes concentrator.auth.revocation to auth.revocation as
	// it is: its schema is that of RevocationConfig.
	compareSchema(t, "concentrator.auth.revocation", node(schema, "concentrator", "auth", "revocation"), reflect.TypeOf(concentrator.RevocationConfig{}))
}

var durationType = reflect.TypeOf(time.Duration(0))

func compareSchema(t *testing.T, path string, s map[string]any, typ reflect.Type) {
	t.Helper()
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := ""
	switch {
	case typ == durationType:
		want = "string"
		if _, ok := s["pattern"]; !ok {
			t.Errorf("%s: a duration needs a pattern", path)
		}
	case typ.Kind() == reflect.Struct:
		want = "object"
	case typ.Kind() == reflect.Slice:
		want = "array"
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		want = "integer"
	case typ.Kind() == reflect.Float32 || typ.Kind() == reflect.Float64:
		want = "number"
	default:
		t.Errorf("%s: Go type %v has no schema mapping", path, typ)
		return
	}
	if got, _ := s["type"].(string); got != want {
		t.Errorf("%s: schema type %q, Go type %v wants %q", path, got, typ, want)
		return
	}
	switch want {
	case "array":
		items, _ := s["items"].(map[string]any)
		if items == nil {
			t.Errorf("%s: array without items", path)
			return
		}
		compareSchema(t, path+"[]", items, typ.Elem())
	case "object":
		if s["additionalProperties"] != false {
			t.Errorf("%s: additionalProperties must be false (unknown fields are concentratord errors)", path)
		}
		props, _ := s["properties"].(map[string]any)
		fields := yamlFields(typ)
		for name, f := range fields {
			p, ok := props[name].(map[string]any)
			if !ok {
				t.Errorf("%s.%s: in concentrator.Config, not in values.schema.json", path, name)
				continue
			}
			compareSchema(t, path+"."+name, p, f.Type)
		}
		for name := range props {
			if _, ok := fields[name]; !ok {
				t.Errorf("%s.%s: in values.schema.json, not in concentrator.Config", path, name)
			}
		}
	}
}
