package statestore

// A stand-alone node's state store on local disk: the embedded etcd member
// in its data directory, on loopback addresses chosen once, and the cluster
// key generated there the first time.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Files in a node's data directory.
const (
	embeddedEtcdDir   = "etcd"        // the member's data
	embeddedAddrsFile = "etcd-addrs"  // "<client host:port> <peer host:port>\n"
	clusterKeyFile    = "cluster.key" // hex: where releases before DefaultClusterKeyFile generated the key
)

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
// in dataDir (created if missing): its data under dataDir/etcd, its client
// and peer addresses chosen on loopback the first time and kept in
// dataDir/etcd-addrs, since the member's data names them. cfg may set
// anything but Dir, ClientAddr and PeerAddr, which come from dataDir.
// Errors: *DataDirError for the directory, else etcd's.
func OpenEmbedded(dataDir string, cfg EmbedConfig) (*Embedded, error) {
	if dataDir == "" {
		return nil, &DataDirError{Path: dataDir, Err: errors.New("no data directory")}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, &DataDirError{Path: dataDir, Err: err}
	}
	cfg.Dir = filepath.Join(dataDir, embeddedEtcdDir)
	for try := 1; ; try++ {
		client, peer, chosen, err := embeddedAddrs(dataDir)
		if err != nil {
			return nil, err
		}
		cfg.ClientAddr, cfg.PeerAddr = client, peer
		e, err := StartEmbedded(cfg)
		if err == nil || !chosen || try == 3 || !errors.Is(err, syscall.EADDRINUSE) {
			return e, err
		}
		// Ports chosen just now, free when chosen, were taken by another
		// process before etcd bound them (etcd binds before it writes any
		// data): choose again.
		if err := os.Remove(filepath.Join(dataDir, embeddedAddrsFile)); err != nil {
			return nil, &DataDirError{Path: dataDir, Err: err}
		}
	}
}

// embeddedAddrs returns the member's addresses kept in dir, choosing free
// loopback ports the first time (chosen).
func embeddedAddrs(dir string) (client, peer string, chosen bool, err error) {
	path := filepath.Join(dir, embeddedAddrsFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		f := strings.Fields(string(b))
		if len(f) != 2 {
			return "", "", false, &DataDirError{Path: path, Err: errors.New("want two host:port addresses (client, peer)")}
		}
		return f[0], f[1], false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", "", false, &DataDirError{Path: path, Err: err}
	}
	if client, err = pickAddr(""); err != nil {
		return "", "", false, err
	}
	if peer, err = pickAddr(""); err != nil {
		return "", "", false, err
	}
	if err := writeFileAtomic(path, []byte(client+" "+peer+"\n")); err != nil {
		return "", "", false, &DataDirError{Path: path, Err: err}
	}
	return client, peer, true, nil
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
	fi, err := os.Stat(path)
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: err}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, &KeyFileError{Path: path, Reason: fmt.Sprintf("is readable by group or others (mode %04o): chmod 600 it", perm)}
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
