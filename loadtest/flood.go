package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// FloodOptions describe a flood against a responder: IKE_SA_INIT requests
// from ever new source ports (as a spoofing attacker's would arrive; it
// never sees the answers) and malformed datagrams, at fixed rates, for a
// bounded time.
type FloodOptions struct {
	Server     netip.AddrPort // the responder's IKE port
	ServerNATT uint16         // its NAT-T port; 0 = 4500
	// Known are IKE SPI pairs (initiator, responder) of SAs the responder
	// holds: half of the malformed datagrams are INFORMATIONAL requests
	// for them whose SK payload fails the integrity check (on both
	// ports). Without them those carry random SPIs.
	Known     [][2]uint64
	InitRate  int           // IKE_SA_INIT requests per second
	BadRate   int           // malformed datagrams per second
	Duration  time.Duration // required
	Senders   int           // sending goroutines; 0 = 2
	PerSocket int           // datagrams sent from one source port before a new one is opened; 0 = 64
	// Pace is how often a sender sends what the rates ask for up to then;
	// 0 = 1 ms. A flood from many sources arrives spread out: a long pace
	// sends it in bursts (at 10 ms and 100,000 datagrams/s, 1,000 at once)
	// that a genuine request then waits behind.
	Pace time.Duration
	// Spoof, an IPv4 prefix, forges the sources: every datagram leaves a
	// raw socket (CAP_NET_RAW) from a random address of Spoof and a random
	// port, as a spoofing attacker's would arrive, and PerSocket does not
	// apply. The responder's answers go to those addresses: route Spoof
	// away from it (into a dummy interface in a test's network namespace),
	// never to hosts that exist. Without it the datagrams leave ordinary
	// sockets on ever new ports (see Flood).
	Spoof netip.Prefix
}

// FloodReport says what a flood sent.
type FloodReport struct {
	Inits      uint64  `json:"inits"`       // IKE_SA_INIT requests sent
	Malformed  uint64  `json:"malformed"`   // malformed datagrams sent
	SendErrors uint64  `json:"send_errors"` // failed sends and socket opens
	Sources    int     `json:"sources"`     // distinct source address:ports used (with Spoof: datagrams sent, each from a random one)
	Spoofed    bool    `json:"spoofed"`     // sources forged (FloodOptions.Spoof)
	Seconds    float64 `json:"seconds"`     // how long it ran
}

// InitRate and BadRate are the rates reached.
func (r FloodReport) InitRate() float64 { return float64(r.Inits) / max(r.Seconds, 1e-9) }
func (r FloodReport) BadRate() float64  { return float64(r.Malformed) / max(r.Seconds, 1e-9) }

// ErrFloodOptions reports unusable flood options.
var ErrFloodOptions = errors.New("loadtest: flood options")

