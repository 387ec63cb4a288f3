package concentrator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	peerv1 "github.com/ikefleet/ikefleet/api/peer/v1"
	"github.com/ikefleet/ikefleet/internal/localpeer/localpeertest"
)

// writeCA makes a CA and a node certificate it signs (server and client
// use) in dir: ca.pem, node.pem, node.key.
func writeCA(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cluster CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	for name, b := range map[string][]byte{
		"ca.pem":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"node.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"node.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// The peer API's mutual TLS: a node of the same CA gets an answer; a
// client with another CA's certificate, or none, is refused.
func TestPeerMutualTLS(t *testing.T) {
	good, other := t.TempDir(), t.TempDir()
	writeCA(t, good)
	writeCA(t, other)
	cfg := func(dir string) ClusterConfig {
		return ClusterConfig{PeerListen: "127.0.0.1:0", CAFile: filepath.Join(dir, "ca.pem"),
			CertFile: filepath.Join(dir, "node.pem"), KeyFile: filepath.Join(dir, "node.key")}
	}
	stls, ctls, err := peerTLS(cfg(good))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(stls)))
	// A node that is not running answers every hand-off with RETRY.
	peerv1.RegisterPeerServer(srv, &peerServer{n: &Node{ready: make(chan struct{})}})
	go srv.Serve(lis)
	defer srv.Stop()
	call := func(c *tls.Config) (*peerv1.HandOffResponse, error) {
		return handOffTo(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(c)))
	}
	resp, err := call(ctls)
	if err != nil || resp.GetStatus() != peerv1.HandOffResponse_STATUS_RETRY {
		t.Fatalf("same CA: %v, %v", resp, err)
	}
	_, otherClient, err := peerTLS(cfg(other))
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := call(otherClient); err == nil {
		t.Fatalf("another CA's node was answered: %v", resp)
	}
	noCert := ctls.Clone()
	noCert.Certificates = nil
	if resp, err := call(noCert); err == nil {
		t.Fatalf("a client without a certificate was answered: %v", resp)
	}
	if _, _, err := peerTLS(ClusterConfig{CAFile: "/nonexistent", CertFile: filepath.Join(good, "node.pem"), KeyFile: filepath.Join(good, "node.key")}); err == nil || !strings.Contains(err.Error(), "cluster.ca_file") {
		t.Fatalf("missing CA file: %v", err)
	}
}

// The plaintext peer API (nodes on one host, loopback) answers this
// node's account and root only: a hand-off request from a socket another
// account opened is disconnected unanswered.
func TestPlaintextPeerOnlyForTheNodesAccount(t *testing.T) {
	localpeertest.NeedRoot(t)
	n := &Node{cfg: Config{Cluster: ClusterConfig{PeerListen: "127.0.0.1:0"}}, ready: make(chan struct{}),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p, err := n.listenPeer()
	if err != nil {
		t.Fatal(err)
	}
	go p.serve()
	defer p.close()
	call := func(uid int) (*peerv1.HandOffResponse, error) {
		return handOffTo(p.lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return localpeertest.DialAs(ctx, uid, addr)
			}))
	}
	if resp, err := call(localpeertest.Nobody); status.Code(err) != codes.Unavailable {
		t.Fatalf("another account's hand-off: %v, %v; want Unavailable (disconnected)", resp, err)
	}
	// A node that is not running answers every hand-off with RETRY.
	if resp, err := call(os.Geteuid()); err != nil || resp.GetStatus() != peerv1.HandOffResponse_STATUS_RETRY {
		t.Fatalf("this account's hand-off: %v, %v", resp, err)
	}
}

// handOffTo sends one hand-off request (for SPI 1, to node b) to the peer
// API at addr.
func handOffTo(addr string, opts ...grpc.DialOption) (*peerv1.HandOffResponse, error) {
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return peerv1.NewPeerClient(conn).HandOff(ctx, &peerv1.HandOffRequest{IkeSpi: 1, Node: "b", Epoch: 1})
}
