package statestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A stand-alone node's etcd serves no TCP port: clients of the node's
// user connect through a socket in the data directory that nobody else
// may enter or write, and the data stays across restarts.
func TestOpenEmbeddedServesOnASocketOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // created by OpenEmbedded
	before := tcpListeners(t)
	e, err := OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "etcd", "client.sock")
	if got := e.Endpoints(); len(got) != 1 || got[0] != "unix://"+sock {
		t.Fatalf("endpoints %q, want the socket %s", got, sock)
	}
	if extra := newListeners(before, tcpListeners(t)); len(extra) > 0 {
		t.Fatalf("the member listens on TCP: %v", extra)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "etcd"): 0o700, sock: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	cli := dial(t, e.Endpoints())
	if _, err := cli.Put(tctx(t, 5e9), "k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	e.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Close: %v", err)
	}

	e, err = OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r, err := dial(t, e.Endpoints()).Get(tctx(t, 5e9), "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("data lost across restart: %v %v", r, err)
	}
}

// A member an older release served on loopback TCP ports (kept in
// etcd-addrs) comes back with its data, on the socket only; the stale
// file goes, and a member directory others could enter is closed to them.
func TestOpenEmbeddedMovesOffTCP(t *testing.T) {
	dir := t.TempDir()
	old, err := StartEmbedded(EmbedConfig{Dir: filepath.Join(dir, "etcd"), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	cli := dial(t, old.Endpoints())
	if _, err := cli.Put(tctx(t, 5e9), "k", "v"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	old.Close()
	addrs := filepath.Join(dir, "etcd-addrs")
	if err := os.WriteFile(addrs, []byte(old.cfg.ClientAddr+" "+old.cfg.PeerAddr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "etcd"), 0o755); err != nil {
		t.Fatal(err)
	}

	before := tcpListeners(t)
	e, err := OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if extra := newListeners(before, tcpListeners(t)); len(extra) > 0 {
		t.Fatalf("the member listens on TCP: %v", extra)
	}
	r, err := dial(t, e.Endpoints()).Get(tctx(t, 5e9), "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("data lost moving to the socket: %v %v", r, err)
	}
	if _, err := os.Stat(addrs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etcd-addrs kept: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "etcd")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("member directory: %v %v, want mode 0700", fi.Mode(), err)
	}
}

// A data directory too deep for a unix socket's path: the member runs
// with no socket at all, for the node's own (in-process) client.
func TestOpenEmbeddedPathTooLongForASocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 110))
	before := tcpListeners(t)
	e, err := OpenEmbedded(dir, EmbedConfig{NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got := e.Endpoints(); len(got) != 0 {
		t.Fatalf("endpoints %q, want none", got)
	}
	if extra := newListeners(before, tcpListeners(t)); len(extra) > 0 {
		t.Fatalf("the member listens on TCP: %v", extra)
	}
	cli := e.LocalClient()
	defer cli.Close()
	if _, err := cli.Put(tctx(t, 5e9), "k", "v"); err != nil {
		t.Fatal(err)
	}
}

// tcpListeners returns the inodes of this process's listening TCP
// sockets (IPv4 and IPv6), each with its local address as the kernel
// writes it.
func tcpListeners(t *testing.T) map[string]string {
	t.Helper()
	listening := map[string]string{} // inode -> local address
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) > 9 && fs[3] == "0A" { // TCP_LISTEN
				listening[fs[9]] = fs[1]
			}
		}
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	mine := map[string]string{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inode = strings.TrimSuffix(inode, "]")
			if addr, ok := listening[inode]; ok {
				mine[inode] = addr
			}
		}
	}
	return mine
}

func newListeners(before, after map[string]string) []string {
	var extra []string
	for inode, addr := range after {
		if _, ok := before[inode]; !ok {
			extra = append(extra, addr)
		}
	}
	return extra
}

