package concentrator

// The node-to-node API (api/peer/v1): this node's server, which hands SAs
// it owns to other nodes, and the clients it uses to ask for theirs
// (claim.go).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	peerv1 "github.com/ikefleet/ikefleet/api/peer/v1"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// Implementation limits of the peer API.
const (
	peerCallTimeout = 5 * time.Second // one HandOff or Forward call
)

// peerTLS loads the cluster's mutual TLS: the server requires a client
// certificate signed by ca_file, and the client accepts a server whose
// certificate ca_file signed. Nodes are dialled by address, so host names
// are not checked: every certificate the cluster CA signed is a node's.
func peerTLS(c ClusterConfig) (server, client *tls.Config, err error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.cert_file: %w", err)
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("cluster.ca_file: %s holds no PEM certificate", c.CAFile)
	}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true, // the chain is verified below, without a host name
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("peer presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	return server, client, nil
}

// peerAPI is the node's end of the peer API: its listener and server,
// and client connections to the other nodes by address.
type peerAPI struct {
	lis       net.Listener
	srv       *grpc.Server
	advertise string
	creds     credentials.TransportCredentials // for dialling

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// listenPeer binds cluster.peer_listen (before registration: the address
// goes into the node's registry entry). nil when it is not configured.
func (n *Node) listenPeer() (*peerAPI, error) {
	c := n.cfg.Cluster
	if c.PeerListen == "" {
		return nil, nil
	}
	p := &peerAPI{conns: map[string]*grpc.ClientConn{}, creds: insecure.NewCredentials()}
	var opts []grpc.ServerOption
	if c.TLS() {
		stls, ctls, err := peerTLS(c)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(stls)))
		p.creds = credentials.NewTLS(ctls)
	}
	lis, err := net.Listen("tcp", c.PeerListen)
	if err != nil {
		return nil, fmt.Errorf("cluster.peer_listen: %w", err)
	}
	p.lis = lis
	p.advertise = c.PeerAdvertise
	if p.advertise == "" {
		p.advertise = lis.Addr().String()
	}
	p.srv = grpc.NewServer(opts...)
	peerv1.RegisterPeerServer(p.srv, &peerServer{n: n})
	return p, nil
}

func (p *peerAPI) serve() { p.srv.Serve(p.lis) }

func (p *peerAPI) close() {
	p.srv.Stop()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
	p.mu.Unlock()
}

