package main

import (
	"bufio"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func numCPU() int { return runtime.NumCPU() }

// selfCPU is the CPU time this process (the driver and its gateways) has
// used, user and system.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// udpRcvbufErrors is the host's count of UDP datagrams dropped because a
// socket's receive buffer was full (/proc/net/snmp).
func udpRcvbufErrors() int64 {
	f, err := os.Open("/proc/net/snmp")
	if err != nil {
		return 0
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Udp: ") {
			continue
		}
		fields := strings.Fields(line)[1:]
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(fields) {
				v, _ := strconv.ParseInt(fields[i], 10, 64)
				return v
			}
		}
	}
	return 0
}
