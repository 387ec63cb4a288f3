// Package lb puts a node behind the cluster's anycast address: it checks
// the node's health (with hysteresis), announces the anycast /32 and /128
// (and optionally the gateways' inner prefixes) to BGP neighbours through
// an embedded speaker, or adds them to a local dummy interface for a
// site's own routing daemon, and withdraws them when the node is unhealthy
// or draining. Membership (hashicorp/memberlist) spreads node addresses,
// load and health between nodes for quick failure detection and redirect
// targets; the state store stays the authority on who owns an SA.
//
// lb knows nothing of the node's internals: the node hands it a Source.
package lb

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Modes of Config.Mode.
const (
	ModeOff    = ""
	ModeBGP    = "bgp"
	ModeKernel = "kernel"
)

// Modes lists Config.Mode's values.
var Modes = []string{ModeOff, ModeBGP, ModeKernel}

// Config is the anycast: section.
type Config struct {
	// Mode: "" (off: something else routes the anycast address here), bgp
	// (the embedded speaker announces it), kernel (it is added to a local
	// dummy interface while healthy, for a routing daemon on the host).
	Mode string `yaml:"mode"`
	// Addresses announced, as addresses (/32, /128) or prefixes; default
	// every specific ike.listen address.
	Addresses []string `yaml:"addresses"`
	// InnerPrefixes are announced too while the node serves (e.g. the
	// virtual IP pool's share of this node).
	InnerPrefixes []string `yaml:"inner_prefixes"`
	// AnnounceVirtualIPs announces a host route for every virtual IP of
	// the gateways this node serves now.
	AnnounceVirtualIPs bool `yaml:"announce_virtual_ips"`

	BGP      BGPConfig      `yaml:"bgp"`
	Kernel   KernelConfig   `yaml:"kernel"`
	Health   HealthConfig   `yaml:"health"`
	Members  MembersConfig  `yaml:"members"`
	Drain    DrainConfig    `yaml:"drain"`
	Redirect RedirectConfig `yaml:"redirect"`
}

// BGPConfig configures the embedded BGP speaker.
type BGPConfig struct {
	ASN      uint32 `yaml:"asn"`       // our AS number
	RouterID string `yaml:"router_id"` // our BGP identifier, an IPv4 address
	// ListenPort accepts sessions on this port (179 is BGP's); 0: we only
	// dial the neighbours.
	ListenPort int `yaml:"listen_port"`
	// NextHop and NextHop6 are the next hops announced for IPv4 and IPv6
	// prefixes; "" announces ourselves (the session's local address).
	NextHop  string `yaml:"next_hop"`
	NextHop6 string `yaml:"next_hop6"`
	// HoldTime of the sessions (3s at least); keepalives every third of it.
	HoldTime     time.Duration    `yaml:"hold_time"`
	ConnectRetry time.Duration    `yaml:"connect_retry"`
	Neighbors    []NeighborConfig `yaml:"neighbors"`
}

// NeighborConfig is one BGP neighbour.
type NeighborConfig struct {
	Address      string `yaml:"address"`       // IP address
	ASN          uint32 `yaml:"asn"`           // its AS number (ours: iBGP)
	Password     string `yaml:"password"`      // TCP MD5 (RFC 2385); "" none
	Port         int    `yaml:"port"`          // default 179
	LocalAddress string `yaml:"local_address"` // source address of the session; default the kernel's choice
	Passive      bool   `yaml:"passive"`       // wait for the neighbour to connect (needs bgp.listen_port)
	Multihop     int    `yaml:"multihop"`      // eBGP TTL for neighbours not directly connected; 0: directly connected
}

// KernelConfig configures the kernel-route mode.
type KernelConfig struct {
	Interface string `yaml:"interface"` // dummy interface holding the addresses (created if absent)
}

