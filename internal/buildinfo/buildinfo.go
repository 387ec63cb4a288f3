// Package buildinfo says which build of ikefleet is running.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version is set at link time (go build -ldflags "-X
// github.com/ikefleet/ikefleet/internal/buildinfo.Version=v1.2.3"). Empty:
// the module version or VCS revision recorded by the Go toolchain.
var Version string

// Get returns the version: Version if set, else the main module's version
// ("(devel)" for a plain checkout build) with the VCS revision and a
// "+dirty" mark when the toolchain recorded them.
func Get() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" && v == "(devel)" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " " + rev + dirty
	}
	return v
}

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }
