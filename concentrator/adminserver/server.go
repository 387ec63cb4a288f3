// Package adminserver serves the admin gRPC API (api/admin/v1) of one
// concentrator node, with the gRPC health service and server reflection,
// over mutual TLS or, on loopback only, plaintext.
package adminserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/internal/localpeer"
)

// Server is a running admin API.
type Server struct {
	adminv1.UnimplementedAdminServer
	node   *concentrator.Node
	log    *slog.Logger
	gs     *grpc.Server
	health *health.Server
	lis    net.Listener

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Start listens on cfg.Listen and serves the admin API for node until
// Stop. cfg must be valid (Config.Validate): plaintext only on loopback.
func Start(cfg concentrator.AdminConfig, node *concentrator.Node, log *slog.Logger) (*Server, error) {
	creds := insecure.NewCredentials()
	if cfg.TLS() {
		tc, err := serverTLS(cfg)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	lis, err := listen(cfg)
	if err != nil {
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	if !cfg.TLS() && cfg.SocketPath() == "" {
		// Plaintext, on loopback: every account on the host reaches the
		// port, and the API can drain the node, end SAs and add
		// credentials. Only this node's account and root get in.
		lis = localpeer.OwnerOnly(lis, concentrator.LocalRefusalLogger(log, "admin"))
	}
	s := &Server{node: node, log: log, lis: lis, health: health.NewServer(), stop: make(chan struct{}),
		gs: grpc.NewServer(grpc.Creds(creds))}
	adminv1.RegisterAdminServer(s.gs, s)
	healthpb.RegisterHealthServer(s.gs, s.health)
	reflection.Register(s.gs)
	s.updateHealth()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("admin API stopped", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.updateHealth()
			}
		}
	}()
	log.Info("admin API listening", "addr", lis.Addr().String(), "tls", cfg.TLS())
	return s, nil
}

// SocketMode is the admin API's unix socket's mode: the node's account
// and its group may connect (connecting needs write permission).
const SocketMode = 0o660

// listen binds admin.listen: a TCP address, or a unix socket made
// SocketMode. A socket file left by a node that did not stop cleanly is
// replaced; any other file at the path is an error.
func listen(cfg concentrator.AdminConfig) (net.Listener, error) {
	path := cfg.SocketPath()
	if path == "" {
		return net.Listen("tcp", cfg.Listen)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process serves it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	return bindSocket(path)
}

// bindSocket binds a unix socket at path that has SocketMode from the
// moment it appears there: bound in a private directory beside it (0700,
// so the umask's mode is open to no one), set to SocketMode, then renamed
// into place. A socket bound at path and chmod-ed after would be open to
// every account for that moment under a umask of 0. Close removes the
// socket, if the file at path is still this one.
func bindSocket(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".a")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSocketPath {
		return nil, fmt.Errorf("%s: the directory's path is too long to bind a socket in (%d bytes beside it, at most %d)", path, len(tmp), maxSocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // it is removed from path (Close)
	fail := func(err error) (net.Listener, error) {
		l.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, SocketMode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &socketListener{UnixListener: l, path: path, file: fi}, nil
}

// maxSocketPath: the longest path a unix socket binds to on Linux
// (sun_path, 108 bytes with its NUL).
const maxSocketPath = 107

// socketListener is a unix listener bound elsewhere and renamed to path.
type socketListener struct {
	*net.UnixListener
	path string
	file os.FileInfo // the socket file as renamed
}

func (l *socketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	if fi, e := os.Lstat(l.path); e == nil && os.SameFile(fi, l.file) {
		os.Remove(l.path)
	}
	return err
}

// Addr is the address the API listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Stop ends the server: streams (event watches, drains) are cancelled.
func (s *Server) Stop() {
	s.once.Do(func() {
		close(s.stop)
		s.health.Shutdown()
		done := make(chan struct{})
		go func() { s.gs.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			s.gs.Stop() // watchers do not end by themselves
		}
		s.wg.Wait()
	})
}

// ServiceName is the admin service's name in the gRPC health service.
const ServiceName = "ikefleet.admin.v1.Admin"

// updateHealth: the admin service serves while the process runs; the
// overall status ("") is SERVING while the node accepts new SAs (not
// draining, not fenced).
func (s *Server) updateHealth() {
	s.health.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	st := healthpb.HealthCheckResponse_SERVING
	if s.node.Draining() || s.node.Health().Fenced {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
}

func serverTLS(cfg concentrator.AdminConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("admin.cert_file: %w", err)
	}
	pem, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("admin.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("admin.ca_file: no certificate in %s", cfg.CAFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}, nil
}

// statusOf maps the node's errors to gRPC status codes.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *concentrator.FieldError
	var one *otherNodeError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, concentrator.ErrNoSA), errors.Is(err, concentrator.ErrNoChild):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, concentrator.ErrBusy):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, concentrator.ErrNotEstablished):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, concentrator.ErrAmbiguousChild):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &one):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.As(err, &fe):
		return status.Error(codes.FailedPrecondition, "configuration: "+err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// peerOf names the client for logs: its certificate's subject with mutual
// TLS, else its address.
func peerOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		return ti.State.PeerCertificates[0].Subject.String()
	}
	return p.Addr.String()
}
