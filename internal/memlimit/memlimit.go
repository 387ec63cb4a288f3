// Package memlimit sets the Go runtime's soft memory limit
// (runtime/debug.SetMemoryLimit) from the node's configuration or from
// the memory limit of the cgroup it runs in.
//
// Without a soft limit the collector lets the heap grow to twice what is
// live before it collects (GOGC=100), so a node holding many SAs reaches
// its container's limit, and is killed, while half of that is garbage.
// With one the collector works harder as the heap nears it instead.
package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Share is the part of a cgroup's memory limit that auto gives the Go
// heap: the rest is for what the runtime does not count (thread stacks
// outside Go, the embedded store's mapped database file, page tables).
const Share = 0.9

// Setting is a parsed node.memory_limit.
type Setting struct {
	Off   bool  // "off": no soft limit (GOMEMLIMIT still applies)
	Bytes int64 // a size; 0 with !Off: auto
}

var units = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}}

// Parse reads "auto" (or ""), "off", or a size: bytes, or a number with
// KiB, MiB, GiB or TiB.
func Parse(s string) (Setting, error) {
	switch s {
	case "", "auto":
		return Setting{}, nil
	case "off":
		return Setting{Off: true}, nil
	}
	num, mult := s, int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return Setting{}, fmt.Errorf("must be auto, off or a size such as 1536MiB, 2GiB or a number of bytes, not %q", s)
	}
	if n*mult < 64<<20 {
		return Setting{}, fmt.Errorf("%q is below 64MiB: the node could not even start under it", s)
	}
	return Setting{Bytes: n * mult}, nil
}

// Applied says what Apply did.
type Applied struct {
	Limit  int64  // the soft limit in force; math.MaxInt64: none
	Source string // node.memory_limit, GOMEMLIMIT, the cgroup file it came from, or "none"
}

// Apply sets the soft memory limit: the configured size; with auto, Share
// of the cgroup's limit unless GOMEMLIMIT is in the environment (then the
// runtime applied it already). root is where the cgroup file systems are
// mounted (/sys/fs/cgroup).
func Apply(s Setting, root string) (Applied, error) {
	switch {
	case s.Bytes > 0:
		debug.SetMemoryLimit(s.Bytes)
		return Applied{s.Bytes, "node.memory_limit"}, nil
	case os.Getenv("GOMEMLIMIT") != "":
		return Applied{debug.SetMemoryLimit(-1), "GOMEMLIMIT"}, nil
	case s.Off:
		return Applied{debug.SetMemoryLimit(-1), "none"}, nil
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return Applied{debug.SetMemoryLimit(-1), "none"}, fmt.Errorf("memlimit: %w", err)
	}
	lim, file, err := CgroupLimit(root, self)
	if err != nil || lim == 0 {
		return Applied{debug.SetMemoryLimit(-1), "none"}, err
	}
	v := int64(float64(lim) * Share)
	debug.SetMemoryLimit(v)
	return Applied{v, file}, nil
}

// unlimited: cgroup v1 reports "no limit" as a large page-aligned number.
const unlimited = 1 << 62

// CgroupLimit returns the lowest memory limit on the way from the process's
// cgroup (self: the contents of /proc/self/cgroup) up to the hierarchy's
// root, and the file it was read from; 0 when there is none. cgroup v2
// (memory.max) is preferred to v1 (memory/…/memory.limit_in_bytes). A
// container sees its own cgroup as the root of the mounted hierarchy while
// /proc/self/cgroup may name the host's path: a path that does not exist
// under root is read from the mount's root instead.
func CgroupLimit(root string, self []byte) (int64, string, error) {
	var v1, v2 string
	var hasV2 bool
	sc := bufio.NewScanner(bytes.NewReader(self))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2, hasV2 = parts[2], true
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1 = parts[2]
			}
		}
	}
	type tree struct{ dir, rel, file string }
	var trees []tree
	if hasV2 {
		// On a hybrid host the v2 hierarchy is mounted at unified/.
		for _, d := range []string{root, filepath.Join(root, "unified")} {
			if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
				trees = append(trees, tree{d, v2, "memory.max"})
				break
			}
		}
	}
	if v1 != "" {
		trees = append(trees, tree{filepath.Join(root, "memory"), v1, "memory.limit_in_bytes"})
	}
	for _, t := range trees {
		dir := filepath.Join(t.dir, filepath.FromSlash(t.rel))
		if _, err := os.Stat(dir); err != nil {
			dir = t.dir
		}
		var best int64
		var from string
		found := false
		for {
			f := filepath.Join(dir, t.file)
			b, err := os.ReadFile(f)
			if err == nil {
				found = true
				if v, ok, perr := parseLimit(b); perr != nil {
					return 0, "", fmt.Errorf("memlimit: %s: %w", f, perr)
				} else if ok && (best == 0 || v < best) {
					best, from = v, f
				}
			} else if !errors.Is(err, os.ErrNotExist) {
				return 0, "", fmt.Errorf("memlimit: %w", err)
			}
			if dir == t.dir || len(dir) <= len(t.dir) {
				break
			}
			dir = filepath.Dir(dir)
		}
		if found {
			return best, from, nil
		}
	}
	return 0, "", nil
}

// parseLimit reads a memory.max or memory.limit_in_bytes value; ok is
// false for no limit.
func parseLimit(b []byte) (v int64, ok bool, err error) {
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("not a memory limit: %q", s)
	}
	if n >= unlimited {
		return 0, false, nil
	}
	return int64(n), true, nil
}
