package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

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

	// The node outlives ctx (SIGTERM) by a drain when it is behind the
	// anycast address: drainOnStop.
	stop := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	select {
	case <-node.Ready():
	case err := <-done:
		return err
	case <-stop.Done():
		cancel()
		return <-done
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
		case <-stop.Done():
			drainOnStop(node, cfg, log)
			cancel()
			return <-done
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

// drainOnStop drains a node behind the anycast address (anycast.mode or
// anycast.members) before it stops: the route is withdrawn at once, the
// other nodes claim the SAs as their traffic reaches them, and what is
// left is written to the state store, all within anycast.drain.
// grace_period. A second SIGTERM or SIGINT cuts the drain short.
func drainOnStop(node *concentrator.Node, cfg concentrator.Config, log *slog.Logger) {
	if cfg.Anycast.Mode == "" && cfg.Anycast.Members.Listen == "" {
		return
	}
	grace := cfg.Anycast.Drain.GracePeriod
	// The flush after the wait gets its own share of the grace period.
	reserve := min(5*time.Second, grace/4)
	ctx, cancel := context.WithTimeout(context.Background(), grace-reserve)
	defer cancel()
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(again)
	go func() {
		select {
		case <-again:
			log.Warn("drain: cut short by a second signal")
			cancel()
		case <-ctx.Done():
		}
	}()
	log.Info("drain: stopping, withdrawing the anycast route", "grace_period", grace)
	p, err := node.DrainHandOff(ctx, nil)
	if err != nil {
		log.Warn("drain: stopping with SAs left (persisted)", "left", p.Left, "err", err)
	}
}