// client returns a client of the node at addr (connections are kept).
func (p *peerAPI) client(addr string) (peerv1.PeerClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[addr]; c != nil {
		return peerv1.NewPeerClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return peerv1.NewPeerClient(c), nil
}

// PeerAddr is the address other nodes dial for this node's peer API ("" if
// it serves none).
func (n *Node) PeerAddr() string {
	if n.peer == nil {
		return ""
	}
	return n.peer.advertise
}

type peerServer struct {
	peerv1.UnimplementedPeerServer
	n *Node
}

func retry(reason string) *peerv1.HandOffResponse {
	return &peerv1.HandOffResponse{Status: peerv1.HandOffResponse_STATUS_RETRY, Reason: reason}
}

func notOwner(o statestore.Owner, reason string) *peerv1.HandOffResponse {
	return &peerv1.HandOffResponse{Status: peerv1.HandOffResponse_STATUS_NOT_OWNER,
		OwnerNode: o.Node, OwnerEpoch: o.Epoch, Reason: reason}
}

// HandOff gives an SA this node holds to the requester: the SA leaves the
// engine first (nothing more is sent for it, nothing that arrives is
// processed), its final state goes to the state store with the ownership
// move in one transaction, and its CHILD SAs leave the data plane. Should
// the transaction fail for a reason other than a new owner, the SA is
// restored here.
func (ps *peerServer) HandOff(ctx context.Context, req *peerv1.HandOffRequest) (*peerv1.HandOffResponse, error) {
	n := ps.n
	if n.persist == nil || !n.listening() {
		return retry("not running"), nil
	}
	spi := req.GetIkeSpi()
	to := statestore.Owner{Node: req.GetNode(), Epoch: req.GetEpoch()}
	me, _ := n.persist.store.Registration()
	if to.Node == "" || to == me {
		return retry("bad requester " + to.String()), nil
	}
	s := n.shardOfSPI(spi)
	var st ike.SAState
	var held bool
	var why string
	if err := n.do(ctx, s, func() {
		sa := s.eng.SA(spi)
		if sa == nil {
			return
		}
		if !sa.Established() {
			why = "not established"
			return
		}
		var err error
		if st, err = sa.Snapshot(); err != nil {
			why = err.Error()
			return
		}
		held = true
		var rd ike.Ready
		s.eng.Forget(spi, &rd)
		n.perform(ctx, s, &rd)
	}); err != nil {
		return retry(err.Error()), nil
	}
	if !held {
		if why != "" {
			return retry(why), nil
		}
		o, _, err := n.persist.store.Owner(ctx, spi)
		switch {
		case errors.Is(err, statestore.ErrNotFound):
			return notOwner(statestore.Owner{}, "no such SA"), nil
		case err != nil:
			return retry(err.Error()), nil
		case o == me:
			return retry("owned here but not held (being restored)"), nil
		}
		return notOwner(o, "not held here"), nil
	}
	err := n.persist.store.HandOff(ctx, spi, recordOf(&st), to)
	var oe *statestore.OwnerError
	switch {
	case err == nil:
		n.cluster.handedOff.Add(1)
		n.log.Debug("SA handed off", "spi", fmt.Sprintf("%016x", spi), "to", to.String())
		return &peerv1.HandOffResponse{Status: peerv1.HandOffResponse_STATUS_OK}, nil
	case errors.As(err, &oe):
		return notOwner(oe.Owner, "owner changed"), nil
	case errors.Is(err, statestore.ErrFenced):
		// Our registration is gone: the SA is the requester's to take
		// over once our lease has expired; we no longer send for it.
		return retry("fenced"), nil
	}
	// Nothing moved: keep serving the SA here.
	n.restoreHeld(ctx, s, st)
	return retry(err.Error()), nil
}

// restoreHeld puts an SA whose hand-off failed back into its shard.
func (n *Node) restoreHeld(ctx context.Context, s *shard, st ike.SAState) {
	n.do(ctx, s, func() {
		var rd ike.Ready
		if _, err := s.eng.Restore(n.clock.Now(), st, &rd); err != nil {
			n.log.Warn("SA not restored after a failed hand-off", "spi", fmt.Sprintf("%016x", st.SPIr), "err", err)
			return
		}
		n.perform(ctx, s, &rd)
	})
}

// Forward takes an IKE datagram for a half-open SA this node holds.
func (ps *peerServer) Forward(ctx context.Context, req *peerv1.ForwardRequest) (*peerv1.ForwardResponse, error) {
	n := ps.n
	if !n.listening() {
		return &peerv1.ForwardResponse{}, nil
	}
	local, err1 := netip.ParseAddrPort(req.GetLocal())
	remote, err2 := netip.ParseAddrPort(req.GetRemote())
	b := req.GetDatagram()
	if err1 != nil || err2 != nil || len(b) < 28 {
		return &peerv1.ForwardResponse{}, nil
	}
	h, err := ike.DecodeHeader(b)
	if err != nil {
		return &peerv1.ForwardResponse{}, nil
	}
	spi := localSPIOf(h)
	s := n.shardOfSPI(spi)
	accepted := false
	n.do(ctx, s, func() {
		if s.eng.SA(spi) == nil {
			return
		}
		accepted = true
		var rd ike.Ready
		s.eng.Handle(n.clock.Now(), ike.Packet{Local: local, Remote: remote, Data: b}, &rd)
		n.perform(ctx, s, &rd)
	})
	if accepted {
		n.cluster.forwardedIn.Add(1)
	}
	return &peerv1.ForwardResponse{Accepted: accepted}, nil
}

// localSPIOf is our SPI in a message's header: the responder's if the
// sender is the original initiator, else the initiator's.
func localSPIOf(h ike.Header) uint64 {
	if h.Flags&ike.FlagInitiator != 0 {
		return h.SPIr
	}
	return h.SPIi
}
