package adminserver

import (
	"fmt"
	"net/netip"
	"strings"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
)

// filter is a parsed adminv1.SAFilter.
type filter struct {
	identity string // glob
	prefix   netip.Prefix
	port     uint16 // with an address:port
	node     string
	state    string
}

// parseFilter checks a filter; errors name the field.
func parseFilter(f *adminv1.SAFilter, self string) (filter, error) {
	var out filter
	if f == nil {
		return out, nil
	}
	out.identity = f.GetIdentity()
	if r := f.GetRemote(); r != "" {
		switch {
		case strings.Contains(r, "/"):
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return out, fmt.Errorf("filter.remote: not an address or prefix: %q", r)
			}
			out.prefix = p.Masked()
		default:
			if ap, err := netip.ParseAddrPort(r); err == nil {
				out.prefix = netip.PrefixFrom(ap.Addr().Unmap(), ap.Addr().Unmap().BitLen())
				out.port = ap.Port()
				break
			}
			a, err := netip.ParseAddr(r)
			if err != nil {
				return out, fmt.Errorf("filter.remote: not an address or prefix: %q", r)
			}
			a = a.Unmap()
			out.prefix = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if nd := f.GetNode(); nd != "" && nd != self {
		return out, &otherNodeError{node: nd, self: self}
	}
	out.node = f.GetNode()
	if st := f.GetState(); st != "" {
		out.state = strings.ToUpper(st)
		if !validState[out.state] {
			return out, fmt.Errorf("filter.state: %q is not an IKE SA state (ESTABLISHED, INIT_DONE, INIT_SENT, AUTH_SENT, DELETING, REKEYED)", st)
		}
	}
	return out, nil
}

var validState = map[string]bool{"INIT_SENT": true, "INIT_DONE": true, "AUTH_SENT": true, "ESTABLISHED": true,
	"DELETING": true, "REKEYED": true}

type otherNodeError struct{ node, self string }

func (e *otherNodeError) Error() string {
	return fmt.Sprintf("filter.node: this is node %s; the SAs of node %s are listed by its own admin API", e.self, e.node)
}

func (f *filter) empty() bool {
	return f.identity == "" && !f.prefix.IsValid() && f.node == "" && f.state == ""
}

func (f *filter) match(v *concentrator.SAView) bool {
	if f.identity != "" && !glob(f.identity, v.PeerID) {
		return false
	}
	if f.state != "" && v.State != f.state {
		return false
	}
	return f.matchRemote(v.Remote)
}

func (f *filter) matchRemote(r netip.AddrPort) bool {
	if !f.prefix.IsValid() {
		return true
	}
	if !f.prefix.Contains(r.Addr().Unmap()) {
		return false
	}
	return f.port == 0 || r.Port() == f.port
}

// glob matches s against pattern: * any run of characters, ? one
// character, everything else literally.
func glob(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
