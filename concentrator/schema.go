package concentrator

//go:generate go test -run ^TestSchemaFileUpToDate$ -update .

// The configuration's JSON Schema, generated from the Config structs by
// reflection (yaml tags, Go types, DefaultConfig's values as defaults, the
// enums below), with descriptions taken from the documented example
// (deploy/examples/concentratord.yaml). deploy/concentratord.schema.json
// is its committed copy; `concentratord --check` validates a file against
// it before Validate.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/ikefleet/ikefleet/lb"
)

// schemaEnums are the fields that take one of a fixed set of strings.
var schemaEnums = map[string][]string{
	"log.level":                 {"debug", "info", "warn", "error"},
	"log.format":                {"json", "text"},
	"identity.send_cert":        {"always", "ifasked"},
	"dataplane.mode":            DataPlaneModes,
	"statestore.mode":           {"embedded", "external", "none"},
	"statestore.etcd_log_level": {"debug", "info", "warn", "error"},
	"anycast.mode":              lb.Modes,
	"auth.revocation.ocsp":      {"prefer", "require", "off"},
	"auth.revocation.crl":       {"fetch", "files", "off"},
}

// schemaBounds are the integer fields with a fixed range.
var schemaBounds = map[string][2]int{
	"ike.port":           {0, 65535},
	"ike.natt_port":      {0, 65535},
	"ike.shards":         {0, 256},
	"ike.socket_readers": {0, 64},

	"anycast.bgp.listen_port":          {0, 65535},
	"anycast.bgp.neighbors[].port":     {0, 65535},
	"anycast.bgp.neighbors[].multihop": {0, 255},
	"anycast.bgp.asn":                  {0, 4294967295},
	"anycast.bgp.neighbors[].asn":      {0, 4294967295},
}

// durationPattern matches what time.ParseDuration accepts.
const durationPattern = `^[-+]?(0|([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+)$`

var durationType = reflect.TypeFor[time.Duration]()

// Schema returns the configuration's JSON Schema (draft 2020-12).
// descriptions, keyed by dotted path ("ike.port", "auth.psks[].id"), fill
// the description keywords; nil leaves them out.
func Schema(descriptions map[string]string) map[string]any {
	def := reflect.ValueOf(DefaultConfig())
	s := schemaOf(def.Type(), def, "", descriptions)
	s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	s["$id"] = "https://github.com/ikefleet/ikefleet/deploy/concentratord.schema.json"
	s["title"] = "concentratord configuration"
	return s
}

func schemaOf(t reflect.Type, def reflect.Value, path string, desc map[string]string) map[string]any {
	s := map[string]any{}
	if d, ok := desc[path]; ok && path != "" {
		s["description"] = d
	}
	nullable := t.Kind() == reflect.Pointer // unset: the default
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
		if def.IsValid() {
			if def.IsNil() {
				def = reflect.Value{}
			} else {
				def = def.Elem()
			}
		}
	}
	switch {
	case t == durationType:
		s["type"] = "string"
		s["pattern"] = durationPattern
		if def.IsValid() {
			s["default"] = shortDuration(time.Duration(def.Int()))
		}
		return s
	case t.Kind() == reflect.Struct:
		s["type"] = "object"
		s["additionalProperties"] = false
		props := map[string]any{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			var fd reflect.Value
			if def.IsValid() {
				fd = def.Field(i)
			}
			props[name] = schemaOf(f.Type, fd, p, desc)
		}
		s["properties"] = props
		return s
	case t.Kind() == reflect.Slice:
		s["type"] = "array"
		s["items"] = schemaOf(t.Elem(), reflect.Value{}, path+"[]", desc)
	case t.Kind() == reflect.String:
		s["type"] = "string"
		if e, ok := schemaEnums[path]; ok {
			s["enum"] = e
		}
	case t.Kind() == reflect.Bool:
		s["type"] = "boolean"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		s["type"] = "integer"
		if b, ok := schemaBounds[path]; ok {
			s["minimum"], s["maximum"] = b[0], b[1]
		}
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		s["type"] = "number"
	default:
		panic(fmt.Sprintf("concentrator: no JSON Schema for %s (%s)", path, t))
	}
	if def.IsValid() && !def.IsZero() {
		s["default"] = def.Interface()
	}
	if nullable {
		s["type"] = []string{s["type"].(string), "null"}
	}
	return s
}

// shortDuration writes 50m rather than 50m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// SchemaJSON is the schema as committed in deploy/concentratord.schema.json.
func SchemaJSON(descriptions map[string]string) []byte {
	b, err := json.MarshalIndent(Schema(descriptions), "", "  ")
	if err != nil {
		panic(err) // only maps, strings, numbers and bools
	}
	return append(b, '\n')
}

// ExampleDescriptions reads the documented example configuration: each
// key's description is its line comment, with the comment lines that
// continue it (indented "#   ..." lines below).
func ExampleDescriptions(example []byte) (map[string]string, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(example, &root); err != nil {
		return nil, err
	}
	lines := strings.Split(string(example), "\n")
	out := map[string]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, path+"[]")
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				c := k.LineComment
				if c == "" {
					c = v.LineComment
				}
				if c != "" && out[p] == "" {
					out[p] = commentText(c, lines, k.Line)
				}
				walk(v, p)
			}
		}
	}
	walk(&root, "")
	return out, nil
}

// commentText joins a line comment with the continuation lines below it:
// lines holding only a comment that starts with "#   ".
func commentText(c string, lines []string, line int) string {
	parts := []string{strings.TrimSpace(strings.TrimPrefix(c, "#"))}
	for i := line; i < len(lines); i++ { // lines[line] is the line after the key's
		t := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(t, "#   ") {
			break
		}
		parts = append(parts, strings.TrimSpace(strings.TrimPrefix(t, "#")))
	}
	return strings.Join(parts, " ")
}

// configSchema compiles Schema once.
var configSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(SchemaJSON(nil)))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	const url = "concentratord.schema.json"
	if err := c.AddResource(url, doc); err != nil {
		return nil, err
	}
	return c.Compile(url)
})

// CheckSchema validates a YAML configuration document against the JSON
// Schema. The error names the first offending field (a *FieldError).
func CheckSchema(data []byte) error {
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if doc == nil {
		doc = map[string]any{}
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("config: not representable as JSON: %w", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	s, err := configSchema()
	if err != nil {
		return fmt.Errorf("config schema: %w", err)
	}
	err = s.Validate(inst)
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	leaf := ve
	for len(leaf.Causes) > 0 {
		leaf = leaf.Causes[0]
	}
	var field strings.Builder
	for _, p := range leaf.InstanceLocation {
		if p != "" && p[0] >= '0' && p[0] <= '9' {
			field.WriteString("[" + p + "]")
			continue
		}
		if field.Len() > 0 {
			field.WriteByte('.')
		}
		field.WriteString(p)
	}
	msg := leaf.ErrorKind.LocalizedString(message.NewPrinter(language.English))
	if ak, ok := leaf.ErrorKind.(*kind.AdditionalProperties); ok && len(ak.Properties) > 0 {
		if field.Len() > 0 {
			field.WriteByte('.')
		}
		field.WriteString(ak.Properties[0])
		msg = "unknown field"
	}
	if field.Len() == 0 {
		return fmt.Errorf("config: schema: %s", msg)
	}
	return &FieldError{Field: field.String(), Err: fmt.Errorf("schema: %s", msg)}
}