// Flood sends the flood until o.Duration has passed or ctx ends. On a
// loopback server, half of the source sockets bind random 127.x.y.z
// addresses (loopback accepts any of them), so the responder sees ever
// new addresses as well as ports.
func Flood(ctx context.Context, o FloodOptions) (FloodReport, error) {
	switch {
	case !o.Server.IsValid():
		return FloodReport{}, fmt.Errorf("%w: no server", ErrFloodOptions)
	case o.Duration <= 0:
		return FloodReport{}, fmt.Errorf("%w: duration must be positive", ErrFloodOptions)
	case o.InitRate < 0 || o.BadRate < 0 || o.InitRate+o.BadRate == 0:
		return FloodReport{}, fmt.Errorf("%w: rates must be non-negative and not both zero", ErrFloodOptions)
	case o.Senders < 0 || o.PerSocket < 0 || o.Pace < 0:
		return FloodReport{}, fmt.Errorf("%w: senders, per-socket and pace must be non-negative", ErrFloodOptions)
	case o.Spoof.IsValid() && (!o.Spoof.Addr().Is4() || !o.Server.Addr().Is4()):
		return FloodReport{}, fmt.Errorf("%w: spoofed sources need an IPv4 prefix and an IPv4 server", ErrFloodOptions)
	}
	if o.Pace == 0 {
		o.Pace = time.Millisecond
	}
	if o.Senders == 0 {
		o.Senders = 2
	}
	if o.PerSocket == 0 {
		o.PerSocket = 64
	}
	natt := o.ServerNATT
	if natt == 0 {
		natt = 4500
	}
	tmpl := initTemplate()
	start := time.Now()
	until := start.Add(o.Duration)
	parts := make([]floodSender, o.Senders)
	var wg sync.WaitGroup
	for w := range parts {
		s := &parts[w]
		s.o, s.natt, s.tmpl = &o, netip.AddrPortFrom(o.Server.Addr(), natt), tmpl
		s.r = mrand.New(mrand.NewPCG(uint64(w), uint64(start.UnixNano())))
		s.sources = map[netip.AddrPort]struct{}{}
		if o.Spoof.IsValid() {
			sp, err := newSpoofer(o.Spoof, s.r)
			if err != nil {
				for i := range w {
					parts[i].spoof.close()
				}
				return FloodReport{}, err
			}
			s.spoof = sp
		}
		initRate, badRate := o.InitRate/o.Senders, o.BadRate/o.Senders
		if w == 0 { // the remainders
			initRate += o.InitRate % o.Senders
			badRate += o.BadRate % o.Senders
		}
		wg.Go(func() { s.run(ctx, start, until, initRate, badRate) })
	}
	wg.Wait()
	rep := FloodReport{Seconds: time.Since(start).Seconds(), Spoofed: o.Spoof.IsValid()}
	all := map[netip.AddrPort]struct{}{}
	for i := range parts {
		rep.Inits += parts[i].inits
		rep.Malformed += parts[i].bad
		rep.SendErrors += parts[i].errs
		for a := range parts[i].sources {
			all[a] = struct{}{}
		}
	}
	rep.Sources = len(all)
	if rep.Spoofed {
		rep.Sources = int(rep.Inits + rep.Malformed)
	}
	return rep, nil
}

// initTemplate is an IKE_SA_INIT for aes256-sha256-modp2048 with a random
// (never computed) key exchange; the SPI and the end of the KE data are
// patched per packet.
func initTemplate() []byte {
	ke := make([]byte, 256)
	rand.Read(ke)
	ps := []ike.Payload{
		&ike.SA{Proposals: []ike.Proposal{{Num: 1, Protocol: ike.ProtoIKE, Transforms: []ike.Transform{
			{Type: suite.TypeENCR, ID: 12, KeyLen: 256}, {Type: suite.TypePRF, ID: 5},
			{Type: suite.TypeINTEG, ID: 12}, {Type: suite.TypeKE, ID: 14}}}}},
		&ike.KE{Group: 14, Data: ke},
		&ike.Nonce{Data: make([]byte, 32)},
	}
	return (&ike.Message{SPIi: 1, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagInitiator, Payloads: ps}).Encode()
}

