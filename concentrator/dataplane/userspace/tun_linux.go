//go:build linux

package userspace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

var errClosed = os.ErrClosed

// tun is a Linux TUN device (IFF_TUN | IFF_NO_PI: reads and writes are bare
// IP packets) plus the netlink handle that manages its link and routes.
// The device is not persistent: closing the file descriptor removes it
// and its routes.
type tun struct {
	f     *os.File
	name  string
	index int
	nl    *netlink.Handle
}

func openTUN(name string, mtu int) (*tun, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("userspace: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("userspace: TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("userspace: TUNSETIFF %s: %w", name, err)
	}
	// Non-blocking, so os.File uses the runtime poller and Close unblocks Read.
	t := &tun{f: os.NewFile(uintptr(fd), "/dev/net/tun"), name: ifr.Name()}
	if t.nl, err = netlink.NewHandle(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("userspace: netlink: %w", err)
	}
	link, err := t.nl.LinkByName(t.name)
	if err == nil {
		t.index = link.Attrs().Index
		err = t.nl.LinkSetMTU(link, mtu)
	}
	if err == nil {
		err = t.nl.LinkSetUp(link)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("userspace: set up %s: %w", t.name, err)
	}
	return t, nil
}

func (t *tun) Name() string                { return t.name }
func (t *tun) Read(b []byte) (int, error)  { return t.f.Read(b) }
func (t *tun) Write(b []byte) (int, error) { return t.f.Write(b) }

func (t *tun) Close() error {
	err := t.f.Close()
	if t.nl != nil {
		t.nl.Close()
	}
	return err
}

// AddRoute routes dst into the TUN device. Its source hint is the first
// local address inside the SA's local selectors, so that traffic this host
// originates towards the peer passes the peer's selectors.
func (t *tun) AddRoute(dst netip.Prefix, localTS []dataplane.Selector) error {
	r := &netlink.Route{LinkIndex: t.index, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK}
	if src := t.localSource(dst.Addr().Is4(), localTS); src.IsValid() {
		r.Src = src.AsSlice()
	}
	return t.nl.RouteReplace(r)
}

func (t *tun) DelRoute(dst netip.Prefix) error {
	err := t.nl.RouteDel(&netlink.Route{LinkIndex: t.index, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK})
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

func (t *tun) localSource(v4 bool, localTS []dataplane.Selector) netip.Addr {
	family := netlink.FAMILY_V6
	if v4 {
		family = netlink.FAMILY_V4
	}
	addrs, err := t.nl.AddrList(nil, family)
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		if matchAny(localTS, ip, 0, 0) {
			return ip
		}
	}
	return netip.Addr{}
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ConfigureSocket sizes the node's NAT-T socket buffers, which ESP bursts
// otherwise overflow (the kernel drops what the read loop has not taken).
// With CAP_NET_ADMIN the size may exceed net.core.rmem_max/wmem_max
// (SO_RCVBUFFORCE); without, the kernel caps it.
func (d *DataPlane) ConfigureSocket(c *net.UDPConn, natt bool) error {
	if !natt {
		return nil
	}
	for _, o := range []struct{ force, plain, size int }{
		{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, d.cfg.SocketRecvBuffer},
		{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, d.cfg.SocketSendBuffer},
	} {
		if o.size <= 0 {
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.force, o.size); serr != nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o.plain, o.size)
			}
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("userspace: socket buffer of %d bytes: %w", o.size, serr)
		}
	}
	return nil
}
