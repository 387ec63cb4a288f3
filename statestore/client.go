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
		MinConnectTimeout: c.DialTimeout,
	})}, c.DialOptions...)
	return clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		TLS:         t,
		Username:    c.Username,
		Password:    c.Password,
		DialOptions: opts,
		Logger:      zap.NewNop(),
	})
}
