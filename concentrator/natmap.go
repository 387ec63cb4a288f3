package concentrator

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// NAT mapping changes the data plane reports (dataplane.MappingReporter:
// user-space ESP, or the kernel's XFRM_MSG_MAPPING events) go to the shard
// owning the CHILD SA, whose engine confirms the new address with a
// liveness check before moving the SA (ike.Engine.PeerMoved).

const mappingQueueLen = 1024

// watchMappings subscribes to the data plane's mapping reports and hands
// them to the shards until ctx ends.
func (n *Node) watchMappings(ctx context.Context, r dataplane.MappingReporter) {
	ch := make(chan dataplane.Mapping, mappingQueueLen)
	r.OnMapping(func(m dataplane.Mapping) {
		select {
		case ch <- m:
		default: // full: the data plane reports again while ESP keeps coming
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-ch:
			s := n.shardOfESP(m.InSPI)
			if s == nil {
				continue
			}
			n.do(ctx, s, func() {
				var rd ike.Ready
				if s.eng.PeerMoved(n.clock.Mono(), m.InSPI, m.Remote, &rd) {
					n.plog.Log(ctx, slog.LevelInfo, "nat_mapping", "NAT mapping changed: checking the new address",
						"spi_in", fmt.Sprintf("%08x", m.InSPI), "peer", m.Remote.String())
				}
				n.perform(ctx, s, &rd)
			})
		}
	}
}
