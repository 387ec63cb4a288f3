// Package localpeertest opens connections as another account, for tests
// of listeners guarded by localpeer.OwnerOnly.
package localpeertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Nobody is the account tests connect as when they need another one.
const Nobody = 65534

// NeedRoot skips a test that must open sockets as another account, except
// under CI, where it fails.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("needs root (opens a socket as another account)")
	}
	t.Skip("needs root (opens a socket as another account)")
}

// DialAs connects to addr (TCP) from a socket owned by uid: the kernel
// records the creating thread's file-system uid as the socket's owner, so
// the socket is made on a locked thread with that uid set, then the uid
// is set back. Needs root.
func DialAs(ctx context.Context, uid int, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev, _ := unix.SetfsuidRetUid(uid)
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	unix.SetfsuidRetUid(prev)
	if cur, _ := unix.SetfsuidRetUid(-1); cur != prev { // -1 only reads it
		panic(fmt.Sprintf("localpeertest: file-system uid %d left on the thread, was %d", cur, prev))
	}
	return c, err
}
