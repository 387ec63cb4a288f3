package main

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/userspace"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// newDataPlane builds the data plane that dataplane.mode asks for. auto
// takes kernel ESP (xfrm) when the kernel can install an ESP state and
// user-space ESP otherwise; the choice and its reason are logged, and the
// node's "listening" line names the data plane in use.
func newDataPlane(full concentrator.Config, log *slog.Logger) (dataplane.DataPlane, error) {
	cfg := full.DataPlane
	mode := cfg.Mode
	if mode == "auto" {
		if err := xfrmAvailable(); err != nil {
			mode = "userspace"
			log.Info("dataplane selected", "mode", "auto", "dataplane", mode, "reason", "kernel ESP unavailable: "+err.Error())
		} else {
			mode = "xfrm"
			log.Info("dataplane selected", "mode", "auto", "dataplane", mode, "reason", "kernel can install ESP states")
		}
	}
	switch mode {
	case "memory":
		log.Warn("dataplane.mode memory: CHILD SAs are negotiated and recorded but NO PACKETS ARE CARRIED; "+
			"use auto, xfrm or userspace outside tests, demos and load tests", "dataplane", "memory")
		return memory.New(), nil
	case "userspace":
		u := cfg.Userspace
		uc := userspace.Config{TUNName: u.TUN, MTU: u.MTU, Workers: u.Workers,
			QueueLen: u.QueueLen, ReplayWindow: u.ReplayWindow, SocketRecvBuffer: u.SocketRecvBuffer,
			SocketSendBuffer: u.SocketSendBuffer, Log: log.With("dataplane", "userspace")}
		// One route for the virtual IP pool instead of one per gateway.
		if full.Children.Pool != "" {
			uc.Routes = []netip.Prefix{netip.MustParsePrefix(full.Children.Pool)}
			for _, s := range full.Children.LocalTS {
				uc.RoutesLocalTS = append(uc.RoutesLocalTS, selectorOf(netip.MustParsePrefix(s)))
			}
		}
		dp, err := userspace.New(uc)
		if err != nil {
			return nil, fmt.Errorf("dataplane.mode userspace: %w", err)
		}
		return dp, nil
	case "xfrm":
		return newXFRM(full, log)
	}
	return nil, fmt.Errorf("dataplane.mode %q is not available", cfg.Mode)
}

// selectorOf is the selector covering prefix p, any protocol and port.
func selectorOf(p netip.Prefix) dataplane.Selector {
	ts := ike.SelectorFromPrefix(p)
	return dataplane.Selector{Start: ts.Start, End: ts.End, IPProto: ts.IPProto, StartPort: ts.StartPort, EndPort: ts.EndPort}
}
