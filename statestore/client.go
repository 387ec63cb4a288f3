package statestore

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ClientConfig says how to reach etcd: an external cluster with TLS
// client certificates in production, the embedded member otherwise.
type ClientConfig struct {
	Endpoints   []string      // e.g. https://etcd-0:2379
	DialTimeout time.Duration // default 5 s
	// TLS client authentication; all empty for plain HTTP.
	CertFile, KeyFile string // client certificate and key (PEM)
	CAFile            string // CA that signed the servers (PEM); empty: system roots
	ServerName        string // overrides the name checked in server certificates
	// Optional etcd RBAC credentials.
	Username, Password string
	// DialOptions are added to the client's gRPC options (interceptors
	// that observe requests, say).
	DialOptions []grpc.DialOption
}

// Validate checks the configuration; errors name the field.
func (c ClientConfig) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("etcd.endpoints: at least one endpoint is required")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("etcd.certFile, etcd.keyFile: give both or neither")
	}
	return nil
}

func (c ClientConfig) tlsConfig() (*tls.Config, error) {
	if c.CertFile == "" && c.CAFile == "" && c.ServerName == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.certFile: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.caFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd.caFile: no certificates in %s", c.CAFile)
		}
		t.RootCAs = pool
	}
	return t, nil
}

// reconnectMaxDelay bounds the wait between reconnection attempts to an
// unreachable etcd endpoint.
const reconnectMaxDelay = time.Second

// How the client notices that a connection to etcd went dead without a
// reset (a link or a switch failing; packets dropped, nothing answered):
// a keepalive ping after keepAliveIdle without traffic, unanswered for
// keepAliveTimeout, closes it (gRPC also sets TCP_USER_TIMEOUT from it).
// Without this, requests wait on TCP's retransmission back-off, which after
// a 30 s outage resends only 6-8 s after the path is back: a fenced node
// registered again that late. keepAliveIdle stays above etcd's default
// --grpc-keepalive-min-time (5 s), which refuses more frequent pings.
const (
	keepAliveIdle    = 10 * time.Second
	keepAliveTimeout = 3 * time.Second
)

// connectAttemptTimeout bounds one connection attempt while an endpoint
// does not answer, so that a new attempt (a new SYN) goes out about every
// two seconds instead of waiting out the dial timeout: once the path is
// back the next attempt connects within about that.
const connectAttemptTimeout = 2 * time.Second

// Dial connects a client. It does not wait for etcd to answer.
func Dial(c ClientConfig) (*clientv3.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	t, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	// gRPC's default reconnect backoff grows to 2 minutes: after an etcd
	// outage a fenced node would wait that long to re-register (seen:
	// 7-11 s after a 2-15 s outage). Reconnect within a second instead;
	// c.DialOptions come after and may override it.
	opts := append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
		MinConnectTimeout: min(c.DialTimeout, connectAttemptTimeout),
	})}, c.DialOptions...)
	return clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          c.DialTimeout,
		DialKeepAliveTime:    keepAliveIdle,
		DialKeepAliveTimeout: keepAliveTimeout,
		TLS:                  t,
		Username:             c.Username,
		Password:             c.Password,
		DialOptions:          opts,
		Logger:               zap.NewNop(),
	})
}
