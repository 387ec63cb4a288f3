package adminserver

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/lb"
)

// Limits of the API.
const (
	defaultPageSize   = 100
	maxPageSize       = 1000
	defaultTermRate   = 200 // Deletes per second
	maxTermRate       = 100000
	defaultTermWait   = 60 * time.Second
	defaultRekeyWait  = 30 * time.Second
	defaultDrainWait  = 30 * time.Second
	progressInterval  = 250 * time.Millisecond
	maxReportedSPIs   = 10000
	eventBuffer       = 4096
	lostCheckInterval = time.Second
)

// ---- cluster ----

func (s *Server) GetClusterStatus(ctx context.Context, _ *adminv1.GetClusterStatusRequest) (*adminv1.ClusterStatus, error) {
	nodes, err := s.nodes(ctx)
	if err != nil {
		return nil, statusOf(err)
	}
	out := &adminv1.ClusterStatus{NodeId: s.node.ID(), Nodes: nodes, StateStore: &adminv1.StateStoreStatus{Mode: s.node.StateStoreMode()}}
	for _, n := range nodes {
		if n.Self && s.node.StateStoreMode() == "none" {
			out.TotalSas += n.Load.GetIkeSas()
		} else {
			out.TotalSas += n.OwnedSas
		}
	}
	if h := s.node.Health().StateStore; h != nil {
		out.StateStore.Reachable = h.Reachable
		out.StateStore.LastOk = ts(h.LastOK)
		out.StateStore.LastError = h.LastError
		out.StateStore.Queued = uint64(h.Queued)
		out.StateStore.RefuseNew = h.RefuseNew
		out.StateStore.Txns = h.Txns
		out.StateStore.Layout = uint32(h.Layout)
	}
	return out, nil
}

func (s *Server) ListNodes(ctx context.Context, _ *adminv1.ListNodesRequest) (*adminv1.ListNodesResponse, error) {
	nodes, err := s.nodes(ctx)
	if err != nil {
		return nil, statusOf(err)
	}
	return &adminv1.ListNodesResponse{Nodes: nodes}, nil
}

// nodes: the registry's live nodes (this one with its health and load);
// this node alone without a state store or while it is not registered.
func (s *Server) nodes(ctx context.Context) ([]*adminv1.Node, error) {
	reg, err := s.node.ClusterNodes(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "state store: %v", err)
	}
	var out []*adminv1.Node
	var self *adminv1.Node
	var owned map[string]int64
	if len(reg) > 0 {
		owned, _ = s.node.OwnedSAs(ctx) // unread: no counts
	}
	for _, r := range reg {
		n := &adminv1.Node{Id: r.Node, Epoch: r.Epoch, Slot: int32(r.Slot), Registered: ts(r.Registered), PeerAddr: r.PeerAddr,
			ClusterKeyIds: r.KeyIDs, LayoutMin: r.LayoutMin, LayoutMax: r.LayoutMax, Layout: r.Layout, OwnedSas: uint64(owned[r.Node])}
		if r.Node == s.node.ID() {
			self = n
		}
		out = append(out, n)
	}
	if self == nil {
		self = &adminv1.Node{Id: s.node.ID()}
		out = append(out, self)
	}
	self.Self = true
	if held, sealing, ok := s.node.ClusterKeys(); ok {
		self.ClusterKeyIds, self.SealingKey = held, sealing
	}
	if r, ok := s.node.KeyRotation(); ok {
		self.KeyRotation = &adminv1.KeyRotation{Running: r.Running, SealingKey: r.SealingKey, Started: ts(r.Started), Finished: ts(r.Finished),
			Scanned: uint64(r.Scanned), Rewritten: uint64(r.Rewritten), Raced: uint64(r.Raced), Unreadable: uint64(r.Unreadable), Error: r.Err}
	}
	h := s.node.Health()
	self.Health = &adminv1.NodeHealth{Fenced: h.Fenced, Draining: s.node.Draining(), PersistFailures: h.PersistFailures,
		Registered: h.StateStore != nil && h.StateStore.Registered, State: "SERVING"}
	switch {
	case h.Fenced:
		self.Health.State = "FENCED"
	case s.node.Draining():
		self.Health.State = "DRAINING"
	case h.StateStore != nil && !h.StateStore.Reachable:
		self.Health.State = "DEGRADED"
	}
	if a, ok := s.node.AnycastStatus(ctx); ok {
		self.Health.Anycast = anycastPB(a)
	}
	st, err := s.node.Stats(ctx)
	if err != nil {
		return nil, err
	}
	c, err := s.node.CountSAs(ctx)
	if err != nil {
		return nil, err
	}
	_, refused := s.node.RefusedWhileDraining()
	self.Load = &adminv1.NodeLoad{IkeSas: uint64(c.IKE), Established: uint64(c.Established), HalfOpen: uint64(st.HalfOpen),
		ChildSas: uint64(c.Children), EstablishedTotal: st.Established, ChildRekeys: st.ChildRekeys, IkeRekeys: st.IKERekeys,
		CookiesSent: st.CookiesSent, Dropped: st.Dropped, RefusedDraining: refused, Shards: uint32(s.node.Shards())}
	if len(st.Failed) > 0 {
		self.Load.Failed = map[string]uint64{}
		for k, v := range st.Failed {
			self.Load.Failed[k.String()] = v
		}
	}
	slices.SortFunc(out, func(a, b *adminv1.Node) int {
		if a.Id < b.Id {
			return -1
		}
		if a.Id > b.Id {
			return 1
		}
		return 0
	})
	return out, nil
}

