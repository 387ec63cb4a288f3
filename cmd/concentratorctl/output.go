package main

// Output of protobuf messages as JSON or YAML: fields in declaration order
// under their proto names, SPIs in hex (IKE SPIs 16 digits, ESP SPIs 8),
// enums by name without their prefix, timestamps in RFC 3339, durations
// as Go durations. Unset messages are left out; scalars and lists always
// appear, so scripts find every field.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// kv is one field of an ordered object.
type kv struct {
	k string
	v any
}

// object is an ordered JSON/YAML object.
type object []kv

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o object) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, f := range o {
		var v yaml.Node
		if err := v.Encode(f.v); err != nil {
			return nil, err
		}
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: f.k}, &v)
	}
	return n, nil
}

// view turns a message into an ordered object.
func view(m protoreflect.Message) object {
	var out object
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := string(fd.Name())
		switch {
		case fd.IsList():
			l := m.Get(fd).List()
			vs := make([]any, l.Len())
			for j := range vs {
				vs[j] = scalar(fd, l.Get(j))
			}
			out = append(out, kv{name, vs})
		case fd.IsMap():
			mp := m.Get(fd).Map()
			var keys []string
			vals := map[string]any{}
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				keys = append(keys, k.String())
				vals[k.String()] = scalar(fd.MapValue(), v)
				return true
			})
			sortStrings(keys)
			var o object
			for _, k := range keys {
				o = append(o, kv{k, vals[k]})
			}
			if o == nil {
				o = object{}
			}
			out = append(out, kv{name, o})
		case fd.Kind() == protoreflect.MessageKind:
			if !m.Has(fd) {
				continue
			}
			out = append(out, kv{name, scalar(fd, m.Get(fd))})
		default:
			out = append(out, kv{name, scalar(fd, m.Get(fd))})
		}
	}
	if out == nil {
		out = object{}
	}
	return out
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.Fixed64Kind:
		return hex64(v.Uint())
	case protoreflect.Fixed32Kind:
		return hex32(uint32(v.Uint()))
	case protoreflect.EnumKind:
		return enumName(fd.Enum(), v.Enum())
	case protoreflect.MessageKind:
		msg := v.Message()
		switch msg.Descriptor().FullName() {
		case "google.protobuf.Timestamp":
			f := msg.Descriptor().Fields()
			return time.Unix(msg.Get(f.ByName("seconds")).Int(), msg.Get(f.ByName("nanos")).Int()).UTC().Format(time.RFC3339Nano)
		case "google.protobuf.Duration":
			f := msg.Descriptor().Fields()
			return (time.Duration(msg.Get(f.ByName("seconds")).Int())*time.Second + time.Duration(msg.Get(f.ByName("nanos")).Int())).String()
		}
		return view(msg)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return v.Int()
	case protoreflect.Uint64Kind:
		return v.Uint()
	}
	return v.Interface()
}

func hex64(v uint64) string { return fmt.Sprintf("%016x", v) }
func hex32(v uint32) string { return fmt.Sprintf("%08x", v) }

// enumName is a value's name without the enum's prefix (DRAIN_PHASE_DRAINED: DRAINED).
func enumName(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	ev := ed.Values().ByNumber(n)
	if ev == nil {
		return fmt.Sprint(int32(n))
	}
	return strings.TrimPrefix(string(ev.Name()), enumPrefix(ed))
}

func enumPrefix(ed protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(ed.Name()) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String()) + "_"
}

// encode writes v as JSON (indented) or YAML.
func encode(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		e := yaml.NewEncoder(w)
		e.SetIndent(2)
		if err := e.Encode(v); err != nil {
			return err
		}
		return e.Close()
	}
	return fmt.Errorf("output format %q", format)
}
