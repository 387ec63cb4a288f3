package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/adminserver"
)

// serve runs the node with its admin API (admin.listen) until ctx ends,
// and reloads credentials from configPath on SIGHUP and on the admin API's
// ReloadCredentials.
func serve(ctx context.Context, node *concentrator.Node, cfg concentrator.Config, configPath string, log *slog.Logger) error {
	node.SetConfigLoader(func() (concentrator.Config, error) { return concentrator.LoadConfig(configPath) })
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	select {
	case <-node.Ready():
	case err := <-done:
		return err
	}
	if cfg.Admin.Enabled() {
		srv, err := adminserver.Start(cfg.Admin, node, log.With("component", "admin"))
		if err != nil {
			cancel()
			<-done
			return err
		}
		defer srv.Stop()
	}
	for {
		select {
		case err := <-done:
			return err
		case <-hup:
			r, err := node.ReloadCredentials(ctx)
			if err != nil {
				log.Error("SIGHUP: credentials not reloaded, the old ones stay", "err", err)
				continue
			}
			log.Info("SIGHUP: credentials reloaded", "changed", strings.Join(r.Changed, ","))
		}
	}
}