// ---- SAs ----

func pageToken(spi uint64) string {
	return base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(nil, spi))
}

func parsePageToken(t string) (uint64, error) {
	b, err := base64.RawURLEncoding.DecodeString(t)
	if err != nil || len(b) != 8 {
		return 0, status.Error(codes.InvalidArgument, "page_token: not a token from a previous page")
	}
	return binary.BigEndian.Uint64(b), nil
}

func (s *Server) ListSAs(ctx context.Context, req *adminv1.ListSAsRequest) (*adminv1.ListSAsResponse, error) {
	f, err := parseFilter(req.GetFilter(), s.node.ID())
	if err != nil {
		return nil, filterStatus(err)
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	var after uint64
	hasAfter := req.GetPageToken() != ""
	if hasAfter {
		if after, err = parsePageToken(req.GetPageToken()); err != nil {
			return nil, err
		}
	}
	sas, err := s.node.ListSAs(ctx, f.match)
	if err != nil {
		return nil, statusOf(err)
	}
	out := &adminv1.ListSAsResponse{Total: uint64(len(sas))}
	i := 0
	if hasAfter {
		i, _ = slices.BinarySearchFunc(sas, after+1, func(v concentrator.SAView, spi uint64) int {
			switch {
			case v.SPI < spi:
				return -1
			case v.SPI > spi:
				return 1
			}
			return 0
		})
		if after == ^uint64(0) {
			i = len(sas)
		}
	}
	for ; i < len(sas) && len(out.Sas) < size; i++ {
		out.Sas = append(out.Sas, saPB(&sas[i], s.node.ID()))
	}
	if i < len(sas) {
		out.NextPageToken = pageToken(sas[i-1].SPI)
	}
	return out, nil
}

func filterStatus(err error) error {
	var one *otherNodeError
	if errors.As(err, &one) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

func (s *Server) GetSA(ctx context.Context, req *adminv1.GetSARequest) (*adminv1.SA, error) {
	if req.GetSpi() == 0 {
		return nil, status.Error(codes.InvalidArgument, "spi: required")
	}
	v, err := s.node.GetSA(ctx, req.GetSpi())
	if err != nil {
		return nil, statusOf(err)
	}
	return saPB(&v, s.node.ID()), nil
}

// ---- terminate ----

func (s *Server) TerminateSA(req *adminv1.TerminateSARequest, stream adminv1.Admin_TerminateSAServer) error {
	ctx := stream.Context()
	f, err := parseFilter(req.GetFilter(), s.node.ID())
	if err != nil {
		return filterStatus(err)
	}
	var spis []uint64
	switch {
	case req.GetSpi() != 0 && !f.empty():
		return status.Error(codes.InvalidArgument, "spi and filter: give one, not both")
	case req.GetSpi() != 0:
		v, err := s.node.GetSA(ctx, req.GetSpi()) // also finds it by the peer's SPI
		if err != nil {
			return statusOf(err)
		}
		spis = []uint64{v.SPI}
	case f.empty():
		return status.Error(codes.InvalidArgument, `spi or filter: required (every SA: filter identity "*")`)
	default:
		sas, err := s.node.ListSAs(ctx, f.match)
		if err != nil {
			return statusOf(err)
		}
		for _, v := range sas {
			spis = append(spis, v.SPI)
		}
	}
	p := &adminv1.TerminateProgress{Matched: uint64(len(spis))}
	final := func() error {
		p.Done = true
		if len(spis) <= maxReportedSPIs {
			p.Spis = spis
		}
		return stream.Send(p)
	}
	if req.GetDryRun() || len(spis) == 0 {
		return final()
	}
	rate := int(req.GetRate())
	switch {
	case rate == 0:
		rate = defaultTermRate
	case rate > maxTermRate:
		rate = maxTermRate
	}
	wait := defaultTermWait
	if d := req.GetTimeout(); d != nil && d.AsDuration() > 0 {
		wait = d.AsDuration()
	}
	s.log.Info("terminating SAs", "matched", len(spis), "rate", rate, "by", peerOf(ctx))
	// Start the Deletes at the given rate, reporting as we go.
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	last := time.Now()
	for i, spi := range spis {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		if err := s.node.Terminate(ctx, spi); err != nil && !errors.Is(err, concentrator.ErrNoSA) {
			return statusOf(err)
		}
		p.Started++
		if time.Since(last) >= progressInterval {
			last = time.Now()
			if err := stream.Send(p); err != nil {
				return err
			}
		}
	}
	if err := stream.Send(p); err != nil {
		return err
	}
	if req.GetNoWait() {
		return final()
	}
	// Wait for the peers' answers (or the Deletes' timeouts).
	left := slices.Clone(spis)
	deadline := time.Now().Add(wait)
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for len(left) > 0 {
		still := left[:0]
		for _, spi := range left {
			ok, err := s.node.HasSA(ctx, spi)
			if err != nil {
				return statusOf(err)
			}
			if ok {
				still = append(still, spi)
			}
		}
		gone := uint64(len(left) - len(still))
		left = still
		if gone > 0 {
			p.Gone += gone
			if err := stream.Send(p); err != nil {
				return err
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-poll.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	p.Failed = uint64(len(left))
	return final()
}

// ---- rekey ----

func (s *Server) RekeySA(ctx context.Context, req *adminv1.RekeySARequest) (*adminv1.RekeySAResponse, error) {
	if req.GetSpi() == 0 {
		return nil, status.Error(codes.InvalidArgument, "spi: required")
	}
	if req.GetIke() && req.GetChild() != 0 {
		return nil, status.Error(codes.InvalidArgument, "ike and child: give one, not both")
	}
	wait := defaultRekeyWait
	if d := req.GetTimeout(); d != nil && d.AsDuration() > 0 {
		wait = d.AsDuration()
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	sa, err := s.node.GetSA(ctx, req.GetSpi())
	if err != nil {
		return nil, statusOf(err)
	}
	w := s.node.WatchEvents(eventBuffer)
	defer w.Close()
	same := func(e *concentrator.SAEvent) bool { return e.SPIi == sa.SPIi && e.SPIr == sa.SPIr }
	if req.GetIke() {
		if err := s.node.RekeyIKE(ctx, sa.SPI); err != nil {
			return nil, statusOf(err)
		}
		s.log.Info("IKE SA rekey asked", "spi", fmt.Sprintf("%016x", sa.SPI), "by", peerOf(ctx))
		for {
			select {
			case <-ctx.Done():
				return nil, status.Errorf(codes.DeadlineExceeded, "IKE SA %016x: no rekey within %v", sa.SPI, wait)
			case e := <-w.C:
				switch {
				case e.Kind == ike.EventIKEFailed && same(&e):
					return nil, status.Errorf(codes.Aborted, "IKE SA %016x: rekey failed: %s", sa.SPI, e.Reason)
				case e.Kind == ike.EventIKERekeyed && e.Remote == sa.Remote && e.PeerID == sa.PeerID && !same(&e):
					spi := e.SPIr
					if e.Initiator {
						spi = e.SPIi
					}
					nv, err := s.node.GetSA(ctx, spi)
					if err != nil {
						return nil, statusOf(err)
					}
					return &adminv1.RekeySAResponse{IkeSa: saPB(&nv, s.node.ID())}, nil
				}
			}
		}
	}
	old, err := s.node.RekeyChild(ctx, sa.SPI, req.GetChild())
	if err != nil {
		return nil, statusOf(err)
	}
	s.log.Info("CHILD SA rekey asked", "spi", fmt.Sprintf("%016x", sa.SPI), "spi_in", fmt.Sprintf("%08x", old), "by", peerOf(ctx))
	for {
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "CHILD SA %08x: no rekey within %v", old, wait)
		case e := <-w.C:
			switch {
			case e.Kind == ike.EventChildFailed && same(&e):
				return nil, status.Errorf(codes.Aborted, "CHILD SA %08x: rekey failed: %s", old, e.Reason)
			case e.Kind == ike.EventChildRekeyed && same(&e) && e.Child != nil && e.Child.InSPI != old:
				return &adminv1.RekeySAResponse{OldInSpi: old, Child: childPB(e.Child)}, nil
			}
		}
	}
}

// ---- drain ----

func (s *Server) DrainNode(req *adminv1.DrainNodeRequest, stream adminv1.Admin_DrainNodeServer) error {
	ctx := stream.Context()
	if n := req.GetNode(); n != "" && n != s.node.ID() {
		return status.Errorf(codes.FailedPrecondition, "node: this is node %s; drain %s through its own admin API", s.node.ID(), n)
	}
	progress := func(phase adminv1.DrainPhase, msg string, done bool) error {
		st, err := s.node.Stats(ctx)
		if err != nil {
			return statusOf(err)
		}
		c, err := s.node.CountSAs(ctx)
		if err != nil {
			return statusOf(err)
		}
		refused, _ := s.node.RefusedWhileDraining()
		p := &adminv1.DrainProgress{Phase: phase, Sas: uint64(c.IKE), HalfOpen: uint64(st.HalfOpen), Refused: refused,
			Done: done, Message: msg}
		if h := s.node.Health().StateStore; h != nil {
			p.Queued = uint64(h.Queued)
		}
		return stream.Send(p)
	}
	if req.GetResume() {
		s.node.Resume()
		s.updateHealth()
		s.log.Info("drain ended", "by", peerOf(ctx))
		return progress(adminv1.DrainPhase_DRAIN_PHASE_RESUMED, "accepting new IKE SAs", true)
	}
	if req.GetHandOff() {
		return s.drainHandOff(req, stream)
	}
	drop := req.GetRefuse() == adminv1.RefuseMode_REFUSE_MODE_DROP
	s.node.Drain(drop)
	s.updateHealth()
	s.log.Info("draining", "drop", drop, "by", peerOf(ctx))
	how := "answered with TEMPORARY_FAILURE"
	if drop {
		how = "dropped"
	}
	if err := progress(adminv1.DrainPhase_DRAIN_PHASE_REFUSING_NEW, "new IKE_SA_INITs are "+how, false); err != nil {
		return err
	}
	wait := defaultDrainWait
	if d := req.GetTimeout(); d != nil && d.AsDuration() > 0 {
		wait = d.AsDuration()
	}
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// Handshakes under way finish (or time out) first: their SAs are
	// persisted like the others.
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	for {
		st, err := s.node.Stats(dctx)
		if err != nil {
			break
		}
		if st.HalfOpen == 0 {
			break
		}
		if err := progress(adminv1.DrainPhase_DRAIN_PHASE_REFUSING_NEW, fmt.Sprintf("%d handshakes under way", st.HalfOpen), false); err != nil {
			return err
		}
		select {
		case <-t.C:
		case <-dctx.Done():
		}
		if dctx.Err() != nil {
			break
		}
	}
	if err := progress(adminv1.DrainPhase_DRAIN_PHASE_FLUSHING, "writing SA state to the state store", false); err != nil {
		return err
	}
	if _, err := s.node.FlushState(dctx); err != nil {
		return status.Errorf(codes.Unavailable, "state store: flushing: %v", err)
	}
	msg := "drained: new IKE SAs refused, SA state persisted"
	if s.node.StateStoreMode() == "none" {
		msg = "drained: new IKE SAs refused (no state store to flush)"
	}
	return progress(adminv1.DrainPhase_DRAIN_PHASE_DRAINED, msg, true)
}

// drainHandOff drains with hand-off: the anycast route goes, the SAs move
// to the nodes their traffic reaches, what is left is persisted.
func (s *Server) drainHandOff(req *adminv1.DrainNodeRequest, stream adminv1.Admin_DrainNodeServer) error {
	ctx := stream.Context()
	wait := defaultDrainWait
	if d := req.GetTimeout(); d != nil && d.AsDuration() > 0 {
		wait = d.AsDuration()
	}
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	s.log.Info("draining with hand-off", "by", peerOf(ctx), "timeout", wait)
	var sendErr error
	send := func(p concentrator.HandOffProgress) {
		if sendErr != nil {
			return
		}
		refused, _ := s.node.RefusedWhileDraining()
		pb := &adminv1.DrainProgress{Phase: adminv1.DrainPhase_DRAIN_PHASE_HANDING_OFF, Sas: uint64(p.Left),
			HalfOpen: uint64(p.HalfOpen), HandedOff: uint64(max(0, p.Initial-p.Left)), Refused: refused,
			Message: fmt.Sprintf("route withdrawn: %d of %d SAs moved in %s", max(0, p.Initial-p.Left), p.Initial, p.Elapsed.Round(time.Millisecond))}
		switch p.Phase {
		case "withdrawn":
			pb.Phase = adminv1.DrainPhase_DRAIN_PHASE_REFUSING_NEW
			pb.Message = "new IKE_SA_INITs refused, anycast route withdrawn"
		case "flushing":
			pb.Phase = adminv1.DrainPhase_DRAIN_PHASE_FLUSHING
			pb.Message = "writing the SAs left to the state store"
		case "drained":
			return // the final message below
		}
		if h := s.node.Health().StateStore; h != nil {
			pb.Queued = uint64(h.Queued)
		}
		sendErr = stream.Send(pb)
	}
	s.updateHealth()
	p, err := s.node.DrainHandOff(dctx, send)
	if sendErr != nil {
		return sendErr
	}
	if err != nil && !errors.Is(err, concentrator.ErrDrainTimeout) {
		return status.Errorf(codes.Unavailable, "%v", err)
	}
	moved := max(0, p.Initial-p.Left)
	msg := fmt.Sprintf("drained: %d of %d SAs moved to other nodes in %s, %d left here (persisted)", moved, p.Initial,
		p.Elapsed.Round(time.Millisecond), p.Left)
	return stream.Send(&adminv1.DrainProgress{Phase: adminv1.DrainPhase_DRAIN_PHASE_DRAINED, Sas: uint64(p.Left),
		HandedOff: uint64(moved), Done: true, Message: msg})
}

// anycastPB is the admin API's view of the anycast front.
func anycastPB(a lb.Status) *adminv1.Anycast {
	pb := &adminv1.Anycast{Mode: a.Mode, Healthy: a.Healthy, Failing: a.Detail, BgpSessionsUp: uint32(a.SessionsUp),
		BgpSessions: uint32(a.Sessions), Withdrawals: a.Withdrawals, AnnounceError: a.AnnounceError}
	for _, p := range a.Announced {
		pb.Announced = append(pb.Announced, p.String())
	}
	for _, m := range a.Members {
		pb.Members = append(pb.Members, &adminv1.Member{Name: m.Name, Addr: m.Addr, Alive: m.Alive, Healthy: m.Healthy,
			Draining: m.Draining, Sas: uint64(max(0, m.SAs)), Cpu: m.CPU, PeerAddr: m.PeerAddr, Unicast: m.Unicast})
	}
	return pb
}

// ---- credentials ----

func (s *Server) ReloadCredentials(ctx context.Context, _ *adminv1.ReloadCredentialsRequest) (*adminv1.ReloadCredentialsResponse, error) {
	r, err := s.node.ReloadCredentials(ctx)
	if err != nil {
		s.log.Warn("credential reload failed", "err", err, "by", peerOf(ctx))
		return nil, statusOf(err)
	}
	out := &adminv1.ReloadCredentialsResponse{Psks: uint32(r.PSKs), Cas: uint32(r.CAs), Crls: uint32(r.CRLs),
		Certificate: r.Certificate, Identity: r.Identity, Changed: r.Changed, Ignored: r.Ignored,
		PsksAdded: uint32(r.PSKsAdded), PsksRemoved: uint32(r.PSKsRemoved), PsksChanged: uint32(r.PSKsChanged),
		ClusterKeys: r.ClusterKeys, SealingKey: r.SealingKey}
	if !r.NotAfter.IsZero() {
		out.CertificateNotAfter = timestamppb.New(r.NotAfter)
	}
	return out, nil
}

// ---- events ----

func (s *Server) WatchEvents(req *adminv1.WatchEventsRequest, stream adminv1.Admin_WatchEventsServer) error {
	ctx := stream.Context()
	f, err := parseFilter(req.GetFilter(), s.node.ID())
	if err != nil {
		return filterStatus(err)
	}
	kinds := map[adminv1.EventKind]bool{}
	for _, k := range req.GetKinds() {
		if _, ok := adminv1.EventKind_name[int32(k)]; !ok || k == adminv1.EventKind_EVENT_KIND_UNSPECIFIED {
			return status.Errorf(codes.InvalidArgument, "kinds: unknown event kind %d", k)
		}
		kinds[k] = true
	}
	want := func(k adminv1.EventKind) bool {
		if len(kinds) == 0 {
			return k != adminv1.EventKind_EVENT_KIND_DROPPED
		}
		return kinds[k]
	}
	w := s.node.WatchEvents(eventBuffer)
	defer w.Close()
	t := time.NewTicker(lostCheckInterval)
	defer t.Stop()
	sendLost := func() error {
		if n := w.Lost(); n > 0 {
			return stream.Send(&adminv1.Event{Time: timestamppb.Now(), Kind: adminv1.EventKind_EVENT_KIND_LOST, Node: s.node.ID(), Count: n})
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return status.Error(codes.Unavailable, "admin API stopping")
		case <-t.C:
			if err := sendLost(); err != nil {
				return err
			}
		case e := <-w.C:
			if err := sendLost(); err != nil {
				return err
			}
			k := eventKinds[e.Kind]
			if !want(k) || (f.identity != "" && !glob(f.identity, e.PeerID)) || !f.matchRemote(e.Remote) {
				continue
			}
			if err := stream.Send(eventPB(&e)); err != nil {
				return err
			}
		}
	}
}
