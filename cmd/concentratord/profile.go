package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // --pprof
	"os"
	"runtime/pprof"
)

// servePprof serves net/http/pprof on addr, which must be a loopback
// address (profiles show keys in memory to whoever can read them).
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--pprof: %q: want a loopback host:port", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	go http.Serve(l, nil)
	return nil
}

// startCPUProfile writes a CPU profile (go tool pprof) to path until the
// returned function is called.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
