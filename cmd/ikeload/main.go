// Command ikeload simulates a fleet of IKEv2 gateways against a
// concentrator (or any IKEv2 responder) and reports how it went: setup
// rate and latency (HDR histogram), failures by reason, rekeys, the
// responder's CPU and memory, as text, JSON and a self-contained HTML
// report.
//
//	ikeload --server 127.0.0.1 --id 'gw{n}@iot.example' --psk 'psk-{n}' --vip \
//	        --remote-ts 10.30.0.0/24 --scenario ramp --count 1000 --rate 200
//	ikeload gen-pki --dir pki --responder-id conc.example
//	ikeload compare --html cmp.html a.json b.json
//	ikeload merge --json-out all.json part1.json part2.json
//	ikeload flood --server 127.0.0.1 --init-rate 20000 --bad-rate 20000 --duration 60s
//
// Exit status: 0 when every attempt succeeded, 1 when some failed or the
// run could not start, 2 for a usage error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a command-line mistake: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// run dispatches to a subcommand and maps its error to an exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var err error
	switch {
	case len(args) > 0 && args[0] == "gen-pki":
		err = genPKI(args[1:], stdout)
	case len(args) > 0 && args[0] == "compare":
		err = compare(args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "merge":
		err = merge(args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "flood":
		err = flood(ctx, args[1:], stdout)
	case len(args) > 0 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version"):
		fmt.Fprintln(stdout, "ikeload", version())
	case len(args) > 0 && args[0] == "help":
		err = load(ctx, []string{"--help"}, stdout, stderr)
	default:
		err = load(ctx, args, stdout, stderr)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "ikeload: %v\nRun 'ikeload --help' for usage.\n", err)
		return 2
	default:
		fmt.Fprintln(stderr, "ikeload:", err)
		return 1
	}
}

// errHelp: the help was printed; exit 0.
var errHelp = errors.New("help")

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if len(s.Value) > 12 {
				s.Value = s.Value[:12]
			}
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += "+dirty"
			}
		}
	}
	return v + " " + bi.GoVersion
}
