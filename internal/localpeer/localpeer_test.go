package localpeer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/internal/localpeer/localpeertest"
)

const nobody = localpeertest.Nobody

var needRoot = localpeertest.NeedRoot

func dialAs(t *testing.T, uid int, addr string) net.Conn {
	t.Helper()
	c, err := localpeertest.DialAs(context.Background(), uid, addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dial connects to addr from a socket of this process's account.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// accept returns the server's end of one connection to l.
func accept(t *testing.T, l net.Listener, dial func() net.Conn) (server, client net.Conn) {
	t.Helper()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	client = dial()
	server, ok := <-ch
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// The owner of a loopback connection's far end, over IPv4 and IPv6: this
// process's account, or another one's.
func TestUID(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		l := listen(t, tc.network, tc.addr)
		srv, _ := accept(t, l, func() net.Conn { return dial(t, l.Addr().String()) })
		uid, err := UID(srv)
		if err != nil || uid != uint32(os.Geteuid()) {
			t.Fatalf("%s: uid %d, %v; want %d", tc.network, uid, err, os.Geteuid())
		}
	}
	needRoot(t)
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		l := listen(t, tc.network, tc.addr)
		srv, _ := accept(t, l, func() net.Conn { return dialAs(t, nobody, l.Addr().String()) })
		if uid, err := UID(srv); err != nil || uid != nobody {
			t.Fatalf("%s: uid %d, %v; want %d", tc.network, uid, err, nobody)
		}
	}
}

// A peer whose socket is gone by the time it is looked up is not told
// by anything: ErrNotFound, never some other connection's owner.
func TestUIDGonePeer(t *testing.T) {
	dir := t.TempDir()
	saved := procFiles
	t.Cleanup(func() { procFiles = saved })
	for i := range procFiles {
		f := dir + "/tcp" + string(rune('0'+i))
		if err := os.WriteFile(f, []byte("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		procFiles[i] = f
	}
	l := listen(t, "tcp4", "127.0.0.1:0")
	srv, _ := accept(t, l, func() net.Conn { return dial(t, l.Addr().String()) })
	if _, err := UID(srv); !errors.Is(err, ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
}

// OwnerOnly lets this account's connections through and closes another
// account's at once, reporting it; the listener goes on serving.
func TestOwnerOnly(t *testing.T) {
	needRoot(t)
	var mu sync.Mutex
	var refusals []Refusal
	l := OwnerOnly(listen(t, "tcp4", "127.0.0.1:0"), func(r Refusal) {
		mu.Lock()
		refusals = append(refusals, r)
		mu.Unlock()
	})
	served := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(served)
				return
			}
			c.Write([]byte("hi"))
			served <- c
		}
	}()
	other := dialAs(t, nobody, l.Addr().String())
	defer other.Close()
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := other.Read(make([]byte, 2)); err == nil || n != 0 {
		t.Fatalf("another account's connection read %d bytes, %v; want it closed", n, err)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		t.Fatalf("another account's connection: %v, want closed", err)
	}
	mine := dial(t, l.Addr().String())
	defer mine.Close()
	mine.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(mine, make([]byte, 2)); err != nil {
		t.Fatalf("own connection: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refusals) != 1 || refusals[0].UID != nobody || refusals[0].Err != nil {
		t.Fatalf("refusals %+v, want one of uid %d", refusals, nobody)
	}
	// The connection our account made is the one served (the server
	// writes before it hands the connection over: wait for it).
	select {
	case c := <-served:
		if c.RemoteAddr().String() != mine.LocalAddr().String() {
			t.Fatalf("served %v, want our connection from %v", c.RemoteAddr(), mine.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("our connection was not handed over")
	}
	if len(served) != 0 {
		t.Fatalf("%d more connections served, want none", len(served))
	}
}

// A listing larger than the first read buffer (a host with thousands of
// TCP sockets) is read whole: the row after them is found.
func TestUIDLongListing(t *testing.T) {
	l := listen(t, "tcp4", "127.0.0.1:0")
	srv, _ := accept(t, l, func() net.Conn { return dial(t, l.Addr().String()) })
	real, err := os.ReadFile(procFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(real), "\n", 2)
	var b strings.Builder
	b.WriteString(lines[0] + "\n")
	for i := range 5000 { // about 750 KB of other sockets first
		fmt.Fprintf(&b, "%4d: 0A00000%d:%04X 0B000001:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 %d 1 0000000000000000 20 4 30 10 -1\n", i, i%10, 1024+i, 100000+i)
	}
	b.WriteString(lines[1])
	f := filepath.Join(t.TempDir(), "tcp")
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	saved := procFiles
	t.Cleanup(func() { procFiles = saved })
	procFiles[0] = f
	if uid, err := UID(srv); err != nil || uid != uint32(os.Geteuid()) {
		t.Fatalf("uid %d, %v; want %d", uid, err, os.Geteuid())
	}
}
