package statestore

// A stand-alone node's state store on local disk: the embedded etcd member
// in its data directory, reached through a unix socket there, and the
// cluster key generated the first time.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ikefleet/ikefleet/internal/secretfile"
)

// Files in a node's data directory.
const (
	embeddedEtcdDir    = "etcd"        // the member's data, and its client socket
	embeddedSocketFile = "client.sock" // in embeddedEtcdDir
	// legacyAddrsFile: the loopback TCP ports releases before this one
	// served the member on ("<client host:port> <peer host:port>"); removed
	// once the member serves on its socket.
	legacyAddrsFile = "etcd-addrs"
	clusterKeyFile  = "cluster.key" // hex: where releases before DefaultClusterKeyFile generated the key
)

// maxSocketPath is the longest path a unix socket can be bound to on
// Linux (sun_path is 108 bytes, with its terminating NUL).
const maxSocketPath = 107

// DataDirError is a data directory (or a file in it) that cannot be used.
type DataDirError struct {
	Path string
	Err  error
}

func (e *DataDirError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }
func (e *DataDirError) Unwrap() error { return e.Err }

// KeyFileError is a cluster key file that cannot be read or does not hold
// a key.
type KeyFileError struct {
	Path   string
	Reason string
	Err    error // the I/O error, if any
}

func (e *KeyFileError) Error() string {
	if e.Err != nil && e.Reason != "" {
		return fmt.Sprintf("%s: %s: %v", e.Path, e.Reason, e.Err)
	}
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Reason)
}
func (e *KeyFileError) Unwrap() error { return e.Err }

// OpenEmbedded starts the single-member etcd that a stand-alone node keeps
// in dataDir (created if missing, 0700): its data under dataDir/etcd. The
// node reaches it in process (LocalClient); the member listens on no TCP
// port, peer or client. Other processes of the node's user (nodes sharing
// this member on one host, etcdctl) connect through the unix socket
// dataDir/etcd/client.sock (Endpoints), whose directory and the socket
// itself only that user may enter and write; when that path is too long
// for a unix socket there is no socket and Endpoints is empty. cfg may set
// anything but Dir, Socket, ClientAddr, PeerAddr and the TLS files.
// Errors: *DataDirError for the directory, else etcd's.
func OpenEmbedded(dataDir string, cfg EmbedConfig) (*Embedded, error) {
	if dataDir == "" {
		return nil, &DataDirError{Path: dataDir, Err: errors.New("no data directory")}
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, &DataDirError{Path: dataDir, Err: err}
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, &DataDirError{Path: dataDir, Err: err}
	}
	cfg.Dir = filepath.Join(abs, embeddedEtcdDir)
	if err := privateDir(cfg.Dir); err != nil {
		return nil, &DataDirError{Path: cfg.Dir, Err: err}
	}
	cfg.ClientAddr, cfg.PeerAddr = "", ""
	cfg.CertFile, cfg.KeyFile, cfg.ClientCAFile = "", "", ""
	cfg.Socket = filepath.Join(cfg.Dir, embeddedSocketFile)
	if len(cfg.Socket) > maxSocketPath {
		cfg.Socket = ""
		cfg.NoListeners = true
	}
	e, err := StartEmbedded(cfg)
	if err != nil {
		return nil, err
	}
	// The ports an older release kept here are no longer served.
	if err := os.Remove(filepath.Join(abs, legacyAddrsFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.Close()
		return nil, &DataDirError{Path: filepath.Join(abs, legacyAddrsFile), Err: err}
	}
	return e, nil
}

// privateDir makes dir (created if missing) enterable by its owner only:
// the member's data and its client socket are in it.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return errors.New("not a directory")
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return os.Chmod(dir, 0o700)
	}
	return nil
}

// DefaultClusterKeyFile is the cluster key's path when no key file is
// configured (statestore.cluster_key_file): outside the data directory,
// which holds (embedded etcd) the records the key seals, so that a copy of
// the data directory or of its backups opens nothing.
const DefaultClusterKeyFile = "/etc/ikefleet/cluster.key"

// defaultKeyFile is DefaultClusterKeyFile; tests point it elsewhere.
var defaultKeyFile = DefaultClusterKeyFile

// KeyLocation is where the cluster key is read from.
type KeyLocation struct {
	Path string
	// Explicit: the configured key file.
	Explicit bool
	// Legacy: none is configured, DefaultClusterKeyFile does not exist,
	// and dataDir/cluster.key does (where releases before this one
	// generated it): it is used, and the node warns. Migration: move the
	// file to DefaultClusterKeyFile (or set statestore.cluster_key_file to
	// where it is) and restart.
	Legacy bool
}