// garbageSK is an INFORMATIONAL request for the SA (spii, spir) whose SK
// payload is random bytes (it fails the integrity check).
func garbageSK(r *mrand.Rand, spii, spir uint64) []byte {
	const body = 16 + 64 + 16
	b := make([]byte, 28+4+body)
	binary.BigEndian.PutUint64(b[0:], spii)
	binary.BigEndian.PutUint64(b[8:], spir)
	b[16] = byte(ike.PayloadSK)
	b[17] = 0x20
	b[18] = byte(ike.INFORMATIONAL)
	b[19] = ike.FlagInitiator
	binary.BigEndian.PutUint32(b[20:], r.Uint32N(1000))
	binary.BigEndian.PutUint32(b[24:], uint32(len(b)))
	binary.BigEndian.PutUint16(b[30:], uint16(4+body))
	for i := 32; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// floodSender is one sending goroutine of a flood, with its own sockets.
type floodSender struct {
	o    *FloodOptions
	natt netip.AddrPort
	tmpl []byte
	r    *mrand.Rand

	socks   [16]*net.UDPConn
	used    [16]int
	sources map[netip.AddrPort]struct{}
	spoof   *spoofer // with FloodOptions.Spoof, instead of socks

	inits, bad, errs uint64
}

func (s *floodSender) count(c spoofCounts) {
	s.inits += c.inits
	s.bad += c.bad
	s.errs += c.failed
}

// open replaces socket i by one on a new source port (and, for odd i on
// loopback, a new address).
func (s *floodSender) open(i int) {
	if s.socks[i] != nil {
		s.socks[i].Close()
		s.socks[i] = nil
	}
	var src netip.Addr
	if s.o.Server.Addr().Is4() && s.o.Server.Addr().IsLoopback() {
		src = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if i%2 == 1 {
			src = netip.AddrFrom4([4]byte{127, byte(1 + s.r.IntN(254)), byte(s.r.IntN(256)), byte(1 + s.r.IntN(254))})
		}
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil && src.IsValid() {
		c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	}
	if err != nil {
		s.errs++
		return
	}
	s.socks[i], s.used[i] = c, 0
	s.sources[c.LocalAddr().(*net.UDPAddr).AddrPort()] = struct{}{}
}

func (s *floodSender) send(b []byte, to netip.AddrPort) bool {
	i := s.r.IntN(len(s.socks))
	if s.socks[i] == nil || s.used[i] >= s.o.PerSocket {
		if s.open(i); s.socks[i] == nil {
			return false
		}
	}
	s.used[i]++
	if _, err := s.socks[i].WriteToUDPAddrPort(b, to); err != nil {
		s.errs++
		return false
	}
	return true
}

// malformed is the n-th malformed datagram and the port it goes to:
// truncated headers, length fields that disagree with the datagram, and
// garbage SK payloads for known SAs on the IKE and the NAT-T port (with
// the non-ESP marker).
func (s *floodSender) malformed(n int) ([]byte, netip.AddrPort) {
	r := s.r
	switch n % 4 {
	case 0:
		b := make([]byte, 1+r.IntN(27))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b, s.o.Server
	case 1:
		b := append([]byte(nil), s.tmpl...)
		binary.BigEndian.PutUint64(b[0:], r.Uint64()|1)
		binary.BigEndian.PutUint32(b[24:], uint32(len(b)+1+r.IntN(4000)))
		return b, s.o.Server
	}
	k := [2]uint64{r.Uint64() | 1, r.Uint64() | 1}
	if len(s.o.Known) > 0 {
		k = s.o.Known[r.IntN(len(s.o.Known))]
	}
	b := garbageSK(r, k[0], k[1])
	if n%4 == 3 {
		return append([]byte{0, 0, 0, 0}, b...), s.natt
	}
	return b, s.o.Server
}

// run paces the sender: every o.Pace it sends what the rates ask for up to
// now, and when it falls behind it re-reads the clock instead of catching
// up in one burst (the report says what rate was reached).
func (s *floodSender) run(ctx context.Context, start, until time.Time, initRate, badRate int) {
	defer func() {
		if s.spoof != nil {
			s.spoof.close()
		}
		for _, c := range s.socks {
			if c != nil {
				c.Close()
			}
		}
	}()
	tick := s.o.Pace
	timer := time.NewTimer(tick)
	defer timer.Stop()
	pkt := make([]byte, len(s.tmpl))
	var initsDone, badDone int
	for ctx.Err() == nil && time.Now().Before(until) {
		el := time.Since(start).Seconds()
		wantInit, wantBad := int(el*float64(initRate)), int(el*float64(badRate))
		for initsDone < wantInit || badDone < wantBad {
			if initsDone < wantInit {
				copy(pkt, s.tmpl)
				binary.BigEndian.PutUint64(pkt[0:], s.r.Uint64()|1)
				binary.BigEndian.PutUint64(pkt[len(pkt)-36-8:], s.r.Uint64()) // the end of the KE data (the Nonce payload is the last 36 bytes)
				if s.spoof != nil {
					s.count(s.spoof.add(pkt, s.o.Server, true))
				} else if s.send(pkt, s.o.Server) {
					s.inits++
				}
				initsDone++
			}
			if badDone < wantBad {
				b, to := s.malformed(badDone)
				if s.spoof != nil {
					s.count(s.spoof.add(b, to, false))
				} else if s.send(b, to) {
					s.bad++
				}
				badDone++
			}
			if time.Since(start).Seconds() > el+tick.Seconds() {
				break
			}
		}
		if s.spoof != nil {
			s.count(s.spoof.flush())
		}
		timer.Reset(tick)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
	}
}
