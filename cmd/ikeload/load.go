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
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/loadtest"
	"golang.org/x/sys/unix"
)

const loadSynopsis = `
Usage: ikeload [flags]
       ikeload gen-pki --dir DIR [--responder-id ID]
       ikeload compare [--html FILE] [--json FILE] [--baseline LABEL] REPORT.json...
       ikeload merge --json-out FILE [--label LABEL] [--html FILE] REPORT.json...
       ikeload --version

Simulates --count IKEv2 gateways (initiators, each with its own UDP source
ports) against --server, runs a scenario, and reports setup rate and latency,
failures by reason, rekeys and the responder's CPU and memory (--target-pid).
Results: a summary on stdout (--json: JSON), JSON to --json-out, and an HTML
report with plots (its path is printed at the end).

Scenarios (--scenario; flags given explicitly override these defaults):
  ramp         establish at --rate per second, or as fast as --window handshakes
               in flight allow (default: window 100)
  burst        all --count gateways at once (a mass restart)
  steady       ramp, then hold 60s with DPD every 10s and NAT-T keepalives every 5s
  churn        steady, and 20% of the fleet reconnects per minute
  nat-rebind   steady, and 50% of the fleet gets a new NAT-T source port per minute
  mobike       steady, and 50% of the fleet moves to its other address per minute (MOBIKE)
  rekey-storm  ramp, then every gateway rekeys its CHILD SA at once (--rekey-rate)
Every run is bounded: per-attempt --timeout, whole-run --max-duration.`

// scenarios are flag defaults per scenario.
var scenarios = map[string]map[string]string{
	"ramp":        {},
	"burst":       {"window": "0", "rate": "0"},
	"steady":      {"hold": "60s", "dpd": "10s", "keepalive": "5s"},
	"churn":       {"hold": "60s", "dpd": "10s", "keepalive": "5s", "churn": "20"},
	"nat-rebind":  {"hold": "60s", "dpd": "5s", "keepalive": "5s", "rebind": "50"},
	"mobike":      {"hold": "60s", "dpd": "10s", "keepalive": "5s", "mobike": "50"},
	"rekey-storm": {"rekey-storm": "true"},
}

func scenarioNames() string {
	var n []string
	for k := range scenarios {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, ", ")
}

type loadFlags struct {
	fs                                           *flag.FlagSet
	server                                       string
	serverPort, serverNATT                       uint
	source, altSource                            string
	sourcePort                                   uint
	perAddress, portsPerGW                       int
	id, remoteID, psk                            string
	certFile, keyFile, caFile, issueCA, issueKey string
	proposal, esp, localTS, remoteTS             string
	vip                                          bool
	scenario, label                              string
	count, window, workers, targetPID, espSize   int
	first                                        int
	startFile                                    string
	rate, churn, rebind, mobike, rekeyRate       float64
	espRate                                      float64
	espDest                                      string
	hold, timeout, maxDuration, dpd, keepalive   time.Duration
	rekeyStorm, rekeyIKE                         bool
	jsonOut                                      bool
	jsonFile, htmlFile                           string
	noHTML, quiet, verbose, noDelete             bool
	progressEvery                                time.Duration
	targets, targetHTTP                          string
	reconnect, startNATT                         bool
}

