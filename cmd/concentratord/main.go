// Command concentratord runs one ikefleet concentrator node.
//
//	concentratord --config /etc/ikefleet/concentratord.yaml
//	concentratord --config FILE --check         # validate (schema, fields, keys) and exit
//	concentratord --config FILE --print-config  # the effective configuration, defaults applied
//	concentratord --version | --help | --list-metrics
//
// Exit status: 0 on success (and --help), 1 when the node or the
// configuration fails, 2 on a bad command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
	"github.com/ikefleet/ikefleet/internal/buildinfo"
	"github.com/ikefleet/ikefleet/internal/memlimit"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a bad command line (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCode reports err on w and returns the exit status for it.
func exitCode(err error, w io.Writer) int {
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		if !errors.Is(err, errUsageShown) {
			fmt.Fprintln(w, "concentratord:", err)
			fmt.Fprintln(w, "Run concentratord --help for usage.")
		}
		return 2
	default:
		fmt.Fprintln(w, "concentratord:", err)
		return 1
	}
}

// errUsageShown: the flag package has already printed the error and usage.
var errUsageShown = errors.New("bad command line")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("concentratord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration file (YAML); every field: deploy/examples/concentratord.yaml")
	check := fs.Bool("check", false, "validate the configuration against its JSON Schema and every field, load its keys, and exit")
	printConfig := fs.Bool("print-config", false, "print the effective configuration (defaults applied, secrets redacted) as YAML and exit; without --config: the defaults")
	version := fs.Bool("version", false, "print the version and exit")
	listMetrics := fs.Bool("list-metrics", false, "print every ikefleet_* metric family (name, type, labels) and exit")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file until exit (go tool pprof)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this loopback host:port")
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: concentratord --config FILE [--check | --print-config]\n"+
			"       concentratord --version | --list-metrics | --print-config\n\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
	fs.Usage = func() {} // printed below: help to stdout, errors to stderr
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return nil
		}
		usage(stderr) // after the flag package's own line naming the bad flag
		return usageError{errUsageShown}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments: %v", fs.Args())}
	}
	switch {
	case *version:
		fmt.Fprintf(stdout, "concentratord %s (%s)\n", buildinfo.Get(), buildinfo.GoVersion())
		return nil
	case *listMetrics:
		_, err := io.WriteString(stdout, metrics.NamesText())
		return err
	case *printConfig && *configPath == "":
		return printEffective(stdout, concentrator.DefaultConfig())
	case *configPath == "":
		return usageError{errors.New("--config is required (example: deploy/examples/concentratord.yaml)")}
	}
	if *check {
		raw, err := os.ReadFile(*configPath)
		if err != nil {
			return err
		}
		if err := concentrator.CheckSchema(raw); err != nil {
			return err
		}
	}
	cfg, err := concentrator.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *printConfig {
		return printEffective(stdout, cfg)
	}
	// One write(2) per 50 ms of log lines, not one per line, and never on
	// the goroutine that logs (logwriter.go).
	logOut := newBufferedLog(stdout, cfg.Log.Format)
	defer logOut.Close()
	log := newLogger(cfg.Log, logOut)
	warnReadableSecrets(*configPath, cfg, log)
	if *check {
		// No data plane: checking a configuration creates no devices.
		if _, err := concentrator.New(cfg, log, memory.New()); err != nil {
			return err
		}
		logOut.Flush()
		fmt.Fprintln(stdout, "configuration OK")
		return nil
	}
	applyMemoryLimit(cfg.Node.MemoryLimit, log)
	stopProfile, err := startCPUProfile(*cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()
	if err := servePprof(*pprofAddr); err != nil {
		return err
	}
	dp, err := newDataPlane(cfg, log)
	if err != nil {
		return err
	}
	defer dp.Close()
	node, err := concentrator.New(cfg, log, dp)
	if err != nil {
		return err
	}
	node.CountLogDrops(logOut.Dropped)
	return serve(ctx, node, cfg, *configPath, log) // admin API and SIGHUP (admin.go)
}

// applyMemoryLimit sets the Go soft memory limit (node.memory_limit,
// validated with the configuration) and logs what it is and where it came
// from.
func applyMemoryLimit(setting string, log *slog.Logger) {
	s, err := memlimit.Parse(setting)
	if err != nil {
		log.Error("node.memory_limit", "err", err) // not reached: validated
		return
	}
	a, err := memlimit.Apply(s, "/sys/fs/cgroup")
	if err != nil {
		log.Warn("memory limit: the cgroup's limit could not be read, none set", "err", err)
	}
	if a.Limit == math.MaxInt64 {
		log.Info("memory limit", "limit", "none", "source", a.Source)
		return
	}
	log.Info("memory limit", "limit_bytes", a.Limit, "source", a.Source)
}

func printEffective(w io.Writer, cfg concentrator.Config) error {
	b, err := concentrator.MarshalConfig(cfg.Redacted())
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func newLogger(c concentrator.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// warnReadableSecrets warns when the configuration file holds secrets
// inline and every account on the host can read it (the file readable by
// others, and every directory above it searchable by them). A warning,
// not a refusal: the secrets were already exposed for as long as the
// file was, and the node is needed to replace them.
func warnReadableSecrets(path string, cfg concentrator.Config, log *slog.Logger) {
	fields := cfg.InlineSecrets()
	if len(fields) == 0 || !readableByOthers(path) {
		return
	}
	log.Warn("the configuration file holds secrets and every account on this host can read it: chmod o-r it (or its directory), or move them to files of their own (secret_file)",
		"file", path, "secrets", len(fields), "fields", fieldList(fields, maxFieldsNamed))
}

// maxFieldsNamed bounds the fields one warning names: a fleet's
// configuration can hold a PSK per gateway, and a line naming 100,000 of
// them would be megabytes long.
const maxFieldsNamed = 10

// fieldList joins the first max fields, saying how many more there are.
func fieldList(fields []string, max int) string {
	if len(fields) <= max {
		return strings.Join(fields, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(fields[:max], ", "), len(fields)-max)
}

// readableByOthers: path is readable by an account that is neither its
// owner nor in its group: read permission for others on the file and
// search permission for others on every directory above it.
func readableByOthers(path string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	fi, err := os.Stat(abs)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return false
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		di, err := os.Stat(dir)
		if err != nil || di.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == filepath.Dir(dir) {
			return true
		}
	}
}