// LocateClusterKey resolves the cluster key file: keyFile if set; else
// DefaultClusterKeyFile, unless it is absent and the data directory holds
// a key of an older release (Legacy).
func LocateClusterKey(keyFile, dataDir string) KeyLocation {
	if keyFile != "" {
		return KeyLocation{Path: keyFile, Explicit: true}
	}
	if _, err := os.Lstat(defaultKeyFile); errors.Is(err, os.ErrNotExist) && dataDir != "" {
		old := filepath.Join(dataDir, clusterKeyFile)
		if _, err := os.Lstat(old); err == nil {
			return KeyLocation{Path: old, Legacy: true}
		}
	}
	return KeyLocation{Path: defaultKeyFile}
}

// LoadKeyring returns a keyring holding the cluster key (32 bytes in hex,
// key id 1, or several keys: ParseKeyring) from LocateClusterKey(keyFile,
// dataDir). With keyFile empty and a data directory (a stand-alone node),
// an absent key is generated at DefaultClusterKeyFile: a stand-alone node
// needs no key management. A cluster of several nodes configures the same
// keyFile everywhere. Errors: *KeyFileError.
func LoadKeyring(keyFile, dataDir string) (*Keyring, error) {
	loc := LocateClusterKey(keyFile, dataDir)
	if !loc.Explicit && dataDir == "" {
		if _, err := os.Lstat(loc.Path); errors.Is(err, os.ErrNotExist) {
			return nil, &KeyFileError{Path: loc.Path, Reason: "neither a key file nor a data directory"}
		}
	}
	return LoadKeyFile(loc.Path, !loc.Explicit)
}

// LoadKeyFile returns the keyring in the cluster key file path. With
// generate, an absent file is created first (a fresh key, mode 0600, its
// directory 0700 if it has to be made). The file must not be readable by
// group or others. Errors: *KeyFileError.
func LoadKeyFile(path string, generate bool) (*Keyring, error) {
	if _, err := os.Lstat(path); generate && errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, &KeyFileError{Path: path, Reason: "generating the cluster key", Err: err}
		}
		key := make([]byte, ClusterKeyLen)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n")); err != nil {
			return nil, &KeyFileError{Path: path, Reason: "generating the cluster key", Err: err}
		}
	}
	if err := secretfile.Check(path); err != nil {
		var ee *secretfile.ExposedError
		if errors.As(err, &ee) {
			return nil, &KeyFileError{Path: path, Reason: ee.Reason()}
		}
		return nil, &KeyFileError{Path: path, Err: err}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: err}
	}
	k, err := ParseKeyring(b)
	if err != nil {
		return nil, &KeyFileError{Path: path, Reason: err.Error()}
	}
	return k, nil
}

// ParseKeyring reads a cluster key file: either one key (32 bytes in hex,
// key id 1), or one key a line as "<id>:<hex>" (ids 1 to 2^32-1, '#'
// starts a comment). The key with the highest id is current; every key
// opens records. A Store seals under the newest key every live node holds
// (SealingKey). Rotation: add a line with a higher id on every node and
// reload (or restart) each; once the last node holds it, every node seals
// under it and rewrites the records sealed under other keys (Store.Rewrap,
// logged when done); then remove the old line.
func ParseKeyring(b []byte) (*Keyring, error) {
	var k *Keyring
	var newest uint32
	lines := 0
	for n, line := range strings.Split(string(b), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		lines++
		id := uint64(1)
		hexKey := line
		if i := strings.IndexByte(line, ':'); i >= 0 {
			var err error
			if id, err = strconv.ParseUint(strings.TrimSpace(line[:i]), 10, 32); err != nil || id == 0 {
				return nil, fmt.Errorf("line %d: key id must be 1 to 4294967295", n+1)
			}
			hexKey = strings.TrimSpace(line[i+1:])
		} else if lines > 1 {
			return nil, fmt.Errorf("line %d: several keys need ids (\"<id>:<hex>\")", n+1)
		}
		key, err := hex.DecodeString(hexKey)
		if err != nil || len(key) != ClusterKeyLen {
			return nil, fmt.Errorf("line %d: must hold %d bytes in hex", n+1, ClusterKeyLen)
		}
		if k == nil {
			if k, err = NewKeyring(uint32(id), key); err != nil {
				return nil, err
			}
		} else {
			if _, dup := k.keys[uint32(id)]; dup {
				return nil, fmt.Errorf("line %d: key id %d twice", n+1, id)
			}
			if err := k.Add(uint32(id), key); err != nil {
				return nil, err
			}
		}
		newest = max(newest, uint32(id))
	}
	if k == nil {
		return nil, fmt.Errorf("must hold %d bytes in hex", ClusterKeyLen)
	}
	k.current = newest
	return k, nil
}

// writeFileAtomic writes a small file readable by its owner only (0600,
// CreateTemp's mode), so that
// a crash leaves either no file or the whole of it.
func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
