// Package localpeer tells which account opened the other end of a TCP
// connection over loopback, and keeps other accounts off a listener.
//
// A plaintext API on loopback (the admin API, the peer API of nodes on one
// host) is open to every account on the host, and to every container
// sharing its network namespace. TCP has no SO_PEERCRED, but on Linux the
// kernel lists every socket of the network namespace with its owner in
// /proc/net/tcp and /proc/net/tcp6: the client's socket is the row whose
// local address is the connection's remote one and whose remote address
// is the connection's local one.
package localpeer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// procFiles are read for a connection's row, IPv4 first: under the
// process's own directory, which stays visible where /proc shows only
// processes (systemd's ProcSubset=pid). Tests replace them.
var procFiles = [2]string{"/proc/self/net/tcp", "/proc/self/net/tcp6"}

// ErrNotFound: no socket of this network namespace has the connection's
// far end (it closed meanwhile, or it is not over loopback).
var ErrNotFound = errors.New("localpeer: the connection's peer socket is not listed")

// UID returns the user id owning the socket at the far end of c, a TCP
// connection between two addresses of this host.
func UID(c net.Conn) (uint32, error) {
	local, err := addrPort(c.LocalAddr())
	if err != nil {
		return 0, err
	}
	remote, err := addrPort(c.RemoteAddr())
	if err != nil {
		return 0, err
	}
	if !remote.Addr().IsLoopback() && !remote.Addr().Unmap().IsLoopback() {
		return 0, fmt.Errorf("localpeer: %v is not a loopback address", remote.Addr())
	}
	// The client's row: its own address first.
	want4 := [2]string{procAddr(remote, false), procAddr(local, false)}
	want6 := [2]string{procAddr(remote, true), procAddr(local, true)}
	// The kernel lists the table a read at a time; sockets opened and
	// closed meanwhile can make a listing skip a row that was there all
	// along, so a row not found is looked for again.
	for range lookups {
		for i, f := range procFiles {
			want := want4
			if i == 1 {
				want = want6
			}
			if want[0] == "" {
				continue // an IPv6 address has no row in the IPv4 table
			}
			uid, err := find(f, want)
			if err == nil || !errors.Is(err, ErrNotFound) {
				return uid, err
			}
		}
	}
	return 0, ErrNotFound
}

// lookups: how many listings UID reads before it gives up on a row.
const lookups = 3

func addrPort(a net.Addr) (netip.AddrPort, error) {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("localpeer: not a TCP address: %v", a)
	}
	return t.AddrPort(), nil
}

// procAddr is ap as the kernel writes it in /proc/net/tcp (v6 false) or
// tcp6: the address in 32-bit words of the host's byte order, each in
// hex, then the port. "" when ap has no form in that table.
func procAddr(ap netip.AddrPort, v6 bool) string {
	a := ap.Addr()
	var b []byte
	switch {
	case !v6 && (a.Is4() || a.Is4In6()):
		x := a.Unmap().As4()
		b = x[:]
	case v6:
		x := a.As16()
		b = x[:]
	default:
		return ""
	}
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&sb, "%08X", binary.NativeEndian.Uint32(b[i:i+4]))
	}
	fmt.Fprintf(&sb, ":%04X", ap.Port())
	return sb.String()
}

// find returns the uid of the row of file whose local and remote
// addresses are want.
func find(file string, want [2]string) (uint32, error) {
	// One read(2) as large as the listing, if it fits: the kernel walks
	// the table once for it.
	b, err := readAll(file)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 || fs[1] != want[0] || fs[2] != want[1] {
			continue
		}
		uid, err := strconv.ParseUint(fs[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("localpeer: %s: uid %q: %v", file, fs[7], err)
		}
		return uint32(uid), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, ErrNotFound
}

// readAll reads file with as few read(2) calls as its size allows: a
// buffer of 256 KiB (about 1,700 sockets) and larger ones as needed.
func readAll(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 256<<10)
	n := 0
	for {
		m, err := f.Read(b[n:])
		n += m
		if err == io.EOF || m == 0 && err == nil {
			return b[:n], nil
		}
		if err != nil {
			return nil, err
		}
		if n == len(b) {
			b = append(b, make([]byte, len(b))...)
		}
	}
}

// Refusal is a connection OwnerOnly closed.
type Refusal struct {
	Remote net.Addr
	UID    uint32 // valid when Err is nil
	Err    error  // the owner could not be told
}

// OwnerOnly returns l, but a connection whose far end is not a socket of
// the account running this process or of root is closed as soon as it is
// accepted, and reported to refused (if not nil). l must listen on
// loopback only: a connection from elsewhere has no row to tell its owner
// by and is closed too.
func OwnerOnly(l net.Listener, refused func(Refusal)) net.Listener {
	return &ownerOnly{Listener: l, me: uint32(os.Geteuid()), refused: refused}
}

type ownerOnly struct {
	net.Listener
	me      uint32
	refused func(Refusal)
}

func (o *ownerOnly) Accept() (net.Conn, error) {
	for {
		c, err := o.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := UID(c)
		if err == nil && (uid == o.me || uid == 0) {
			return c, nil
		}
		if o.refused != nil {
			o.refused(Refusal{Remote: c.RemoteAddr(), UID: uid, Err: err})
		}
		c.Close()
	}
}
