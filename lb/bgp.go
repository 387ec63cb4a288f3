package lb

// The embedded BGP speaker (osrg/gobgp): one BGP server in the process,
// dialling the configured neighbours and announcing the anycast prefixes
// with ourselves as next hop. Stopping it closes the sessions with a
// CEASE notification, so neighbours withdraw at once; a killed process is
// withdrawn when the neighbours' hold timers expire.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// BGPSpeaker announces prefixes to BGP neighbours.
type BGPSpeaker struct {
	cfg BGPConfig
	log *slog.Logger

	mu        sync.Mutex
	s         *server.BgpServer
	announced map[netip.Prefix]bool
	v6        bool // announce IPv6 unicast too
}

// NewBGPSpeaker returns a speaker for cfg (validated); v6 enables the IPv6
// unicast family on every session.
func NewBGPSpeaker(cfg BGPConfig, v6 bool, log *slog.Logger) *BGPSpeaker {
	return &BGPSpeaker{cfg: cfg, log: log, announced: map[netip.Prefix]bool{}, v6: v6}
}

// Start starts the BGP server and adds the neighbours.
func (b *BGPSpeaker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn) // gobgp logs every FSM step at info
	s := server.NewBgpServer(server.LoggerOption(b.log, lvl))
	go s.Serve()
	port := int32(b.cfg.ListenPort)
	if port == 0 {
		port = -1 // gobgp: do not listen
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: b.cfg.ASN, RouterId: b.cfg.RouterID, ListenPort: port}}); err != nil {
		s.Stop()
		return fmt.Errorf("bgp: start: %w", err)
	}
	hold := uint64(b.cfg.HoldTime / time.Second)
	for _, n := range b.cfg.Neighbors {
		p := &api.Peer{
			Conf: &api.PeerConf{NeighborAddress: n.Address, PeerAsn: n.ASN, AuthPassword: n.Password,
				Description: "ikefleet anycast"},
			Timers: &api.Timers{Config: &api.TimersConfig{HoldTime: hold, KeepaliveInterval: max(1, hold/3),
				ConnectRetry: uint64(b.cfg.ConnectRetry / time.Second), IdleHoldTimeAfterReset: 1}},
			Transport: &api.Transport{LocalAddress: n.LocalAddress, RemotePort: uint32(n.Port), PassiveMode: n.Passive},
			AfiSafis:  []*api.AfiSafi{afiSafi(api.Family_AFI_IP)},
		}
		if b.v6 {
			p.AfiSafis = append(p.AfiSafis, afiSafi(api.Family_AFI_IP6))
		}
		if n.Multihop > 0 {
			p.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(n.Multihop)}
		}
		if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: p}); err != nil {
			s.Stop()
			return fmt.Errorf("bgp: neighbour %s: %w", n.Address, err)
		}
	}
	b.s = s
	return nil
}

func afiSafi(afi api.Family_Afi) *api.AfiSafi {
	return &api.AfiSafi{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true}}
}

// path is the BGP path announcing p with our next hop.
func (b *BGPSpeaker) path(p netip.Prefix) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(p)
	if err != nil {
		return nil, err
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if p.Addr().Is4() {
		nh := netip.IPv4Unspecified() // gobgp puts the session's local address
		if b.cfg.NextHop != "" {
			nh = netip.MustParseAddr(b.cfg.NextHop)
		}
		a, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
		return &apiutil.Path{Family: bgp.RF_IPv4_UC, Nlri: nlri, Attrs: attrs}, nil
	}
	nh := netip.IPv6Unspecified()
	if b.cfg.NextHop6 != "" {
		nh = netip.MustParseAddr(b.cfg.NextHop6)
	}
	a, err := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: nlri}}, nh)
	if err != nil {
		return nil, err
	}
	attrs = append(attrs, a)
	return &apiutil.Path{Family: bgp.RF_IPv6_UC, Nlri: nlri, Attrs: attrs}, nil
}

// Set announces exactly ps.
func (b *BGPSpeaker) Set(ctx context.Context, ps []netip.Prefix) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return ErrClosed
	}
	add, del := diff(b.announced, ps)
	for _, p := range del {
		path, err := b.path(p)
		if err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", p, err)
		}
		if err := b.s.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{path}}); err != nil {
			return fmt.Errorf("bgp: withdraw %s: %w", p, err)
		}
		delete(b.announced, p)
	}
	for _, p := range add {
		path, err := b.path(p)
		if err != nil {
			return fmt.Errorf("bgp: announce %s: %w", p, err)
		}
		if _, err := b.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path}}); err != nil {
			return fmt.Errorf("bgp: announce %s: %w", p, err)
		}
		b.announced[p] = true
	}
	return nil
}

// Sessions counts the established sessions.
func (b *BGPSpeaker) Sessions(ctx context.Context) (up, total int) {
	b.mu.Lock()
	s := b.s
	b.mu.Unlock()
	if s == nil {
		return 0, len(b.cfg.Neighbors)
	}
	_ = s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		total++
		if p.GetState().GetSessionState() == api.PeerState_SESSION_STATE_ESTABLISHED {
			up++
		}
	})
	return up, total
}

// Close withdraws everything and stops the server (CEASE to every
// neighbour).
func (b *BGPSpeaker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == nil {
		return nil
	}
	if len(b.announced) > 0 {
		_ = b.s.DeletePath(apiutil.DeletePathRequest{DeleteAll: true})
		clear(b.announced)
	}
	b.s.Stop()
	b.s = nil
	return nil
}
