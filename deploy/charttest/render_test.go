// Package charttest checks deploy/: the Helm chart rendered with Helm's own
// packages and decoded strictly into Kubernetes API types, its values
// schema, and the Dockerfile parsed with BuildKit's parser. It is a module
// of its own so that Helm and Kubernetes stay out of ikefleet's go.mod.
package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../helm/ikefleet"
	releaseName = "fleet"
	namespace   = "vpn"
)

// exampleValues are the chart's example values files (ci/*-values.yaml).
func exampleValues(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("want at least two example values files in %s/ci, found %v", chartDir, files)
	}
	return files
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	v, err := chartutil.ReadValuesFile(file)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v.AsMap()
}

// render renders the chart as `helm install fleet --namespace vpn` would,
// schema validation included, with the engine in strict mode (a template
// that reads a value that does not exist fails).
func render(c *chart.Chart, vals map[string]any) (map[string]string, error) {
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion("v1.31.0")
	if err != nil {
		return nil, err
	}
	caps.KubeVersion = *kv
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{
		Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, err
	}
	return engine.Engine{Strict: true}.Render(c, rv)
}

// objects are the decoded manifests of one rendering, by kind and name.
type objects struct {
	byKey  map[string]any // "Kind/name" -> *typed object
	source map[string]string
	notes  string
	raw    map[string]string // template file -> rendered text
}

func (o *objects) get(t *testing.T, kind, name string) any {
	t.Helper()
	v, ok := o.byKey[kind+"/"+name]
	if !ok {
		var keys []string
		for k := range o.byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("no %s/%s rendered; have %v", kind, name, keys)
	}
	return v
}

func (o *objects) has(kind, name string) bool {
	_, ok := o.byKey[kind+"/"+name]
	return ok
}

// newTyped returns the Go type of an apiVersion and kind the chart may
// render; anything else is an error, so a new kind needs a decision here.
func newTyped(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, nil
	}
	return nil, fmt.Errorf("unexpected apiVersion %q kind %q", apiVersion, kind)
}

// decodeStrict decodes one YAML document into its API type: duplicate
// keys and fields the type does not have are errors.
func decodeStrict(doc []byte) (any, string, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, "", err
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, "", err
	}
	obj, err := newTyped(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, "", err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, "", fmt.Errorf("%s %s: %w", tm.Kind, tm.Metadata.Name, err)
	}
	if tm.Metadata.Name == "" {
		return nil, "", fmt.Errorf("%s without metadata.name", tm.Kind)
	}
	if tm.Metadata.Namespace != namespace {
		return nil, "", fmt.Errorf("%s/%s: namespace %q, want the release's %q", tm.Kind, tm.Metadata.Name, tm.Metadata.Namespace, namespace)
	}
	return obj, tm.Kind + "/" + tm.Metadata.Name, nil
}

// renderObjects renders the chart with vals and decodes every manifest.
func renderObjects(t *testing.T, c *chart.Chart, vals map[string]any) *objects {
	t.Helper()
	out, err := render(c, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	o := &objects{byKey: map[string]any{}, source: map[string]string{}, raw: out}
	var files []string
	for f := range out {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		text := out[f]
		switch {
		case strings.HasSuffix(f, "NOTES.txt"):
			o.notes = text
			continue
		case strings.HasSuffix(f, ".tpl"):
			if strings.TrimSpace(text) != "" {
				t.Errorf("%s renders text outside definitions: %q", f, text)
			}
			continue
		}
		for i, doc := range strings.Split(text, "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, key, err := decodeStrict([]byte(doc))
			if err != nil {
				t.Fatalf("%s (document %d): %v\n%s", f, i, err, doc)
			}
			if prev, dup := o.source[key]; dup {
				t.Fatalf("%s rendered by both %s and %s", key, prev, f)
			}
			o.byKey[key], o.source[key] = obj, f
		}
	}
	return o
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// set returns a deep copy of vals with the dotted path set to v.
func set(t *testing.T, vals map[string]any, path string, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(vals)
	if err != nil {
		t.Fatal(err)
	}
	var cp map[string]any
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatal(err)
	}
	m := cp
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = v
	return cp
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
