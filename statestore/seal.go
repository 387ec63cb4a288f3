package statestore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"io"
	"slices"
	"sync"
)

// ClusterKeyLen is the length of a cluster key (AES-256).
const ClusterKeyLen = 32

const gcmNonceLen = 12

// Keyring holds the cluster keys that seal key material in etcd: the
// current key seals, every key opens. Rotation: add the new key to every
// node's keyring, then make it current everywhere, rewrite (or let rekeys
// rewrite) the records, and finally remove the old key. A Store makes the
// newest key every live node holds current (SealingKey), so the keys can
// be added one node at a time.
type Keyring struct {
	mu      sync.RWMutex
	current uint32
	keys    map[uint32]cipher.AEAD
	rand    io.Reader
}

// NewKeyring returns a keyring whose current key is key, named id.
func NewKeyring(id uint32, key []byte) (*Keyring, error) {
	k := &Keyring{keys: map[uint32]cipher.AEAD{}, rand: rand.Reader}
	if err := k.Add(id, key); err != nil {
		return nil, err
	}
	k.current = id
	return k, nil
}

// Add makes key, named id, available for opening records.
func (k *Keyring) Add(id uint32, key []byte) error {
	if len(key) != ClusterKeyLen {
		return fmt.Errorf("statestore: cluster key %d: %d bytes, want %d", id, len(key), ClusterKeyLen)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.keys[id] = g
	k.mu.Unlock()
	return nil
}

// SetCurrent makes the key named id the one that seals.
func (k *Keyring) SetCurrent(id uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.keys[id]; !ok {
		return &UnknownKeyError{KeyID: id}
	}
	k.current = id
	return nil
}

// Remove forgets the key named id; it cannot remove the current key.
func (k *Keyring) Remove(id uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if id == k.current {
		return fmt.Errorf("statestore: cannot remove the current cluster key %d", id)
	}
	delete(k.keys, id)
	return nil
}

// IDs returns the ids of the keys held, in increasing order.
func (k *Keyring) IDs() []uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	ids := make([]uint32, 0, len(k.keys))
	for id := range k.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Update makes k hold exactly the keys of from (a keyring read again from
// its file): keys added there become available, keys gone there are
// forgotten. The current key stays unless from lacks it; then from's
// current key seals. The store's choice of the sealing key (SealingKey)
// is made again by Store.AdvertiseKeys.
func (k *Keyring) Update(from *Keyring) {
	from.mu.RLock()
	keys := make(map[uint32]cipher.AEAD, len(from.keys))
	for id, g := range from.keys {
		keys[id] = g
	}
	fromCurrent := from.current
	from.mu.RUnlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys = keys
	if _, ok := keys[k.current]; !ok {
		k.current = fromCurrent
	}
}

// Current returns the id of the sealing key.
func (k *Keyring) Current() uint32 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.current
}

// Seal encrypts plaintext with the current key; aad is authenticated.
// It returns the key id and nonce || ciphertext.
func (k *Keyring) Seal(plaintext, aad []byte) (uint32, []byte, error) {
	k.mu.RLock()
	id, g := k.current, k.keys[k.current]
	k.mu.RUnlock()
	out := make([]byte, gcmNonceLen, gcmNonceLen+len(plaintext)+g.Overhead())
	if _, err := io.ReadFull(k.rand, out); err != nil {
		return 0, nil, err
	}
	return id, g.Seal(out, out, plaintext, aad), nil
}

// Open decrypts what Seal returned. An unknown key id gives
// *UnknownKeyError; a failed authentication (wrong key, tampering, a
// record moved to another key) gives *SealError.
func (k *Keyring) Open(id uint32, sealed, aad []byte) ([]byte, error) {
	k.mu.RLock()
	g, ok := k.keys[id]
	k.mu.RUnlock()
	if !ok {
		return nil, &UnknownKeyError{KeyID: id}
	}
	if len(sealed) < gcmNonceLen+g.Overhead() {
		return nil, &SealError{KeyID: id, Reason: "sealed data too short"}
	}
	pt, err := g.Open(nil, sealed[:gcmNonceLen], sealed[gcmNonceLen:], aad)
	if err != nil {
		return nil, &SealError{KeyID: id, Reason: "authentication failed"}
	}
	return pt, nil
}
