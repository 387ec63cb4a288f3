// Package loadtest drives a simulated fleet of IKEv2 gateways (our own
// initiator engine) against a concentrator or any IKEv2 responder.
package loadtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// Options describe a load run.
type Options struct {
	Server     netip.AddrPort // responder IKE address (port 500)
	ServerNATT uint16         // responder NAT-T port; 0 = 4500
	Source     netip.Addr     // our address
	SourcePort uint16         // our IKE port; 0 = ephemeral
	NATTPort   uint16         // our NAT-T port; 0 = ephemeral

	IDTemplate string // our identity; "{n}" is replaced by the gateway number (1-based)
	RemoteID   string // expected responder identity ("" = accept any)
	PSK        []byte // "{n}" is replaced by the gateway number (per-device keys)
	Signer     crypto.Signer
	Chain      [][]byte
	Verifier   *sig.Verifier

	IKEProposals []ike.ProposalSpec
	ESPProposals []ike.ProposalSpec
	LocalTS      []ike.TrafficSelector
	RemoteTS     []ike.TrafficSelector
	RequestVIP   bool

	Count   int           // gateways
	Rate    float64       // new gateways per second; 0 = all at once
	Hold    time.Duration // keep the SAs this long once all are up
	Timeout time.Duration // give up on establishments after this long
	Log     *slog.Logger
}

// Report is the outcome of a run.
type Report struct {
	Established int            `json:"established"`
	Failed      int            `json:"failed"`
	Children    int            `json:"child_sas"`
	Deleted     int            `json:"deleted"`
	Failures    map[string]int `json:"failures,omitempty"`
	DurationS   float64        `json:"duration_s"`
	RatePerS    float64        `json:"rate_per_s"`
	LatencyMS   Latency        `json:"latency_ms"`
	Retransmits uint64         `json:"retransmits"`
	Proposal    string         `json:"proposal,omitempty"`
}

// Latency summarises establishment latencies.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

type gateway struct {
	spi     uint64
	started time.Time
	done    bool
}