// HealthConfig configures the health checker.
type HealthConfig struct {
	Interval time.Duration `yaml:"interval"` // between checks
	Fall     int           `yaml:"fall"`     // consecutive bad checks to go unhealthy
	Rise     int           `yaml:"rise"`     // consecutive good checks to come back
	// InstallErrorAge: a data plane install error younger than this (and
	// none succeeded since) is bad.
	InstallErrorAge time.Duration `yaml:"install_error_age"`
	// QueueFill: receive queues of IKE_AUTH and established SAs' messages
	// fuller than this share (0..1] are bad (new IKE_SA_INITs waiting or
	// dropped are load, not ill health).
	QueueFill float64 `yaml:"queue_fill"`
	// QueueDrops: more IKE_AUTH and established SAs' messages dropped on
	// full queues than this between two checks is bad.
	QueueDrops uint64 `yaml:"queue_drops"`
}

// MembersConfig configures membership gossip (memberlist).
type MembersConfig struct {
	// Listen is host:port for gossip (UDP and TCP); "" disables membership.
	Listen    string   `yaml:"listen"`
	Advertise string   `yaml:"advertise"` // host:port the others reach us on; default listen's
	Join      []string `yaml:"join"`      // host:port of members to join through
	// SecretKeyFile: hex AES key (16, 24 or 32 bytes) encrypting and
	// authenticating gossip, readable by the node's account only; ""
	// plaintext, allowed only on a loopback members.listen (nodes on one
	// host).
	SecretKeyFile string `yaml:"secret_key_file"`
}

// DrainConfig configures draining (SIGTERM and the admin API).
type DrainConfig struct {
	// GracePeriod bounds a drain on SIGTERM: withdraw, wait for the SAs to
	// move, push what remains to the state store, exit.
	GracePeriod time.Duration `yaml:"grace_period"`
	// Settle is how long to wait once no SA has left for that long (idle
	// gateways send nothing that would move them).
	Settle time.Duration `yaml:"settle"`
}

// RedirectConfig configures RFC 5685 redirects of new gateways.
type RedirectConfig struct {
	Enabled bool `yaml:"enabled"` // redirect gateways that announce REDIRECT_SUPPORTED
	// MaxSAs: above this many IKE SAs the node is overloaded and redirects
	// new gateways to the least loaded live member; 0 only while draining.
	MaxSAs int `yaml:"max_sas"`
	// Unicast is this node's own address (not the anycast one), where the
	// other nodes redirect gateways to; it must be in ike.listen too.
	Unicast string `yaml:"unicast"`
}

// DefaultConfig is the section's defaults.
func DefaultConfig() Config {
	return Config{
		BGP:     BGPConfig{HoldTime: 9 * time.Second, ConnectRetry: 5 * time.Second},
		Kernel:  KernelConfig{Interface: "ikf-anycast"},
		Health:  HealthConfig{Interval: time.Second, Fall: 3, Rise: 2, InstallErrorAge: 30 * time.Second, QueueFill: 0.9, QueueDrops: 100},
		Drain:   DrainConfig{GracePeriod: 30 * time.Second, Settle: 5 * time.Second},
		Members: MembersConfig{},
	}
}

// FieldError is a configuration error in one field (its path below
// anycast:).
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Prefixes returns what the node announces: Addresses (default listen,
// the node's specific IKE listen addresses) as host prefixes, then
// InnerPrefixes.
func (c *Config) Prefixes(listen []netip.Addr) ([]netip.Prefix, error) {
	var out []netip.Prefix
	addrs := c.Addresses
	if len(addrs) == 0 {
		for _, a := range listen {
			if a.IsValid() && !a.IsUnspecified() {
				addrs = append(addrs, a.String())
			}
		}
	}
	for i, s := range addrs {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("addresses[%d]", i), "%v", err)
		}
		out = append(out, p)
	}
	for i, s := range c.InnerPrefixes {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("inner_prefixes[%d]", i), "%v", err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("not an address or prefix: %q", s)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("host bits set in %s (did you mean %s?)", p, p.Masked())
	}
	return p, nil
}

