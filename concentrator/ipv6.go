package concentrator

import "net/netip"

// validatePool6 checks children.pool6: the IPv6 prefix virtual IPv6
// addresses (CP INTERNAL_IP6_ADDRESS) come from, beside children.pool.
func (c *Config) validatePool6() error {
	if c.Children.Pool6 == "" {
		return nil
	}
	p, err := netip.ParsePrefix(c.Children.Pool6)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() < 64 || p.Bits() > 126 {
		return fieldErr("children.pool6", "must be an IPv6 subnet of /64 to /126: %q", c.Children.Pool6)
	}
	return nil
}
