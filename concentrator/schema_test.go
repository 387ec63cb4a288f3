package concentrator

import (
	"errors"
	"flag"
	"os"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite deploy/concentratord.schema.json")

const (
	examplePath = "../deploy/examples/concentratord.yaml"
	schemaPath  = "../deploy/concentratord.schema.json"
)

func exampleDescriptions(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ExampleDescriptions(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// deploy/concentratord.schema.json is what the structs generate; go test
// ./concentrator -run TestSchemaFileUpToDate -update (make generate)
// rewrites it.
func TestSchemaFileUpToDate(t *testing.T) {
	want := SchemaJSON(exampleDescriptions(t))
	if *update {
		if err := os.WriteFile(schemaPath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatalf("%v (make generate writes it)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("%s is stale: run make generate", schemaPath)
	}
}

// schemaPaths lists every field the schema knows ("auth.psks[].id").
func schemaPaths(s map[string]any, path string, out map[string]bool) {
	if props, ok := s["properties"].(map[string]any); ok {
		for k, v := range props {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out[p] = true
			schemaPaths(v.(map[string]any), p, out)
		}
	}
	if items, ok := s["items"].(map[string]any); ok {
		schemaPaths(items, path+"[]", out)
	}
}

// yamlPaths lists every key of a YAML document the same way.
func yamlPaths(n *yaml.Node, path string, out map[string]bool) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			yamlPaths(c, path, out)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			yamlPaths(c, path+"[]", out)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			out[p] = true
			yamlPaths(n.Content[i+1], p, out)
		}
	}
}

// The example documents every field of the schema, with a description,
// and has no field the schema lacks.
func TestExampleDocumentsEveryField(t *testing.T) {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	inExample, inSchema := map[string]bool{}, map[string]bool{}
	yamlPaths(&root, "", inExample)
	schemaPaths(Schema(nil), "", inSchema)
	desc := exampleDescriptions(t)
	var missing, extra, undocumented []string
	for p := range inSchema {
		if !inExample[p] {
			missing = append(missing, p)
		} else if desc[p] == "" && !strings.HasSuffix(p, "]") {
			undocumented = append(undocumented, p)
		}
	}
	for p := range inExample {
		if !inSchema[p] {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(undocumented)
	if len(missing) > 0 {
		t.Errorf("fields missing from %s: %v", examplePath, missing)
	}
	if len(extra) > 0 {
		t.Errorf("fields of %s the schema does not have: %v", examplePath, extra)
	}
	// A field documented by its section's comment needs no comment of its
	// own only if it is a section itself; report the rest.
	for _, p := range undocumented {
		if !inSchemaObject(p) {
			t.Errorf("%s: %s has no comment", examplePath, p)
		}
	}
}

// inSchemaObject: p is an object (a section) or a list of objects.
func inSchemaObject(p string) bool {
	s := Schema(nil)
	for _, part := range strings.Split(p, ".") {
		name := strings.TrimSuffix(part, "[]")
		props, _ := s["properties"].(map[string]any)
		s, _ = props[name].(map[string]any)
		if s == nil {
			return false
		}
		if strings.HasSuffix(part, "[]") {
			s, _ = s["items"].(map[string]any)
		}
	}
	if s["type"] == "object" {
		return true
	}
	it, _ := s["items"].(map[string]any)
	return it != nil && it["type"] == "object"
}

func TestCheckSchema(t *testing.T) {
	for _, f := range []string{examplePath, "../deploy/examples/demo.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckSchema(b); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	for _, doc := range []string{minimal, "", "metrics:\n  listen: off\n", "ike:\n  rekey_after: 1h30m\n  dpd_delay: 0s\n"} {
		if err := CheckSchema([]byte(doc)); err != nil {
			t.Errorf("%q: %v", doc, err)
		}
	}
	for _, tc := range []struct{ yaml, field string }{
		{"ike:\n  bogus: 1\n", "ike.bogus"},
		{"bogus: 1\n", "bogus"},
		{"ike:\n  port: x\n", "ike.port"},
		{"ike:\n  port: 70000\n", "ike.port"},
		{"ike:\n  dpd_delay: 60\n", "ike.dpd_delay"},
		{"ike:\n  dpd_delay: 1 minute\n", "ike.dpd_delay"},
		{"ike:\n  listen: [1, 2]\n", "ike.listen[0]"},
		{"dataplane:\n  mode: warp\n", "dataplane.mode"},
		{"auth:\n  psks:\n    - {id: a, secret: b}\n    - {id: c, sekret: d}\n", "auth.psks[1].sekret"},
		{"ike:\n  mobike: maybe\n", "ike.mobike"},
	} {
		err := CheckSchema([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%q: want an error at %s, got %v", tc.yaml, tc.field, err)
		}
	}
	if err := CheckSchema([]byte("ike: [")); err == nil {
		t.Error("broken YAML accepted")
	}
}

// Defaults in the schema are DefaultConfig's.
func TestSchemaDefaults(t *testing.T) {
	s := Schema(nil)
	get := func(path ...string) any {
		m := s
		for _, p := range path {
			m = m["properties"].(map[string]any)[p].(map[string]any)
		}
		return m["default"]
	}
	if v := get("ike", "port"); v != 500 {
		t.Errorf("ike.port default %v", v)
	}
	if v := get("dataplane", "mode"); v != "auto" {
		t.Errorf("dataplane.mode default %v", v)
	}
	if v := get("children", "rekey_after"); v != "50m" {
		t.Errorf("children.rekey_after default %v", v)
	}
	if v := get("metrics", "listen"); v != DefaultMetricsListen {
		t.Errorf("metrics.listen default %v", v)
	}
	if v := get("ike", "force_encap"); v != true {
		t.Errorf("ike.force_encap default %v", v)
	}
}
