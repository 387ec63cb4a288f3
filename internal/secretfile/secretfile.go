// Package secretfile checks that a file of secrets (a private key, a PSK,
// a cluster or gossip key) is closed to its group and to others: whoever
// reads it can impersonate the node or open what it seals.
package secretfile

import (
	"fmt"
	"os"
)

// ExposedError is a file of secrets the group or others may read.
type ExposedError struct {
	Path string
	Mode os.FileMode
}

// Reason is the error without the path.
func (e *ExposedError) Reason() string {
	return fmt.Sprintf("is readable by group or others (mode %04o): chmod 600 it", e.Mode)
}

func (e *ExposedError) Error() string { return e.Path + " " + e.Reason() }

// Check returns nil for a file only its owner may read or write, an
// *ExposedError for one its group or others may, and Stat's error for a
// file it cannot look at.
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return &ExposedError{Path: path, Mode: perm}
	}
	return nil
}
