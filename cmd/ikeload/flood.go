package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ikefleet/ikefleet/loadtest"
)

const floodSynopsis = `
Usage: ikeload flood --duration D [--server ADDR] [--init-rate N] [--bad-rate N] [--known FILE] [--spoof PREFIX]

Floods a responder you run, for a bounded time, to test its defences:
IKE_SA_INIT requests from ever new source ports (as a spoofing attacker's
arrive: the answers are never read; on a loopback server half of them from
random 127.x.y.z addresses) and malformed datagrams (truncated headers,
length fields that disagree with the datagram, INFORMATIONAL requests with
a garbage SK payload on the IKE and the NAT-T port). --known names a file
of established SAs' IKE SPIs, one "SPIi SPIr" pair of hex numbers a line
(spi_i and spi_r of concentratorctl sas list -o json), so that those
garbage SK payloads name real SAs. --spoof forges the sources instead:
every datagram leaves a raw socket (root or CAP_NET_RAW) from a random
address of the IPv4 prefix and a random port; the responder's answers go
to those addresses, so route the prefix away from it (for example into a
veth with no one behind it, in a network namespace of your own) and never
use addresses of hosts that exist. Prints the rates reached; --json-out
writes the report.`

func flood(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ikeload flood", flag.ContinueOnError)
	server := fs.String("server", "127.0.0.1", "responder address")
	port := fs.Uint("server-port", 500, "responder IKE port")
	natt := fs.Uint("server-natt-port", 4500, "responder NAT-T port")
	initRate := fs.Int("init-rate", 10000, "IKE_SA_INIT requests per second")
	badRate := fs.Int("bad-rate", 10000, "malformed datagrams per second")
	dur := fs.Duration("duration", 0, "how long to flood (required)")
	senders := fs.Int("senders", 2, "sending goroutines")
	perSocket := fs.Int("per-socket", 64, "datagrams from one source port before a new one")
	pace := fs.Duration("pace", time.Millisecond, "send what the rates ask for this often (longer: in bursts)")
	known := fs.String("known", "", `file of "SPIi SPIr" hex pairs of established SAs`)
	jsonOut := fs.String("json-out", "", "write the report (JSON) here")
	spoof := fs.String("spoof", "", "forge sources from this IPv4 prefix (raw socket; route it away from the responder)")
	if _, err := parseFlags(fs, args, 0, stdout, floodSynopsis); err != nil {
		return err
	}
	srv, err := netip.ParseAddr(*server)
	switch {
	case err != nil:
		return usagef("--server %q: %v", *server, err)
	case *port == 0 || *port > 65535 || *natt == 0 || *natt > 65535:
		return usagef("--server-port and --server-natt-port must be 1-65535")
	case *dur <= 0:
		return usagef("--duration is required and must be positive")
	case *initRate < 0 || *badRate < 0 || *initRate+*badRate == 0:
		return usagef("--init-rate and --bad-rate must be non-negative and not both 0")
	case *senders < 1 || *perSocket < 1:
		return usagef("--senders and --per-socket must be at least 1")
	case *pace <= 0:
		return usagef("--pace must be positive")
	}
	var spoofFrom netip.Prefix
	if *spoof != "" {
		if spoofFrom, err = netip.ParsePrefix(*spoof); err != nil || !spoofFrom.Addr().Is4() {
			return usagef("--spoof %q: not an IPv4 prefix", *spoof)
		}
	}
	o := loadtest.FloodOptions{
		Server: netip.AddrPortFrom(srv, uint16(*port)), ServerNATT: uint16(*natt),
		InitRate: *initRate, BadRate: *badRate, Duration: *dur, Senders: *senders, PerSocket: *perSocket, Pace: *pace,
		Spoof: spoofFrom,
	}
	if *known != "" {
		if o.Known, err = readKnownSPIs(*known); err != nil {
			return err
		}
	}
	rep, err := loadtest.Flood(ctx, o)
	if err != nil {
		return err
	}
	sources := "source address:ports"
	if rep.Spoofed {
		sources = "forged sources in " + spoofFrom.String()
	}
	fmt.Fprintf(stdout, "flood: %.0f IKE_SA_INIT/s + %.0f malformed/s for %.1f s (asked %d + %d/s), %d %s, %d send errors\n",
		rep.InitRate(), rep.BadRate(), rep.Seconds, *initRate, *badRate, rep.Sources, sources, rep.SendErrors)
	if *jsonOut != "" {
		return writeJSON(*jsonOut, rep)
	}
	return nil
}

// readKnownSPIs reads "SPIi SPIr" pairs of hex numbers, one a line
// (blank lines and # comments skipped).
func readKnownSPIs(path string) ([][2]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][2]uint64
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want two hex SPIs, got %q", path, n+1, line)
		}
		var k [2]uint64
		for i := range k {
			if k[i], err = strconv.ParseUint(strings.TrimPrefix(f[i], "0x"), 16, 64); err != nil || k[i] == 0 {
				return nil, fmt.Errorf("%s:%d: bad SPI %q", path, n+1, f[i])
			}
		}
		out = append(out, k)
	}
	return out, nil
}