func newLoadFlags() *loadFlags {
	f := &loadFlags{fs: flag.NewFlagSet("ikeload", flag.ContinueOnError)}
	fs := f.fs
	fs.StringVar(&f.server, "server", "127.0.0.1", "responder address")
	fs.UintVar(&f.serverPort, "server-port", 500, "responder IKE port")
	fs.UintVar(&f.serverNATT, "server-natt-port", 4500, "responder NAT-T port")
	fs.StringVar(&f.source, "source", "", "our address, or a prefix to spread the gateways over (e.g. 127.1.0.0/16)\n(default: 127.0.0.1 for a loopback server, or 127.1.0.0/16 beyond 8000 gateways; else 0.0.0.0)")
	fs.UintVar(&f.sourcePort, "source-port", 0, "first source port: gateway n binds source-port + ports-per-gateway*(n-1) (0: ephemeral)")
	fs.IntVar(&f.perAddress, "per-address", 64, "gateways per address when --source is a prefix")
	fs.IntVar(&f.portsPerGW, "ports-per-gateway", 0, "sockets per gateway: 2 (IKE and NAT-T, as behind a NAT) or 1; 0: 2 if the open file limit allows")
	fs.StringVar(&f.altSource, "alt-source", "", "second address of every gateway for MOBIKE moves (default: loopback sources get a twin 127.128+.x.y)")
	fs.StringVar(&f.id, "id", "gw{n}@iot.example", "our identity; {n} is the gateway number")
	fs.StringVar(&f.remoteID, "remote-id", "", "expected responder identity")
	fs.StringVar(&f.psk, "psk", "", "pre-shared key; {n} is the gateway number (per-device keys)")
	fs.StringVar(&f.certFile, "cert", "", "our certificate (PEM), shared by all gateways, with --key")
	fs.StringVar(&f.keyFile, "key", "", "our private key (PEM)")
	fs.StringVar(&f.issueCA, "issue-ca-cert", "", "issue each gateway its own certificate from this CA (PEM), with --issue-ca-key")
	fs.StringVar(&f.issueKey, "issue-ca-key", "", "the CA's private key (PEM)")
	fs.StringVar(&f.caFile, "ca", "", "CA certificate(s) to verify the responder (PEM)")
	fs.StringVar(&f.proposal, "proposal", "aes256gcm16-prfsha256-x25519", "IKE proposals, comma-separated")
	fs.StringVar(&f.esp, "esp", "aes256gcm16", "ESP proposals, comma-separated")
	fs.StringVar(&f.localTS, "local-ts", "", "our traffic selectors, comma-separated (default 0.0.0.0/0 with --vip)")
	fs.StringVar(&f.remoteTS, "remote-ts", "0.0.0.0/0", "responder traffic selectors, comma-separated")
	fs.BoolVar(&f.vip, "vip", false, "request a virtual IP")
	fs.StringVar(&f.scenario, "scenario", "ramp", "scenario: "+scenarioNames())
	fs.StringVar(&f.label, "label", "", "name of this run in reports (e.g. the responder)")
	fs.IntVar(&f.count, "count", 1, "gateways")
	fs.StringVar(&f.startFile, "start-when", "", "once prepared, print 'ikeload: ready' on stderr and start when this file exists\n(several processes sharing a fleet start together)")
	fs.IntVar(&f.first, "first", 1, "number of the first gateway ({n} in --id and --psk): processes sharing a fleet take ranges")
	fs.Float64Var(&f.rate, "rate", 0, "new gateways per second (0: as fast as --window allows)")
	fs.IntVar(&f.window, "window", 100, "handshakes in flight at most (0: no limit)")
	fs.DurationVar(&f.hold, "hold", 0, "keep the SAs this long once all are up (then delete them)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "one setup or rekey attempt gives up after this long (counted as timed out)")
	fs.DurationVar(&f.maxDuration, "max-duration", 10*time.Minute, "the whole run ends by then")
	fs.DurationVar(&f.dpd, "dpd", 0, "gateways send liveness checks after this much silence (0: never)")
	fs.DurationVar(&f.keepalive, "keepalive", 0, "NAT-T keepalive interval (0: none)")
	fs.Float64Var(&f.churn, "churn", 0, "% of the fleet reconnecting per minute during --hold")
	fs.Float64Var(&f.rebind, "rebind", 0, "% of the fleet changing NAT-T source port per minute during --hold")
	fs.Float64Var(&f.mobike, "mobike", 0, "% of the fleet moving address with MOBIKE per minute during --hold")
	fs.BoolVar(&f.rekeyStorm, "rekey-storm", false, "after --hold, every gateway rekeys its CHILD SA")
	fs.Float64Var(&f.rekeyRate, "rekey-rate", 0, "rekeys started per second in the storm (0: all at once)")
	fs.BoolVar(&f.rekeyIKE, "rekey-ike", false, "the storm rekeys IKE SAs instead of CHILD SAs")
	fs.Float64Var(&f.espRate, "esp-rate", 0, "ESP packets per second per gateway during --hold (user-space ESP; 0: none)")
	fs.IntVar(&f.espSize, "esp-size", 64, "inner packet size of the ESP traffic, bytes")
	fs.StringVar(&f.espDest, "esp-dest", "", "inner destination of the ESP traffic (default: first address of --remote-ts)")
	fs.IntVar(&f.workers, "workers", 0, "engine shards (0: one per usable CPU)")
	fs.IntVar(&f.targetPID, "target-pid", 0, "measure this process's CPU and RSS (the responder)")
	fs.BoolVar(&f.jsonOut, "json", false, "print the report as JSON on stdout (instead of the text summary)")
	fs.StringVar(&f.jsonFile, "json-out", "", "also write the JSON report to this file")
	fs.StringVar(&f.htmlFile, "html", "", "write the HTML report here (default: a new file in the temporary directory)")
	fs.BoolVar(&f.noHTML, "no-html", false, "no HTML report")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress line")
	fs.DurationVar(&f.progressEvery, "progress-every", 10*time.Second, "progress line interval when stderr is not a terminal")
	fs.BoolVar(&f.noDelete, "no-delete", false, "at the end, leave without deleting the SAs (as after a power cut)")
	fs.BoolVar(&f.verbose, "v", false, "log every event")
	fs.StringVar(&f.targets, "targets", "", "a cluster behind the anycast address --server: its nodes' addresses, comma-separated;\nikeload is the ECMP router: each flow goes to the node a hash of its 5-tuple picks")
	fs.StringVar(&f.targetHTTP, "target-http", "", "per --targets node, the base URL of its /readyz (a failing node leaves the route)\nand /metrics (SAs per node in the report), comma-separated")
	fs.BoolVar(&f.startNATT, "start-natt", false, "send IKE_SA_INIT to the NAT-T port already: one UDP flow per gateway (behind ECMP, its SA\nthen lives on the node its flow reaches)")
	fs.BoolVar(&f.reconnect, "reconnect", false, "a gateway whose SA is lost sets up a new one (counted as a re-authentication)")
	return f
}

// parse reads the flags and applies the scenario's defaults to the flags
// not given.
func (f *loadFlags) parse(args []string, stdout io.Writer) error {
	if _, err := parseFlags(f.fs, args, 0, stdout, loadSynopsis); err != nil {
		return err
	}
	preset, ok := scenarios[f.scenario]
	if !ok {
		return usagef("--scenario %q: want one of %s", f.scenario, scenarioNames())
	}
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for name, v := range preset {
		if !set[name] {
			if err := f.fs.Set(name, v); err != nil {
				return err
			}
		}
	}
	if set["rate"] && !set["window"] && f.rate > 0 {
		f.window = 0 // an explicit rate: open loop
	}
	switch {
	case f.count < 1:
		return usagef("--count %d: want at least 1", f.count)
	case f.first < 1:
		return usagef("--first %d: want at least 1", f.first)
	case f.rate < 0 || f.window < 0:
		return usagef("--rate and --window must not be negative")
	case f.portsPerGW < 0 || f.portsPerGW > 2:
		return usagef("--ports-per-gateway %d: want 1 or 2", f.portsPerGW)
	case f.churn < 0 || f.rebind < 0 || f.mobike < 0 || f.churn > 6000 || f.rebind > 6000 || f.mobike > 6000:
		return usagef("--churn, --rebind and --mobike are percentages per minute (0..6000)")
	case f.serverPort == 0 || f.serverPort > 65535 || f.serverNATT == 0 || f.serverNATT > 65535 || f.sourcePort > 65535:
		return usagef("ports must be 1..65535")
	case f.timeout <= 0 || f.maxDuration <= 0:
		return usagef("--timeout and --max-duration must be positive")
	}
	return nil
}

// options turns the flags into loadtest options.
func (f *loadFlags) options() (loadtest.Options, error) {
	o := loadtest.Options{IDTemplate: f.id, RemoteID: f.remoteID, Count: f.count, First: f.first, Rate: f.rate, Window: f.window,
		Hold: f.hold, Timeout: f.timeout, MaxDuration: f.maxDuration, RequestVIP: f.vip,
		ServerNATT: uint16(f.serverNATT), SourcePort: uint16(f.sourcePort), PerAddress: f.perAddress,
		PortsPerGateway: f.portsPerGW, Scenario: f.scenario, Label: f.label,
		DPDDelay: f.dpd, KeepaliveInterval: f.keepalive, ChurnPerMin: f.churn, RebindPerMin: f.rebind,
		MOBIKEPerMin: f.mobike, RekeyStorm: f.rekeyStorm, RekeyRate: f.rekeyRate, RekeyIKE: f.rekeyIKE,
		ESPRate: f.espRate, ESPSize: f.espSize, Workers: f.workers, TargetPID: f.targetPID, NoDelete: f.noDelete}
	srv, err := netip.ParseAddr(f.server)
	if err != nil {
		return o, usagef("--server: %v", err)
	}
	o.Server = netip.AddrPortFrom(srv, uint16(f.serverPort))
	switch {
	case strings.Contains(f.source, "/"):
		if o.Sources, err = netip.ParsePrefix(f.source); err != nil {
			return o, usagef("--source: %v", err)
		}
	case f.source != "":
		if o.Source, err = netip.ParseAddr(f.source); err != nil {
			return o, usagef("--source: %v", err)
		}
	case srv.IsLoopback() && f.count > 8000:
		o.Sources = netip.MustParsePrefix("127.1.0.0/16")
	case srv.IsLoopback():
		o.Source = netip.MustParseAddr("127.0.0.1")
	default:
		o.Source = netip.IPv4Unspecified()
	}
	if f.targets != "" {
		for _, t := range strings.Split(f.targets, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(t))
			if err != nil {
				return o, usagef("--targets: %v", err)
			}
			if a == srv {
				return o, usagef("--targets: %v is --server, the anycast address the gateways see", a)
			}
			o.Targets = append(o.Targets, a)
		}
	}
	if f.targetHTTP != "" {
		for _, u := range strings.Split(f.targetHTTP, ",") {
			o.TargetHTTP = append(o.TargetHTTP, strings.TrimSpace(u))
		}
		if len(o.TargetHTTP) != len(o.Targets) {
			return o, usagef("--target-http: %d URLs for %d --targets", len(o.TargetHTTP), len(o.Targets))
		}
	}
	o.Reconnect, o.StartNATT = f.reconnect, f.startNATT
	if f.altSource != "" {
		if o.AltSource, err = netip.ParseAddr(f.altSource); err != nil {
			return o, usagef("--alt-source: %v", err)
		}
	}
	if f.espDest != "" {
		if o.ESPDest, err = netip.ParseAddr(f.espDest); err != nil {
			return o, usagef("--esp-dest: %v", err)
		}
	}
	if f.psk != "" {
		o.PSK = []byte(f.psk)
	}
	if f.certFile != "" {
		data, err := os.ReadFile(f.certFile)
		if err != nil {
			return o, fmt.Errorf("--cert: %v", err)
		}
		certs, err := sig.ParseCertificates(data)
		if err != nil || len(certs) == 0 {
			return o, fmt.Errorf("--cert: no certificate: %v", err)
		}
		for _, c := range certs {
			o.Chain = append(o.Chain, c.Raw)
		}
		kd, err := os.ReadFile(f.keyFile)
		if err != nil {
			return o, fmt.Errorf("--key: %v", err)
		}
		if o.Signer, err = sig.ParsePrivateKey(kd); err != nil {
			return o, fmt.Errorf("--key: %v", err)
		}
	}
	if f.issueCA != "" || f.issueKey != "" {
		cb, err1 := os.ReadFile(f.issueCA)
		kb, err2 := os.ReadFile(f.issueKey)
		if err := errors.Join(err1, err2); err != nil {
			return o, fmt.Errorf("--issue-ca-cert/--issue-ca-key: %v", err)
		}
		if o.CA, err = loadtest.LoadCA(cb, kb); err != nil {
			return o, fmt.Errorf("--issue-ca-cert/--issue-ca-key: %v", err)
		}
	}
	if o.PSK == nil && o.Signer == nil && o.CA == nil {
		return o, usagef("need --psk, --cert/--key or --issue-ca-cert/--issue-ca-key")
	}
	if f.caFile != "" {
		data, err := os.ReadFile(f.caFile)
		if err != nil {
			return o, fmt.Errorf("--ca: %v", err)
		}
		certs, err := sig.ParseCertificates(data)
		if err != nil {
			return o, fmt.Errorf("--ca: %v", err)
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		o.Verifier = &sig.Verifier{Roots: pool}
	}
	for _, p := range strings.Split(f.proposal, ",") {
		spec, err := ike.ParseProposal(p, false, false)
		if err != nil {
			return o, usagef("--proposal: %v", err)
		}
		o.IKEProposals = append(o.IKEProposals, spec)
	}
	for _, p := range strings.Split(f.esp, ",") {
		spec, err := ike.ParseProposal(p, true, false)
		if err != nil {
			return o, usagef("--esp: %v", err)
		}
		o.ESPProposals = append(o.ESPProposals, spec)
	}
	lts := f.localTS
	if lts == "" {
		if !f.vip {
			return o, usagef("--local-ts is required without --vip")
		}
		lts = "0.0.0.0/0"
	}
	if o.LocalTS, err = parseTS(lts); err != nil {
		return o, usagef("--local-ts: %v", err)
	}
	if o.RemoteTS, err = parseTS(f.remoteTS); err != nil {
		return o, usagef("--remote-ts: %v", err)
	}
	return o, nil
}

func load(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newLoadFlags()
	if err := f.parse(args, stdout); err != nil {
		return err
	}
	o, err := f.options()
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	tty := isTerminal(stderr)
	if !f.quiet {
		o.ProgressEvery = f.progressEvery
		if tty {
			o.ProgressEvery = time.Second
		}
		o.Progress = func(p loadtest.Progress) {
			line := progressLine(p)
			if tty {
				fmt.Fprintf(stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(stderr, line)
			}
		}
	}
	if f.startFile != "" {
		o.Ready = func(ctx context.Context) error {
			fmt.Fprintln(stderr, "ikeload: ready")
			for {
				if _, err := os.Stat(f.startFile); err == nil {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
	raiseNoFile()
	rep, runErr := loadtest.Run(ctx, o)
	if tty && !f.quiet {
		fmt.Fprint(stderr, "\r\033[K")
	}
	if rep.Started.IsZero() {
		return runErr // nothing ran
	}
	rep.Version = version()
	if f.jsonOut {
		enc := json.NewEncoder(stdout)
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		writeSummary(stdout, rep)
	}
	if f.jsonFile != "" {
		if err := writeJSON(f.jsonFile, rep); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "JSON report: %s\n", f.jsonFile)
	}
	if !f.noHTML {
		path := f.htmlFile
		if path == "" {
			path = filepath.Join(os.TempDir(), fmt.Sprintf("ikeload-%s-%d.html", rep.Started.Format("20060102-150405"), os.Getpid()))
		}
		if err := writeHTML(path, rep); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "HTML report: %s\n", path)
	}
	return runErr
}

// raiseNoFile lifts the soft limit of open files to the hard limit: every
// simulated gateway has its own sockets (loadtest raises the hard limit
// too when it may and must).
func raiseNoFile() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}

func progressLine(p loadtest.Progress) string {
	s := fmt.Sprintf("%6.1fs %-9s attempted %d  up %d  failed %d  timed out %d  in flight %d  %d/s  p99 %.1f ms",
		p.Elapsed.Seconds(), p.Phase, p.Attempted, p.Active, p.Failed, p.TimedOut, p.InFlight, p.LastRate, p.P99MS)
	if p.Rekeys > 0 {
		s += fmt.Sprintf("  rekeys %d", p.Rekeys)
	}
	if p.TargetRSS > 0 {
		s += fmt.Sprintf("  target %.0f%% CPU %.0f MiB", p.TargetCPU, p.TargetRSS)
	}
	return s
}

func writeSummary(w io.Writer, r loadtest.Report) {
	fmt.Fprintf(w, "attempted %d: established %d, failed %d, timed out %d", r.Attempted, r.Established, r.Failed, r.TimedOut)
	if !r.Consistent {
		fmt.Fprintf(w, " (INCONSISTENT, %d in flight)", r.InFlight)
	}
	fmt.Fprintf(w, "\nsetup: %.1f/s over %.2fs (peak %d/s); latency ms p50 %.1f p90 %.1f p99 %.1f max %.1f\n",
		r.RatePerS, r.SetupPhaseS, r.PeakRatePerS, r.LatencyMS.P50, r.LatencyMS.P90, r.LatencyMS.P99, r.LatencyMS.Max)
	fmt.Fprintf(w, "peak %d IKE SAs, child SAs %d, deleted %d, lost %d, retransmits %d, distinct source ports %d, run %.1fs\n",
		r.PeakSAs, r.Children, r.Deleted, r.Lost, r.Retransmits, r.SourcePorts, r.DurationS)
	for _, k := range sortedKeys(r.Failures) {
		fmt.Fprintf(w, "  failed: %s x%d\n", k, r.Failures[k])
	}
	for _, k := range sortedKeys(r.ChildFailures) {
		fmt.Fprintf(w, "  CHILD SA refused: %s x%d\n", k, r.ChildFailures[k])
	}
	if r.Abandoned > 0 {
		fmt.Fprintf(w, "left %d SAs established (--no-delete)\n", r.Abandoned)
	}
	for _, k := range sortedKeys(r.Losses) {
		fmt.Fprintf(w, "  lost: %s x%d\n", k, r.Losses[k])
	}
	if rk := r.Rekeys; rk.Attempted > 0 || rk.ByPeer > 0 || rk.IKE > 0 {
		fmt.Fprintf(w, "rekeys: ours %d (done %d, failed %d, timed out %d; p99 %.1f ms), by the peer %d, IKE %d\n",
			rk.Attempted, rk.Done, rk.Failed, rk.TimedOut, r.RekeyLatencyMS.P99, rk.ByPeer, rk.IKE)
	}
	if m := r.Moves; m.Rebinds+m.MOBIKE+m.Skipped > 0 {
		fmt.Fprintf(w, "moves: NAT rebinds %d (confirmed %d), MOBIKE %d (confirmed %d), unconfirmed %d, skipped %d\n",
			m.Rebinds, m.RebindsConfirmed, m.MOBIKE, m.MOBIKEConfirmed, m.Unconfirmed, m.Skipped)
	}
	if r.Keepalives > 0 {
		fmt.Fprintf(w, "keepalives sent %d\n", r.Keepalives)
	}
	if e := r.ESP; e != nil {
		fmt.Fprintf(w, "ESP: sent %d, received %d, errors %v\n", e.Sent, e.Received, e.Errors)
	}
	for _, k := range sortedKeys(r.Retried) {
		fmt.Fprintf(w, "  refused for now, tried again: %s x%d\n", k, r.Retried[k])
	}
	if len(r.Params.Targets) > 0 {
		fmt.Fprintf(w, "cluster %s: re-authentications %d\n", strings.Join(r.Params.Targets, ","), r.Reauthentications)
		for _, e := range r.RouteEvents {
			fmt.Fprintf(w, "  %6.1fs %s %s", e.AtS, e.Target, e.Change)
			if e.Reason != "" {
				fmt.Fprintf(w, " (%s, detected in %.2fs)", e.Reason, e.DetectS)
			}
			fmt.Fprintf(w, ": %d gateways moved, %d answered from their new node; outage ms p50 %.0f p99 %.0f max %.0f\n",
				e.Moved, e.Recovered, e.OutageMS.P50, e.OutageMS.P99, e.OutageMS.Max)
		}
		for _, n := range r.Nodes {
			fmt.Fprintf(w, "  node %s: SAs %s\n", n.Target, sparkSAs(n.SAs))
		}
	}
	if t := r.Target; t != nil {
		fmt.Fprintf(w, "target pid %d: %.2f CPU-s, %.0f%% of a core during setup, %.1f setups per CPU-second, max RSS %.1f MiB\n",
			t.PID, t.CPUSeconds, t.CPUMeanPct, t.SetupsPerCPU, t.RSSMaxMiB)
	}
	fmt.Fprintf(w, "ikeload: %.2f CPU-s, %.0f%% of a core during setup\n", r.Self.CPUSeconds, r.Self.CPUMeanPct)
}

// sparkSAs shows a node's SA count every 10 s ("-": no answer) and its last.
func sparkSAs(v []int64) string {
	var b strings.Builder
	for i, x := range v {
		if i%10 != 9 && i != len(v)-1 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		if x < 0 {
			fmt.Fprintf(&b, "%ds:-", i+1)
		} else {
			fmt.Fprintf(&b, "%ds:%d", i+1, x)
		}
	}
	return b.String()
}

func sortedKeys(m map[string]int) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func writeHTML(path string, reps ...loadtest.Report) error {
	fh, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := loadtest.WriteHTML(fh, reps...); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
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

// genPKI writes a CA and a responder certificate for certificate runs.
func genPKI(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ikeload gen-pki", flag.ContinueOnError)
	dir := fs.String("dir", "", "output directory (required)")
	rid := fs.String("responder-id", "conc.example", "the responder's identity (its certificate's subjectAltName)")
	if _, err := parseFlags(fs, args, 0, stdout, `
Usage: ikeload gen-pki --dir DIR [--responder-id ID]

Writes an ECDSA P-256 test CA (ca.crt, ca.key) and a certificate for the
responder (responder.crt, responder.key) into DIR. Run the load with
--issue-ca-cert DIR/ca.crt --issue-ca-key DIR/ca.key --ca DIR/ca.crt: each
gateway gets its own certificate for its identity.`); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("gen-pki: --dir is required")
	}
	ca, err := loadtest.NewCA("ikefleet load test CA")
	if err != nil {
		return err
	}
	if err := ca.WriteFiles(*dir, *rid); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/{ca.crt,ca.key,responder.crt,responder.key}\n", *dir)
	return nil
}
