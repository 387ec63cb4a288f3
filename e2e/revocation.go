//go:build linux

package e2e

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// RevocationServer serves the CRLs of test CAs and answers OCSP requests
// for them (RFC 6960 over HTTP POST, signed by the CA itself) from inside a
// test namespace: GET /<name>.crl and POST /ocsp/<name>.
type RevocationServer struct {
	Base     string // http://addr
	CRLs     atomic.Int64
	OCSPs    atomic.Int64
	cas      map[string]*PKI
	ln       net.Listener
	srv      *http.Server
	Validity time.Duration // of CRLs and OCSP answers (default 1h)
}

// StartRevocationServer listens on addr (host:port) in namespace ns.
func StartRevocationServer(t testing.TB, tp *Topology, ns, addr string, cas map[string]*PKI) *RevocationServer {
	t.Helper()
	rs := &RevocationServer{Base: "http://" + addr, cas: cas, Validity: time.Hour}
	err := InNetns(ns, func() (err error) {
		rs.ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("revocation server in %s: %v", ns, err)
	}
	rs.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { rs.serve(t, w, r) }),
		ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := rs.srv.Serve(rs.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("revocation server: %v", err)
		}
	}()
	t.Cleanup(func() { rs.srv.Close() })
	return rs
}

// CRLURL and OCSPURL are the URLs of CA name.
func (rs *RevocationServer) CRLURL(name string) string  { return rs.Base + "/" + name + ".crl" }
func (rs *RevocationServer) OCSPURL(name string) string { return rs.Base + "/ocsp/" + name }

func (rs *RevocationServer) serve(t testing.TB, w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, ".crl"):
		ca := rs.cas[strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".crl")]
		if ca == nil {
			http.NotFound(w, r)
			return
		}
		rs.CRLs.Add(1)
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(ca.CRL(t, rs.Validity))
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/ocsp/"):
		ca := rs.cas[strings.TrimPrefix(r.URL.Path, "/ocsp/")]
		if ca == nil {
			http.NotFound(w, r)
			return
		}
		rs.OCSPs.Add(1)
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req, err := ocsp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		now := time.Now()
		tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(rs.Validity)}
		if at, ok := ca.RevokedAt(req.SerialNumber); ok {
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, at, ocsp.KeyCompromise
		}
		der, err := ocsp.CreateResponse(ca.CA, ca.CA, tmpl, ca.Signer())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(der)
	default:
		http.NotFound(w, r)
	}
}