// Validate checks the section; listen are ike.listen's addresses. Errors
// are *FieldError with the path below anycast:.
func (c *Config) Validate(listen []netip.Addr) error {
	switch c.Mode {
	case ModeOff, ModeBGP, ModeKernel:
	default:
		return fieldErr("mode", "must be %q, %q or %q, not %q", ModeOff, ModeBGP, ModeKernel, c.Mode)
	}
	ps, err := c.Prefixes(listen)
	if err != nil {
		return err
	}
	if c.Mode != ModeOff && len(ps) == 0 && !c.AnnounceVirtualIPs {
		return fieldErr("addresses", "nothing to announce: ike.listen has no specific address (0.0.0.0 or ::); name the anycast addresses here")
	}
	if err := c.Health.validate(); err != nil {
		return err
	}
	if c.Drain.GracePeriod <= 0 {
		return fieldErr("drain.grace_period", "must be positive, not %s", c.Drain.GracePeriod)
	}
	if c.Drain.Settle < 0 || c.Drain.Settle > c.Drain.GracePeriod {
		return fieldErr("drain.settle", "must be between 0 and drain.grace_period (%s), not %s", c.Drain.GracePeriod, c.Drain.Settle)
	}
	if c.Redirect.MaxSAs < 0 {
		return fieldErr("redirect.max_sas", "must not be negative")
	}
	if c.Redirect.Unicast != "" {
		u, err := netip.ParseAddr(c.Redirect.Unicast)
		if err != nil || u.IsUnspecified() {
			return fieldErr("redirect.unicast", "must be a specific IP address, not %q", c.Redirect.Unicast)
		}
		served := false
		for _, a := range listen {
			served = served || a.Unmap() == u.Unmap() || (a.IsUnspecified() && a.Is4() == u.Unmap().Is4())
		}
		if !served {
			return fieldErr("redirect.unicast", "%s is not among ike.listen's addresses: redirected gateways would find nobody there", u)
		}
	}
	if c.Redirect.Enabled && c.Members.Listen == "" {
		return fieldErr("redirect.enabled", "needs members.listen: redirect targets are the live members")
	}
	if err := c.Members.validate(); err != nil {
		return err
	}
	switch c.Mode {
	case ModeBGP:
		return c.BGP.validate(ps)
	case ModeKernel:
		if c.Kernel.Interface == "" || len(c.Kernel.Interface) > 15 {
			return fieldErr("kernel.interface", "must be an interface name of 1 to 15 characters, not %q", c.Kernel.Interface)
		}
	}
	return nil
}

func (h *HealthConfig) validate() error {
	switch {
	case h.Interval <= 0:
		return fieldErr("health.interval", "must be positive, not %s", h.Interval)
	case h.Fall < 1:
		return fieldErr("health.fall", "must be at least 1, not %d", h.Fall)
	case h.Rise < 1:
		return fieldErr("health.rise", "must be at least 1, not %d", h.Rise)
	case h.InstallErrorAge < 0:
		return fieldErr("health.install_error_age", "must not be negative")
	case h.QueueFill <= 0 || h.QueueFill > 1:
		return fieldErr("health.queue_fill", "must be in (0, 1], not %g", h.QueueFill)
	}
	return nil
}

func (m *MembersConfig) validate() error {
	if m.Listen == "" {
		if m.Advertise != "" || len(m.Join) > 0 {
			return fieldErr("members.listen", "required with members.advertise and members.join")
		}
		return nil
	}
	lp, err := hostPort(m.Listen, true)
	if err != nil {
		return fieldErr("members.listen", "%v", err)
	}
	if m.Advertise != "" {
		ap, err := hostPort(m.Advertise, false)
		if err != nil {
			return fieldErr("members.advertise", "%v", err)
		}
		if ap.Addr().IsUnspecified() {
			return fieldErr("members.advertise", "must be a specific address, not %s", ap.Addr())
		}
	}
	for i, j := range m.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fieldErr(fmt.Sprintf("members.join[%d]", i), "must be host:port: %v", err)
		}
	}
	if m.SecretKeyFile == "" && !lp.Addr().Unmap().IsLoopback() {
		return fieldErr("members.secret_key_file", "required: members.listen %s is not a loopback address, and without the key gossip is plaintext and unauthenticated (whoever reaches the port could join and announce members, redirect targets and load)", m.Listen)
	}
	return nil
}

