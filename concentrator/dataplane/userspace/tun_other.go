//go:build !linux

package userspace

import (
	"errors"
	"net"
	"os"
)

var errClosed = os.ErrClosed

type tun struct{ noRoutes }

func (*tun) Name() string                { return "" }
func (*tun) Read(b []byte) (int, error)  { return 0, errClosed }
func (*tun) Write(b []byte) (int, error) { return 0, errClosed }
func (*tun) Close() error                { return nil }

func openTUN(string, int) (*tun, error) {
	return nil, errors.New("userspace: TUN devices are supported on Linux only")
}

// ConfigureSocket leaves the sockets as they are on this platform.
func (d *DataPlane) ConfigureSocket(*net.UDPConn, bool) error { return nil }
