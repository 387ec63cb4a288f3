package e2e

import (
	"fmt"
	"strings"
)

// IKESA is one IKE_SA as strongSwan reports it over vici
// (swanctl --list-sas --pretty). Attrs holds the vici keys: "state"
// (ESTABLISHED, ...), "local-id", "remote-id", "local-host", "remote-host",
// "local-port", "remote-port", "encr-alg", "encr-keysize", "integ-alg",
// "prf-alg", "dh-group", "nat-local", "nat-remote", "nat-fake", "nat-any",
// "initiator", ...
type IKESA struct {
	Conn     string // connection name
	Attrs    map[string]string
	Children []ChildSA
}

// ChildSA is one CHILD_SA of an IKESA. Attrs: "name", "state" (INSTALLED,
// ...), "mode" (TUNNEL), "protocol" (ESP), "encap" (yes), "encr-alg",
// "encr-keysize", "spi-in", "spi-out", "bytes-in", ...
type ChildSA struct {
	Attrs    map[string]string
	LocalTS  []string
	RemoteTS []string
}

// Name is the CHILD_SA's configured name.
func (c ChildSA) Name() string { return c.Attrs["name"] }

// Get returns attribute key, "" if absent.
func (c ChildSA) Get(key string) string { return c.Attrs[key] }

// Get returns attribute key, "" if absent.
func (sa IKESA) Get(key string) string { return sa.Attrs[key] }

// Proposal formats the negotiated IKE proposal the way swanctl --list-sas
// prints it, e.g. "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519".
func (sa IKESA) Proposal() string {
	var b strings.Builder
	b.WriteString(sa.Attrs["encr-alg"])
	if ks := sa.Attrs["encr-keysize"]; ks != "" {
		b.WriteString("-" + ks)
	}
	if ia := sa.Attrs["integ-alg"]; ia != "" {
		b.WriteString("/" + ia)
		if ks := sa.Attrs["integ-keysize"]; ks != "" {
			b.WriteString("-" + ks)
		}
	}
	b.WriteString("/" + sa.Attrs["prf-alg"])
	if dh := sa.Attrs["dh-group"]; dh != "" {
		b.WriteString("/" + dh)
	}
	return b.String()
}

// Child returns the first CHILD_SA with configured name name.
func (sa IKESA) Child(name string) (ChildSA, bool) {
	for _, c := range sa.Children {
		if c.Name() == name {
			return c, true
		}
	}
	return ChildSA{}, false
}

func (sa IKESA) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s %s[%s] <-> %s[%s] %s nat-local=%s nat-remote=%s",
		sa.Conn, sa.Attrs["state"], sa.Attrs["local-id"], sa.Attrs["local-host"],
		sa.Attrs["remote-id"], sa.Attrs["remote-host"], sa.Proposal(), sa.Attrs["nat-local"], sa.Attrs["nat-remote"])
	for _, c := range sa.Children {
		fmt.Fprintf(&b, "; child %s %s %s encap=%s %v === %v", c.Name(), c.Attrs["state"], c.Attrs["protocol"],
			c.Attrs["encap"], c.LocalTS, c.RemoteTS)
	}
	return b.String()
}

// FindIKESA returns the first SA in sas in state ESTABLISHED whose
// connection is conn ("" for any).
func FindIKESA(sas []IKESA, conn string) (IKESA, bool) {
	for _, sa := range sas {
		if (conn == "" || sa.Conn == conn) && sa.Attrs["state"] == "ESTABLISHED" {
			return sa, true
		}
	}
	return IKESA{}, false
}

// viciSection is a node of swanctl's --pretty dump of vici messages.
type viciSection struct {
	name     string
	values   map[string]string
	lists    map[string][]string
	sections []*viciSection
}

func newSection(name string) *viciSection {
	return &viciSection{name: name, values: map[string]string{}, lists: map[string][]string{}}
}

// parseVici parses swanctl's --pretty output: "name {", "}", "key = value",
// "key = [", list items one per line, "]". One line per element, so values
// may hold spaces (X.500 identities do).
func parseVici(out string) (*viciSection, error) {
	root := newSection("")
	stack := []*viciSection{root}
	var list *string // key of the open list
	for n, raw := range strings.Split(out, "\n") {
		line := strings.TrimSpace(raw)
		cur := stack[len(stack)-1]
		switch {
		case line == "":
		case list != nil:
			if line == "]" {
				list = nil
			} else {
				cur.lists[*list] = append(cur.lists[*list], line)
			}
		case line == "}":
			if len(stack) == 1 {
				return nil, fmt.Errorf("line %d: unbalanced }", n+1)
			}
			stack = stack[:len(stack)-1]
		case strings.HasSuffix(line, " {"):
			s := newSection(strings.TrimSuffix(line, " {"))
			cur.sections = append(cur.sections, s)
			stack = append(stack, s)
		case strings.HasSuffix(line, " ["): // "key = [" (5.9) or "key ["
			k := strings.TrimSuffix(strings.TrimSuffix(line, " ["), " =")
			list = &k
			cur.lists[k] = []string{}
		case strings.Contains(line, " = "):
			k, v, _ := strings.Cut(line, " = ")
			cur.values[k] = v
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", n+1, line)
		}
	}
	if len(stack) != 1 || list != nil {
		return nil, fmt.Errorf("truncated output")
	}
	return root, nil
}

// ParseListSAs parses the output of swanctl --list-sas --pretty: one
// "list-sa event" per IKE_SA, then a "list-sas reply".
func ParseListSAs(out string) ([]IKESA, error) {
	root, err := parseVici(out)
	if err != nil {
		return nil, fmt.Errorf("parse swanctl --list-sas --pretty: %w", err)
	}
	var sas []IKESA
	for _, ev := range root.sections {
		if ev.name != "list-sa event" {
			continue
		}
		for _, ike := range ev.sections {
			sa := IKESA{Conn: ike.name, Attrs: ike.values}
			for _, sub := range ike.sections {
				if sub.name != "child-sas" {
					continue
				}
				for _, c := range sub.sections {
					sa.Children = append(sa.Children, ChildSA{
						Attrs: c.values, LocalTS: c.lists["local-ts"], RemoteTS: c.lists["remote-ts"],
					})
				}
			}
			sas = append(sas, sa)
		}
	}
	return sas, nil
}
