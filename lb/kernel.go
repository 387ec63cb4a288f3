package lb

// Kernel-route mode: the anycast addresses sit on a dummy interface while
// the node is healthy and not draining; a routing daemon on the host (BIRD,
// FRR) announces what it finds there (BIRD: protocol direct on the
// interface). Host prefixes (/32, /128) become addresses of the interface;
// wider ones (inner prefixes) routes through it. The node still binds the
// anycast address elsewhere (lo): the dummy interface is only the signal.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// KernelRoutes puts the prefixes on a dummy interface.
type KernelRoutes struct {
	name string
	log  *slog.Logger

	mu        sync.Mutex
	link      netlink.Link
	announced map[netip.Prefix]bool
}

// NewKernelRoutes returns kernel-route mode on interface name.
func NewKernelRoutes(name string, log *slog.Logger) *KernelRoutes {
	return &KernelRoutes{name: name, log: log, announced: map[netip.Prefix]bool{}}
}

// Start creates the dummy interface if it is absent, brings it up and
// removes addresses a previous run left on it.
func (k *KernelRoutes) Start(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, err := netlink.LinkByName(k.name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: k.name}}
		if err := netlink.LinkAdd(d); err != nil {
			return fmt.Errorf("kernel: create dummy interface %s: %w", k.name, err)
		}
		if l, err = netlink.LinkByName(k.name); err != nil {
			return fmt.Errorf("kernel: %s: %w", k.name, err)
		}
	case err != nil:
		return fmt.Errorf("kernel: %s: %w", k.name, err)
	case l.Type() != "dummy":
		return fmt.Errorf("kernel: %s is a %s interface, not a dummy one", k.name, l.Type())
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("kernel: %s up: %w", k.name, err)
	}
	k.link = l
	// Leftovers of a killed run: we own this interface's addresses.
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("kernel: %s addresses: %w", k.name, err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("kernel: remove stale %s from %s: %w", a.IPNet, k.name, err)
		}
	}
	return nil
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// Set puts exactly ps on the interface.
func (k *KernelRoutes) Set(ctx context.Context, ps []netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.link == nil {
		return ErrClosed
	}
	add, del := diff(k.announced, ps)
	for _, p := range del {
		if err := k.remove(p); err != nil {
			return fmt.Errorf("kernel: remove %s from %s: %w", p, k.name, err)
		}
		delete(k.announced, p)
	}
	for _, p := range add {
		var err error
		if p.IsSingleIP() {
			err = netlink.AddrReplace(k.link, nlAddr(p))
		} else {
			err = netlink.RouteReplace(k.route(p))
		}
		if err != nil {
			return fmt.Errorf("kernel: add %s to %s: %w", p, k.name, err)
		}
		k.announced[p] = true
	}
	return nil
}

func (k *KernelRoutes) route(p netip.Prefix) *netlink.Route {
	return &netlink.Route{LinkIndex: k.link.Attrs().Index, Dst: nlAddr(p).IPNet, Scope: netlink.SCOPE_LINK,
		Protocol: unix.RTPROT_STATIC}
}

func (k *KernelRoutes) remove(p netip.Prefix) error {
	var err error
	if p.IsSingleIP() {
		err = netlink.AddrDel(k.link, nlAddr(p))
	} else {
		err = netlink.RouteDel(k.route(p))
	}
	if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Sessions: kernel mode has none.
func (k *KernelRoutes) Sessions(context.Context) (int, int) { return 0, 0 }

// Close removes every address it added (the interface stays, for the
// routing daemon's configuration).
func (k *KernelRoutes) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.link == nil {
		return nil
	}
	var errs []error
	for p := range k.announced {
		if err := k.remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	clear(k.announced)
	k.link = nil
	return errors.Join(errs...)
}
