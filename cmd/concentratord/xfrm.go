package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/xfrm"
)

// xfrmAvailable is the hook of dataplane.mode auto: nil when the kernel
// can install an ESP-in-UDP state (tried in a throwaway network
// namespace), else why not.
func xfrmAvailable() error { return xfrm.Available() }

// newXFRM builds the kernel data plane (mode xfrm). The node reconciles
// the kernel with the SAs it restores from the state store when it starts
// (concentrator.Reconciler): those are kept, every other ikefleet SA left
// by an earlier run is a stray and goes with its policies and routes;
// foreign states and policies are never touched.
func newXFRM(cfg concentrator.Config, log *slog.Logger) (dataplane.DataPlane, error) {
	x := cfg.DataPlane.XFRM
	opts := xfrm.DefaultOptions()
	opts.SocketRecvBuffer, opts.SocketSendBuffer = x.SocketRecvBuffer, x.SocketSendBuffer
	opts.MSSClamp, opts.MSS = x.MSSClamp, uint16(x.MSS)
	opts.ReplayWindow = uint32(x.ReplayWindow)
	opts.HThresh4 = [2]int{x.HThresh4[0], x.HThresh4[1]}
	// With a state store the node is one of a cluster (or may become
	// one): ESP for SAs it does not hold reaches its claim path, and a
	// node that lost its lease can stop its outbound ESP.
	opts.ClusterESP = cfg.StateStore.Mode != "none"
	opts.NATTPort, opts.UnknownSPIQueue = uint16(cfg.IKE.NATTPort), uint16(x.UnknownSPIQueue)
	opts.Log = log.With("dataplane", "xfrm")
	opts.Pools = xfrmPools(cfg)
	dp, err := xfrm.New(opts)
	if err != nil {
		return nil, fmt.Errorf("dataplane.mode xfrm: %w", err)
	}
	log.Info("xfrm data plane ready", "dataplane", "xfrm", "mss_clamp", x.MSSClamp, "hthresh4", fmt.Sprint(x.HThresh4), "cluster_esp", opts.ClusterESP, "unknown_spi_queue", x.UnknownSPIQueue)
	return dp, nil
}

// xfrmPools are the virtual-IP pools the kernel data plane routes as a
// whole (one route each, not one per peer): children.pool, children.pool6
// and the policies' pools, each once. Validate has checked their syntax.
func xfrmPools(cfg concentrator.Config) []netip.Prefix {
	var out []netip.Prefix
	add := func(s string) {
		p, err := netip.ParsePrefix(s)
		if err != nil || slices.Contains(out, p.Masked()) {
			return
		}
		out = append(out, p.Masked())
	}
	add(cfg.Children.Pool)
	add(cfg.Children.Pool6)
	for _, pc := range cfg.Policies {
		add(pc.Pool)
	}
	return out
}