// hostPort parses host:port with an IP address host ("" allowed when
// wildcard: all addresses).
func hostPort(s string, wildcard bool) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("must be host:port: %v", err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", port)
	}
	if host == "" && wildcard {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("host must be an IP address: %q", host)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

func (b *BGPConfig) validate(ps []netip.Prefix) error {
	if b.ASN == 0 {
		return fieldErr("bgp.asn", "required with mode bgp")
	}
	rid, err := netip.ParseAddr(b.RouterID)
	if err != nil || !rid.Is4() {
		return fieldErr("bgp.router_id", "must be an IPv4 address (a BGP identifier), not %q", b.RouterID)
	}
	if b.ListenPort < 0 || b.ListenPort > 65535 {
		return fieldErr("bgp.listen_port", "must be 0 (do not listen) to 65535, not %d", b.ListenPort)
	}
	if b.NextHop != "" {
		if a, err := netip.ParseAddr(b.NextHop); err != nil || !a.Is4() {
			return fieldErr("bgp.next_hop", "must be an IPv4 address, not %q", b.NextHop)
		}
	}
	if b.NextHop6 != "" {
		if a, err := netip.ParseAddr(b.NextHop6); err != nil || !a.Is6() || a.Is4In6() {
			return fieldErr("bgp.next_hop6", "must be an IPv6 address, not %q", b.NextHop6)
		}
	}
	if b.HoldTime < 3*time.Second || b.HoldTime > 65535*time.Second || b.HoldTime%time.Second != 0 {
		return fieldErr("bgp.hold_time", "must be whole seconds from 3s to 65535s (RFC 4271), not %s", b.HoldTime)
	}
	if b.ConnectRetry < time.Second {
		return fieldErr("bgp.connect_retry", "must be at least 1s, not %s", b.ConnectRetry)
	}
	if len(b.Neighbors) == 0 {
		return fieldErr("bgp.neighbors", "at least one neighbour with mode bgp")
	}
	seen := map[netip.Addr]bool{}
	for i, n := range b.Neighbors {
		f := fmt.Sprintf("bgp.neighbors[%d]", i)
		a, err := netip.ParseAddr(n.Address)
		if err != nil {
			return fieldErr(f+".address", "not an IP address: %q", n.Address)
		}
		if seen[a] {
			return fieldErr(f+".address", "%s is listed twice", a)
		}
		seen[a] = true
		if n.ASN == 0 {
			return fieldErr(f+".asn", "required")
		}
		if n.Port < 0 || n.Port > 65535 {
			return fieldErr(f+".port", "must be 0 (179) to 65535, not %d", n.Port)
		}
		if n.LocalAddress != "" {
			la, err := netip.ParseAddr(n.LocalAddress)
			if err != nil {
				return fieldErr(f+".local_address", "not an IP address: %q", n.LocalAddress)
			}
			if la.Is4() != a.Is4() {
				return fieldErr(f+".local_address", "%s and the neighbour %s are not of one family", la, a)
			}
		}
		if n.Passive && b.ListenPort == 0 {
			return fieldErr(f+".passive", "needs bgp.listen_port: a passive session waits for the neighbour to connect")
		}
		if n.Multihop < 0 || n.Multihop > 255 {
			return fieldErr(f+".multihop", "must be 0 to 255, not %d", n.Multihop)
		}
	}
	// An IPv6 prefix needs an IPv6 next hop: an IPv6 session's own address
	// or next_hop6.
	for _, p := range ps {
		if p.Addr().Is6() && b.NextHop6 == "" && !anyV6(b.Neighbors) {
			return fieldErr("bgp.next_hop6", "required to announce %s over IPv4 sessions", p)
		}
	}
	return nil
}

func anyV6(ns []NeighborConfig) bool {
	for _, n := range ns {
		if a, err := netip.ParseAddr(n.Address); err == nil && a.Is6() && !a.Is4In6() {
			return true
		}
	}
	return false
}

// ErrClosed is returned by a Front's methods after Close.
var ErrClosed = errors.New("lb: closed")
