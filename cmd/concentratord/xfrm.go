package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/xfrm"
)

// xfrmAvailable is the hook of dataplane.mode auto: nil when the kernel
// can install an ESP-in-UDP state (tried in a throwaway network
// namespace), else why not.
func xfrmAvailable() error { return xfrm.Available() }

// newXFRM builds the kernel data plane (mode xfrm) and reconciles the
// kernel with what this node knows. Until SAs are persisted (the state
// store), a starting node knows none: every ikefleet SA left by an earlier
// run is a stray and is removed with its policies and routes; foreign
// states and policies are never touched.
func newXFRM(cfg concentrator.Config, log *slog.Logger) (dataplane.DataPlane, error) {
	x := cfg.DataPlane.XFRM
	opts := xfrm.DefaultOptions()
	opts.SocketRecvBuffer, opts.SocketSendBuffer = x.SocketRecvBuffer, x.SocketSendBuffer
	opts.MSSClamp, opts.MSS = x.MSSClamp, uint16(x.MSS)
	opts.ReplayWindow = uint32(x.ReplayWindow)
	opts.HThresh4 = [2]int{x.HThresh4[0], x.HThresh4[1]}
	opts.Log = log.With("dataplane", "xfrm")
	if cfg.Children.Pool != "" {
		if p, err := netip.ParsePrefix(cfg.Children.Pool); err == nil {
			opts.Pools = []netip.Prefix{p.Masked()}
		}
	}
	dp, err := xfrm.New(opts)
	if err != nil {
		return nil, fmt.Errorf("dataplane.mode xfrm: %w", err)
	}
	adopted, removed, err := dp.Reconcile(context.Background(), nil)
	if err != nil {
		dp.Close()
		return nil, fmt.Errorf("dataplane.mode xfrm: %w", err)
	}
	log.Info("xfrm data plane ready", "dataplane", "xfrm", "adopted", adopted, "removed_strays", removed,
		"mss_clamp", x.MSSClamp, "hthresh4", fmt.Sprint(x.HThresh4))
	return dp, nil
}
