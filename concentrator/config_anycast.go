package concentrator

import (
	"errors"
	"net/netip"

	"github.com/ikefleet/ikefleet/lb"
)

// validateAnycast checks the anycast: section (package lb) against
// ike.listen; errors name the field as anycast.<field>.
func (c *Config) validateAnycast() error {
	var listen []netip.Addr
	for _, s := range c.IKE.Listen {
		if a, err := netip.ParseAddr(s); err == nil {
			listen = append(listen, a.Unmap())
		}
	}
	err := c.Anycast.Validate(listen)
	var fe *lb.FieldError
	if errors.As(err, &fe) {
		return &FieldError{Field: "anycast." + fe.Field, Err: fe.Err}
	}
	return err
}