// Run executes the load and returns its report.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Count <= 0 {
		o.Count = 1
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ikeConn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.Source, o.SourcePort)))
	if err != nil {
		return Report{}, fmt.Errorf("listen IKE: %w", err)
	}
	defer ikeConn.Close()
	nattConn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.Source, o.NATTPort)))
	if err != nil {
		return Report{}, fmt.Errorf("listen NAT-T: %w", err)
	}
	defer nattConn.Close()
	ikeLocal := ikeConn.LocalAddr().(*net.UDPAddr).AddrPort()
	nattLocal := nattConn.LocalAddr().(*net.UDPAddr).AddrPort()
	ikeLocal = netip.AddrPortFrom(o.Source, ikeLocal.Port())
	nattLocal = netip.AddrPortFrom(o.Source, nattLocal.Port())

	eng, err := ike.NewEngine(ike.Config{IKEProposals: o.IKEProposals, NATTPort: nattLocal.Port(), Rand: rand.Reader, ForceEncap: true})
	if err != nil {
		return Report{}, err
	}
	var remoteID ike.Identity
	if o.RemoteID != "" {
		if remoteID, err = ike.ParseIdentity(o.RemoteID); err != nil {
			return Report{}, fmt.Errorf("remote id: %w", err)
		}
	}

	pkts := make(chan ike.Packet, 1024)
	reader := func(c *net.UDPConn, local netip.AddrPort, natt bool) {
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b := buf[:n]
			if natt {
				if n < 4 || binary.BigEndian.Uint32(b) != 0 {
					continue // ESP or keepalive: not ours to handle here
				}
				b = b[4:]
			}
			select {
			case pkts <- ike.Packet{Local: local, Remote: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), Data: append([]byte(nil), b...)}:
			case <-ctx.Done():
				return
			}
		}
	}
	go reader(ikeConn, ikeLocal, false)
	go reader(nattConn, nattLocal, true)

	send := func(a ike.Send) {
		c, natt := ikeConn, false
		if a.Local.Port() == nattLocal.Port() {
			c, natt = nattConn, true
		}
		for _, m := range a.Messages {
			if natt {
				m = append([]byte{0, 0, 0, 0}, m...)
			}
			if _, err := c.WriteToUDPAddrPort(m, a.Remote); err != nil {
				o.Log.Warn("send failed", "err", err)
			}
		}
	}

	rep := Report{Failures: map[string]int{}}
	gws := map[uint64]*gateway{}
	var lat []float64
	start := time.Now()
	deadline := start.Add(o.Timeout)
	started, finished := 0, 0
	acts := &ike.Ready{}
	perform := func(now time.Time) {
		for _, p := range acts.Persist {
			eng.Committed(p.SPI, p.Version) // the load generator keeps no state store
		}
		for _, a := range acts.DataPlane {
			if _, ok := a.(ike.InstallChild); ok {
				rep.Children++
			}
		}
		for _, a := range acts.Send {
			if !a.Keepalive {
				send(a)
			}
		}
		for _, a := range acts.Events {
			g := gws[a.SPIi]
			switch a.Kind {
			case ike.EventIKEEstablished:
				if g != nil && !g.done {
					g.done = true
					finished++
					rep.Established++
					rep.Proposal = a.Proposal
					lat = append(lat, float64(now.Sub(g.started).Microseconds())/1000)
				}
				o.Log.Info(a.Kind.String(), "spi_i", fmt.Sprintf("%016x", a.SPIi), "peer_id", a.PeerID.String(), "proposal", a.Proposal)
			case ike.EventIKEFailed:
				if g != nil && !g.done {
					g.done = true
					finished++
					rep.Failed++
					reason := a.Reason
					if a.Notify != 0 {
						reason = a.Notify.String()
					}
					rep.Failures[reason]++
				}
				o.Log.Warn(a.Kind.String(), "spi_i", fmt.Sprintf("%016x", a.SPIi), "notify", a.Notify.String(), "reason", a.Reason)
			case ike.EventIKEDeleted:
				rep.Deleted++
			case ike.EventChildFailed:
				o.Log.Warn(a.Kind.String(), "spi_i", fmt.Sprintf("%016x", a.SPIi), "notify", a.Notify.String(), "reason", a.Reason)
			}
		}
		acts.Reset()
	}

	initiate := func(now time.Time) error {
		started++
		n := strconv.Itoa(started)
		id, err := ike.ParseIdentity(strings.ReplaceAll(o.IDTemplate, "{n}", n))
		if err != nil {
			return fmt.Errorf("id: %w", err)
		}
		ini := ike.Initiation{
			Local: ikeLocal, Remote: o.Server,
			Creds:    ike.Credentials{ID: id, Signer: o.Signer, Chain: o.Chain},
			RemoteID: remoteID, Verifier: o.Verifier,
			IKEProposals: o.IKEProposals, ESPProposals: o.ESPProposals,
			TSi: o.LocalTS, TSr: o.RemoteTS, RequestVIP: o.RequestVIP, RemoteNATT: o.ServerNATT,
		}
		if o.PSK != nil {
			ini.PSK = []byte(strings.ReplaceAll(string(o.PSK), "{n}", n))
		}
		var spi uint64
		spi, err = eng.Initiate(now, ini, acts)
		if err != nil {
			return err
		}
		gws[spi] = &gateway{spi: spi, started: now}
		perform(now)
		return nil
	}

	interval := time.Duration(0)
	if o.Rate > 0 {
		interval = time.Duration(float64(time.Second) / o.Rate)
	}
	nextStart := start
	timer := time.NewTimer(0)
	defer timer.Stop()
	for finished < o.Count {
		now := time.Now()
		for started < o.Count && !now.Before(nextStart) {
			if err := initiate(now); err != nil {
				return rep, err
			}
			nextStart = nextStart.Add(interval)
		}
		if now.After(deadline) {
			rep.Failures["timeout"] += o.Count - finished
			rep.Failed += o.Count - finished
			break
		}
		wake := deadline
		if d := eng.NextDeadline(time.Now()); !d.IsZero() && d.Before(wake) {
			wake = d
		}
		if started < o.Count && nextStart.Before(wake) {
			wake = nextStart
		}
		timer.Reset(time.Until(wake))
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case p := <-pkts:
			eng.Handle(time.Now(), p, acts)
		case <-timer.C:
			eng.Tick(time.Now(), acts)
		}
		perform(time.Now())
	}
	elapsed := time.Since(start)
	rep.DurationS = elapsed.Seconds()
	if elapsed > 0 {
		rep.RatePerS = float64(rep.Established) / elapsed.Seconds()
	}
	rep.LatencyMS = summarise(lat)

	// pump serves packets and timers until done or until.
	pump := func(until time.Time, done func() bool) error {
		for !done() && time.Now().Before(until) {
			wake := until
			if d := eng.NextDeadline(time.Now()); !d.IsZero() && d.Before(wake) {
				wake = d
			}
			timer.Reset(time.Until(wake))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case p := <-pkts:
				eng.Handle(time.Now(), p, acts)
			case <-timer.C:
				eng.Tick(time.Now(), acts)
			}
			perform(time.Now())
		}
		return nil
	}
	// Hold the SAs (answering the peer's requests), then delete them.
	if err := pump(time.Now().Add(o.Hold), func() bool { return false }); err != nil {
		return rep, err
	}
	var spis []uint64
	eng.Each(func(sa *ike.IKESA) bool {
		if sa.Established() {
			spis = append(spis, sa.SPIi)
		}
		return true
	})
	for _, spi := range spis {
		eng.Delete(time.Now(), spi, acts)
	}
	perform(time.Now())
	if err := pump(time.Now().Add(5*time.Second), func() bool { return eng.Len() == 0 }); err != nil {
		return rep, err
	}
	rep.Retransmits = eng.Stats().Retransmits
	if rep.Established < o.Count {
		return rep, errors.New("not every gateway established its IKE SA")
	}
	return rep, nil
}

func summarise(ms []float64) Latency {
	if len(ms) == 0 {
		return Latency{}
	}
	sort.Float64s(ms)
	q := func(p float64) float64 { return ms[min(len(ms)-1, int(p*float64(len(ms))))] }
	return Latency{P50: q(0.5), P90: q(0.9), P99: q(0.99), Max: ms[len(ms)-1]}
}
