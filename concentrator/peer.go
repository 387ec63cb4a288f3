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
	"log/slog"
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
	"github.com/ikefleet/ikefleet/internal/localpeer"
	"github.com/ikefleet/ikefleet/internal/ratelog"
	"github.com/ikefleet/ikefleet/statestore"
)

// Implementation limits of the peer API.
const (
	peerCallTimeout = 3 * time.Second // one HandOff, HandOffMany or Forward call
	maxHandOffMany  = 1024            // SAs one HandOffMany call may ask for
)

// reasonFenced: a HandOff answer of a node that lost its registration;
// the caller waits for its lease to end and takes the SAs over.
const reasonFenced = "fenced"

// reasonStopping: a HandOff answer of a node starting or stopping.
const reasonStopping = "not running"

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
	if !c.TLS() {
		// Plaintext, on loopback (nodes on one host): a hand-off request
		// moves an SA, so only this node's account (the other nodes run
		// as it) and root get in, not every account on the host.
		lis = localpeer.OwnerOnly(lis, LocalRefusalLogger(n.log, "peer"))
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

// LocalRefusalLogger logs the connections localpeer.OwnerOnly closed on
// the plaintext loopback API named api (admin, peer): at most one line a
// second, since a local account could open them in a loop; the next line
// counts those left out.
func LocalRefusalLogger(log *slog.Logger, api string) func(localpeer.Refusal) {
	rl := ratelog.New(log, 1, 1)
	return func(r localpeer.Refusal) {
		args := []any{"api", api, "remote", r.Remote.String()}
		if r.Err != nil {
			args = append(args, "err", r.Err.Error())
		} else {
			args = append(args, "uid", r.UID)
		}
		rl.Log(context.Background(), slog.LevelWarn, "local connection refused",
			"connection refused: not from this node's account or root (plaintext on loopback)", args...)
	}
}

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

// HandOff gives an SA this node holds to the requester (HandOffMany with
// one SA).
func (ps *peerServer) HandOff(ctx context.Context, req *peerv1.HandOffRequest) (*peerv1.HandOffResponse, error) {
	res := ps.handOff(ctx, []uint64{req.GetIkeSpi()}, statestore.Owner{Node: req.GetNode(), Epoch: req.GetEpoch()})
	return res[0], nil
}

// HandOffMany gives SAs this node holds to the requester: they leave the
// engine first (nothing more is sent for them, nothing that arrives is
// processed), their final states go to the state store with the ownership
// moves in one transaction per batch, and their CHILD SAs leave the data
// plane. SAs whose transaction fails for a reason other than a new owner
// are restored here.
func (ps *peerServer) HandOffMany(ctx context.Context, req *peerv1.HandOffManyRequest) (*peerv1.HandOffManyResponse, error) {
	spis := req.GetIkeSpis()
	if len(spis) > maxHandOffMany {
		spis = spis[:maxHandOffMany] // the rest: no answer, the requester asks again
	}
	return &peerv1.HandOffManyResponse{Results: ps.handOff(ctx, spis, statestore.Owner{Node: req.GetNode(), Epoch: req.GetEpoch()})}, nil
}

func (ps *peerServer) handOff(ctx context.Context, spis []uint64, to statestore.Owner) []*peerv1.HandOffResponse {
	n := ps.n
	res := make([]*peerv1.HandOffResponse, len(spis))
	all := func(r *peerv1.HandOffResponse) []*peerv1.HandOffResponse {
		for i := range res {
			if res[i] == nil {
				res[i] = r
			}
		}
		return res
	}
	if n.persist == nil || !n.listening() || n.runCtx.Err() != nil {
		return all(retry(reasonStopping))
	}
	if !n.persist.store.CanSend() {
		return all(retry(reasonFenced))
	}
	// A stopping node answers at once rather than at the caller's deadline.
	ctx, cancel := context.WithCancel(ctx)
	defer context.AfterFunc(n.runCtx, cancel)()
	defer cancel()
	st, ok := n.persist.store.(batchStore)
	if !ok {
		return all(retry("state store moves no batches"))
	}
	me, _ := st.Registration()
	if to.Node == "" || to == me {
		return all(retry("bad requester " + to.String()))
	}
	// Freeze: each shard gives up the SAs it holds, in one call.
	byShard := map[*shard][]int{}
	for i, spi := range spis {
		s := n.shardOfSPI(spi)
		byShard[s] = append(byShard[s], i)
	}
	states := make([]*ike.SAState, len(spis))
	var unheld []int
	for s, idx := range byShard {
		var nh []int
		if err := n.do(ctx, s, func() {
			var rd ike.Ready
			for _, i := range idx {
				sa := s.eng.SA(spis[i])
				if sa == nil {
					nh = append(nh, i)
					continue
				}
				if !sa.Established() {
					res[i] = retry("not established")
					continue
				}
				snap, err := sa.Snapshot()
				if err != nil {
					res[i] = retry(err.Error())
					continue
				}
				states[i] = &snap
				s.eng.Forget(spis[i], &rd)
			}
			n.perform(ctx, s, &rd)
		}); err != nil {
			for _, i := range idx {
				res[i] = retry(err.Error())
			}
		}
		unheld = append(unheld, nh...)
	}
	// SAs not held here: say who owns them.
	if len(unheld) > 0 {
		q := make([]uint64, len(unheld))
		for j, i := range unheld {
			q[j] = spis[i]
		}
		owners, err := st.Owners(ctx, q)
		for j, i := range unheld {
			switch {
			case err != nil:
				res[i] = retry(err.Error())
			case !owners[j].Found:
				res[i] = notOwner(statestore.Owner{}, "no such SA")
			case owners[j].Owner == me:
				res[i] = retry("owned here but not held (being restored)")
			default:
				res[i] = notOwner(owners[j].Owner, "not held here")
			}
		}
	}
	var finals []*statestore.SARecord
	var held []int
	for i, st := range states {
		if st != nil {
			finals = append(finals, recordOf(st))
			held = append(held, i)
		}
	}
	if len(finals) == 0 {
		return all(retry("nothing held"))
	}
	// From here on the frozen SAs are this node's to finish: written as
	// handed off, or served here again. The caller giving up (its deadline
	// under load) must cut neither short, or the SAs would be held by no
	// one while etcd still names this node: the write and the restores run
	// on the node's context (the write bounded by a lease, and by twice a
	// call's time at least).
	ctx, wcancel := context.WithTimeout(n.runCtx, max(n.cfg.StateStore.LeaseTTL, 2*peerCallTimeout))
	defer wcancel()
	write := st.HandOffMany
	if n.handOffHook != nil {
		write = func(ctx context.Context, f []*statestore.SARecord, to statestore.Owner) ([]statestore.Moved, error) {
			return n.handOffHook(ctx, st, f, to)
		}
	}
	moved, err := write(ctx, finals, to)
	for j, m := range moved {
		i := held[j]
		var oe *statestore.OwnerError
		switch {
		case m.Err == nil:
			n.cluster.handedOff.Add(1)
			res[i] = &peerv1.HandOffResponse{Status: peerv1.HandOffResponse_STATUS_OK}
		case errors.As(m.Err, &oe):
			res[i] = notOwner(oe.Owner, "owner changed")
		default:
			res[i] = retry(m.Err.Error())
		}
	}
	if len(moved) < len(held) {
		if errors.Is(err, statestore.ErrFenced) {
			// Our registration is gone: the SAs are the requester's to
			// take over once our lease has expired; we no longer send.
			return all(retry(reasonFenced))
		}
		why := "hand-off not written"
		if err != nil {
			why = err.Error()
		}
		rest := held[len(moved):]
		if errors.Is(err, statestore.ErrUnavailable) {
			// The transaction's answer is lost, not its outcome: it may
			// have committed, and the requester may already serve the
			// SAs. Serving them here again would send with their keys
			// from two nodes (sequence numbers, and with AES-GCM nonces,
			// twice), so only those etcd still says are ours come back.
			rest = ps.settle(st, spis, rest, me, to, res)
		}
		for _, i := range rest {
			n.restoreHeld(n.runCtx, n.shardOfSPI(spis[i]), *states[i])
			res[i] = retry(why)
		}
	}
	n.log.Debug("SAs handed off", "to", to.String(), "asked", len(spis), "moved", len(moved))
	return all(retry("not handed off"))
}

// settle finds out where the SAs spis[i] (i in idx) went after a hand-off
// whose outcome is unknown. It reads their owners until etcd answers, for
// at most a lease's time and only while this node may send (a node that
// cannot reach etcd fences itself; its SAs are then taken over). Those
// now owned by to count as handed off (res[i] OK); it returns those still
// ours, to be served here again. The others are not served here: if etcd
// could not be read, their final state is in etcd either way and whoever
// ends up owning them restores it.
func (ps *peerServer) settle(st batchStore, spis []uint64, idx []int, me, to statestore.Owner, res []*peerv1.HandOffResponse) []int {
	n := ps.n
	q := make([]uint64, len(idx))
	for j, i := range idx {
		q[j] = spis[i]
	}
	ctx, cancel := context.WithTimeout(n.runCtx, max(n.cfg.StateStore.LeaseTTL, 2*time.Second))
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		owners, err := st.Owners(ctx, q)
		if err == nil {
			var ours []int
			for j, i := range idx {
				switch o := owners[j]; {
				case o.Found && o.Owner == me:
					ours = append(ours, i)
				case o.Found && o.Owner == to:
					n.cluster.handedOff.Add(1)
					res[i] = &peerv1.HandOffResponse{Status: peerv1.HandOffResponse_STATUS_OK}
				default:
					res[i] = notOwner(o.Owner, "owner changed")
				}
			}
			n.log.Info("hand-off outcome settled", "to", to.String(), "moved", len(idx)-len(ours), "kept", len(ours))
			return ours
		}
		if !st.CanSend() || ctx.Err() != nil {
			n.log.Warn("hand-off outcome unknown: SAs left to whoever owns them", "to", to.String(), "sas", len(idx), "err", err)
			for _, i := range idx {
				res[i] = retry(reasonFenced)
			}
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// restoreHeld puts an SA whose hand-off failed back into its shard.
func (n *Node) restoreHeld(ctx context.Context, s *shard, st ike.SAState) {
	err := n.do(ctx, s, func() {
		var rd ike.Ready
		if _, err := s.eng.Restore(n.clock.Mono(), st, &rd); err != nil {
			n.log.Warn("SA not restored after a failed hand-off", "spi", fmt.Sprintf("%016x", st.SPIr), "err", err)
			return
		}
		n.perform(ctx, s, &rd)
	})
	if err != nil {
		// Stopping: the SA's last committed state is in etcd, and whoever
		// owns it next restores it from there.
		n.log.Warn("SA not restored after a failed hand-off", "spi", fmt.Sprintf("%016x", st.SPIr), "err", err)
	}
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
		s.handle(n.clock.Mono(), ike.Packet{Local: local, Remote: remote, Data: b}, &rd)
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
