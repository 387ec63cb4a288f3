// Command concentratord runs one ikefleet concentrator node.
//
//	concentratord --config /etc/ikefleet/concentratord.yaml
//	concentratord --config FILE --check    # validate and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "concentratord:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("concentratord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration file (YAML); see deploy/examples/concentratord.yaml")
	check := fs.Bool("check", false, "validate the configuration (and load its keys) and exit")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file until exit (go tool pprof)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this loopback host:port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *configPath == "" {
		return errors.New("--config is required (example: deploy/examples/concentratord.yaml)")
	}
	cfg, err := concentrator.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	// One write(2) per 50 ms of log lines, not one per line.
	logOut := newBufferedLog(stdout)
	defer logOut.Close()
	log := newLogger(cfg.Log, logOut)
	if *check {
		// No data plane: checking a configuration creates no devices.
		if _, err := concentrator.New(cfg, log, memory.New()); err != nil {
			return err
		}
		logOut.Flush()
		fmt.Fprintln(stdout, "configuration OK")
		return nil
	}
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
	return node.Run(ctx)
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
