// Command ikeload simulates IKEv2 gateways against a concentrator (or any
// IKEv2 responder) and reports how establishment went.
//
//	ikeload --server 192.168.100.2 --id 'gw{n}@iot.example' --psk SECRET \
//	        --local-ts 10.20.0.0/24 --remote-ts 10.30.0.0/24 --count 100 --rate 50 --json
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ikeload:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ikeload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "127.0.0.1", "responder address")
	serverPort := fs.Uint("server-port", 500, "responder IKE port")
	serverNATT := fs.Uint("server-natt-port", 4500, "responder NAT-T port")
	source := fs.String("source", "", "our address (default: 127.0.0.1 for a loopback server, else 0.0.0.0)")
	sourcePort := fs.Uint("source-port", 0, "our IKE port (0: ephemeral)")
	nattPort := fs.Uint("natt-port", 0, "our NAT-T port (0: ephemeral)")
	id := fs.String("id", "gw{n}@iot.example", "our identity; {n} is the gateway number")
	remoteID := fs.String("remote-id", "", "expected responder identity")
	psk := fs.String("psk", "", "pre-shared key; {n} is the gateway number (per-device keys)")
	certFile := fs.String("cert", "", "our certificate (PEM), with --key")
	keyFile := fs.String("key", "", "our private key (PEM)")
	caFile := fs.String("ca", "", "CA certificate(s) to verify the responder (PEM)")
	proposal := fs.String("proposal", "aes256gcm16-prfsha256-x25519", "IKE proposals, comma-separated")
	esp := fs.String("esp", "aes256gcm16", "ESP proposals, comma-separated")
	localTS := fs.String("local-ts", "", "our traffic selectors, comma-separated (default 0.0.0.0/0 with --vip)")
	remoteTS := fs.String("remote-ts", "0.0.0.0/0", "responder traffic selectors, comma-separated")
	vip := fs.Bool("vip", false, "request a virtual IP")
	count := fs.Int("count", 1, "gateways")
	rate := fs.Float64("rate", 0, "new gateways per second (0: all at once)")
	hold := fs.Duration("hold", 0, "keep the SAs this long before deleting them")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on establishment after this long")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	verbose := fs.Bool("v", false, "log every event")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o := loadtest.Options{IDTemplate: *id, RemoteID: *remoteID, Count: *count, Rate: *rate, Hold: *hold,
		Timeout: *timeout, RequestVIP: *vip, ServerNATT: uint16(*serverNATT), SourcePort: uint16(*sourcePort), NATTPort: uint16(*nattPort)}
	srv, err := netip.ParseAddr(*server)
	if err != nil {
		return fmt.Errorf("--server: %v", err)
	}
	o.Server = netip.AddrPortFrom(srv, uint16(*serverPort))
	switch {
	case *source != "":
		if o.Source, err = netip.ParseAddr(*source); err != nil {
			return fmt.Errorf("--source: %v", err)
		}
	case srv.IsLoopback():
		o.Source = netip.MustParseAddr("127.0.0.1")
	default:
		o.Source = netip.IPv4Unspecified()
	}
	if *psk != "" {
		o.PSK = []byte(*psk)
	}
	if *certFile != "" {
		data, err := os.ReadFile(*certFile)
		if err != nil {
			return fmt.Errorf("--cert: %v", err)
		}
		certs, err := sig.ParseCertificates(data)
		if err != nil || len(certs) == 0 {
			return fmt.Errorf("--cert: no certificate: %v", err)
		}
		for _, c := range certs {
			o.Chain = append(o.Chain, c.Raw)
		}
		kd, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("--key: %v", err)
		}
		if o.Signer, err = sig.ParsePrivateKey(kd); err != nil {
			return fmt.Errorf("--key: %v", err)
		}
	}
	if o.PSK == nil && o.Signer == nil {
		return errors.New("need --psk or --cert/--key")
	}
	if *caFile != "" {
		data, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("--ca: %v", err)
		}
		certs, err := sig.ParseCertificates(data)
		if err != nil {
			return fmt.Errorf("--ca: %v", err)
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		o.Verifier = &sig.Verifier{Roots: pool}
	}
	for _, p := range strings.Split(*proposal, ",") {
		spec, err := ike.ParseProposal(p, false, false)
		if err != nil {
			return fmt.Errorf("--proposal: %v", err)
		}
		o.IKEProposals = append(o.IKEProposals, spec)
	}
	for _, p := range strings.Split(*esp, ",") {
		spec, err := ike.ParseProposal(p, true, false)
		if err != nil {
			return fmt.Errorf("--esp: %v", err)
		}
		o.ESPProposals = append(o.ESPProposals, spec)
	}
	lts := *localTS
	if lts == "" {
		if !*vip {
			return errors.New("--local-ts is required without --vip")
		}
		lts = "0.0.0.0/0"
	}
	if o.LocalTS, err = parseTS(lts); err != nil {
		return fmt.Errorf("--local-ts: %v", err)
	}
	if o.RemoteTS, err = parseTS(*remoteTS); err != nil {
		return fmt.Errorf("--remote-ts: %v", err)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	rep, runErr := loadtest.Run(ctx, o)
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "established %d/%d (failed %d) in %.2fs: %.1f SA/s; latency ms p50 %.1f p90 %.1f p99 %.1f max %.1f; child SAs %d; retransmits %d\n",
			rep.Established, *count, rep.Failed, rep.DurationS, rep.RatePerS,
			rep.LatencyMS.P50, rep.LatencyMS.P90, rep.LatencyMS.P99, rep.LatencyMS.Max, rep.Children, rep.Retransmits)
		for reason, n := range rep.Failures {
			fmt.Fprintf(stdout, "  failed: %s x%d\n", reason, n)
		}
	}
	return runErr
}

func parseTS(s string) ([]ike.TrafficSelector, error) {
	var out []ike.TrafficSelector
	for _, p := range strings.Split(s, ",") {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		out = append(out, ike.SelectorFromPrefix(pfx))
	}
	return out, nil
}