func TestOpenEmbeddedBadDataDir(t *testing.T) {
	var dd *DataDirError
	if _, err := OpenEmbedded("", EmbedConfig{}); !errors.As(err, &dd) {
		t.Fatalf("empty data dir: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "etcd"), nil, 0o600)
	if _, err := OpenEmbedded(dir, EmbedConfig{}); !errors.As(err, &dd) || dd.Path != filepath.Join(dir, "etcd") {
		t.Fatalf("member directory is a file: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := OpenEmbedded(file, EmbedConfig{}); !errors.As(err, &dd) {
		t.Fatalf("data dir is a file: %v", err)
	}
}

// withDefaultKeyFile points DefaultClusterKeyFile's stand-in at path for
// the test.
func withDefaultKeyFile(t *testing.T, path string) {
	old := defaultKeyFile
	defaultKeyFile = path
	t.Cleanup(func() { defaultKeyFile = old })
}

func TestLoadKeyring(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(t.TempDir(), "etc", "ikefleet", "cluster.key")
	withDefaultKeyFile(t, etc)
	k1, err := LoadKeyring("", dir)
	if err != nil {
		t.Fatal(err)
	}
	// Generated at the default path, outside the data directory.
	fi, err := os.Stat(etc)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated key file: %v %v", fi, err)
	}
	if di, err := os.Stat(filepath.Dir(etc)); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("generated key directory: %v %v", di, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cluster.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key in the data directory: %v", err)
	}
	// The same key the next time: what one seals the other opens.
	k2, err := LoadKeyring("", dir)
	if err != nil {
		t.Fatal(err)
	}
	id, sealed, err := k1.Seal([]byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := k2.Open(id, sealed, []byte("aad")); err != nil || !bytes.Equal(plain, []byte("secret")) {
		t.Fatalf("reloaded key does not open: %q %v", plain, err)
	}
	// An explicit key file is used as is, never generated.
	var ke *KeyFileError
	missing := filepath.Join(dir, "nope.key")
	if _, err := LoadKeyring(missing, dir); !errors.As(err, &ke) || ke.Path != missing || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing key file: %v", err)
	}
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("abcd\n"), 0o600)
	if _, err := LoadKeyring(short, ""); !errors.As(err, &ke) || ke.Path != short {
		t.Fatalf("short key: %v", err)
	}
	if k, err := LoadKeyring(etc, ""); err != nil {
		t.Fatalf("explicit key file: %v", err)
	} else if _, err := k.Open(id, sealed, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	os.Remove(etc)
	if _, err := LoadKeyring("", ""); !errors.As(err, &ke) {
		t.Fatalf("no file, no dir: %v", err)
	}
}

// Migration: a node of an older release generated its key in data_dir.
// With no key file configured and none at the default path, that key is
// used (Legacy: the node warns) instead of generating a new one that
// would open none of the records; once moved to the default path, the
// default wins.
func TestLoadKeyringLegacyDataDir(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(t.TempDir(), "cluster.key")
	withDefaultKeyFile(t, etc)
	old := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(old, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loc := LocateClusterKey("", dir)
	if !loc.Legacy || loc.Path != old {
		t.Fatalf("location %+v, want the legacy %s", loc, old)
	}
	k, err := LoadKeyring("", dir)
	if err != nil {
		t.Fatal(err)
	}
	id, sealed, _ := k.Seal([]byte("secret"), []byte("aad"))
	if _, err := os.Stat(etc); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key was generated at the default path beside the legacy one: %v", err)
	}
	// The operator moves it.
	if err := os.Rename(old, etc); err != nil {
		t.Fatal(err)
	}
	if loc := LocateClusterKey("", dir); loc.Legacy || loc.Path != etc {
		t.Fatalf("after the move: %+v", loc)
	}
	k2, err := LoadKeyring("", dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Open(id, sealed, []byte("aad")); err != nil {
		t.Fatalf("the moved key does not open: %v", err)
	}
	// The permission check applies to a legacy key too.
	os.Rename(etc, old)
	os.Chmod(old, 0o640)
	var ke *KeyFileError
	if _, err := LoadKeyring("", dir); !errors.As(err, &ke) || !strings.Contains(err.Error(), "group or others") {
		t.Fatalf("legacy key readable by the group: %v", err)
	}
	// An explicit key file is never resolved elsewhere.
	if loc := LocateClusterKey("/x/y.key", dir); !loc.Explicit || loc.Legacy || loc.Path != "/x/y.key" {
		t.Fatalf("explicit: %+v", loc)
	}
}
