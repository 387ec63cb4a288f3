//go:build !linux

package userspace

import (
	"errors"
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
