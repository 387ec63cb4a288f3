package ike

import (
	"crypto/rand"
	"testing"
	"time"
)

// handshakeDriver runs complete handshakes between our initiator and our
// responder in-process and times each side's Handle calls.
type handshakeDriver struct {
	b        *testing.B
	ini      Initiation
	ie, res  *Engine
	now      time.Time
	resTime  time.Duration // spent in the responder's Handle
	iniTime  time.Duration // spent in Initiate and the initiator's Handle
	messages int           // datagrams per handshake (both ways)
}

func newHandshakeDriver(b *testing.B, proposal string) *handshakeDriver {
	rcfg := responderConfig(b, 1)
	rcfg.Rand = rand.Reader
	rcfg.IKEProposals = mustProposals(b, false, proposal)
	res, err := NewEngine(rcfg)
	if err != nil {
		b.Fatal(err)
	}
	ini := pskInitiation(b)
	ini.IKEProposals = mustProposals(b, false, proposal)
	ie, err := NewEngine(Config{IKEProposals: ini.IKEProposals, Rand: rand.Reader})
	if err != nil {
		b.Fatal(err)
	}
	return &handshakeDriver{b: b, ini: ini, ie: ie, res: res, now: t0}
}

// one runs a handshake to completion and forgets both SAs.
func (d *handshakeDriver) one() {
	acts := &Ready{}
	start := time.Now()
	spi, _ := d.ie.Initiate(d.now, d.ini, acts)
	d.iniTime += time.Since(start)
	var resSPIs []uint64
	toRes := true
	d.messages = 0
	for steps := 0; len(acts.Send) > 0; steps++ {
		if steps > 20 {
			d.b.Fatal("handshake loops")
		}
		out := &Ready{}
		to := d.ie
		if toRes {
			to = d.res
		}
		for _, p := range acts.Persist {
			if toRes {
				d.ie.Committed(p.SPI, p.Version)
			} else {
				d.res.Committed(p.SPI, p.Version)
			}
		}
		for _, s := range acts.Send {
			for _, m := range s.Messages {
				d.messages++
				start := time.Now()
				to.Handle(d.now, Packet{Local: s.Remote, Remote: s.Local, Data: m}, out)
				if toRes {
					d.resTime += time.Since(start)
				} else {
					d.iniTime += time.Since(start)
				}
			}
		}
		for _, ev := range out.Events {
			if !toRes || ev.Kind != EventIKEEstablished {
				continue
			}
			resSPIs = append(resSPIs, ev.SPIr)
		}
		acts, toRes = out, !toRes
	}
	if sa := d.ie.SA(spi); sa == nil || !sa.Established() {
		d.b.Fatal("handshake did not complete")
	}
	d.ie.remove(d.ie.SA(spi))
	for _, s := range resSPIs {
		if sa := d.res.SA(s); sa != nil {
			d.res.remove(sa)
		}
	}
}

// BenchmarkHybridHandshakeCost compares, in one run, a plain X25519
// handshake with the hybrid one that adds ML-KEM-768 in an
// IKE_INTERMEDIATE exchange (PSK authentication, one CHILD SA), handshakes
// alternating so both see the same machine. It reports each side's cost
// per handshake and the hybrid/plain ratios.
func BenchmarkHybridHandshakeCost(b *testing.B) {
	plain := newHandshakeDriver(b, "aes256gcm16-prfsha256-x25519")
	hybrid := newHandshakeDriver(b, "aes256gcm16-prfsha256-x25519-ke1_mlkem768")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plain.one()
		hybrid.one()
	}
	n := float64(b.N)
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / n }
	b.ReportMetric(us(plain.resTime), "plain-responder-us/hs")
	b.ReportMetric(us(hybrid.resTime), "mlkem768-responder-us/hs")
	b.ReportMetric(float64(hybrid.resTime)/float64(plain.resTime), "responder-ratio")
	b.ReportMetric(us(plain.iniTime), "plain-initiator-us/hs")
	b.ReportMetric(us(hybrid.iniTime), "mlkem768-initiator-us/hs")
	b.ReportMetric(float64(hybrid.iniTime)/float64(plain.iniTime), "initiator-ratio")
	b.ReportMetric(float64(plain.messages), "plain-datagrams/hs")
	b.ReportMetric(float64(hybrid.messages), "mlkem768-datagrams/hs")
}

// rekeyDriver rekeys a gateway's CHILD SA over and over against our
// responder in-process and times the responder's Handle calls.
type rekeyDriver struct {
	b        *testing.B
	w        *wire
	spi      uint64
	resTime  time.Duration
	messages int // datagrams per rekey (both ways, the old SA's Delete included)
}

func newRekeyDriver(b *testing.B, ikeProp, espProp string) *rekeyDriver {
	rcfg := responderConfig(b, 1)
	rcfg.Rand = rand.Reader
	rcfg.IKEProposals = mustProposals(b, false, ikeProp)
	rcfg.ESPProposals = mustProposals(b, true, espProp)
	rcfg.MaxChildren = 1 << 20
	w := newWire(b, rcfg)
	ini := pskInitiation(b)
	ini.IKEProposals, ini.ESPProposals = rcfg.IKEProposals, rcfg.ESPProposals
	acts := &Ready{}
	spi, err := w.ini.Initiate(w.now, ini, acts)
	if err != nil {
		b.Fatal(err)
	}
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		b.Fatal("not established")
	}
	return &rekeyDriver{b: b, w: w, spi: spi}
}

// one rekeys the gateway's newest CHILD SA, the gateway starting.
func (d *rekeyDriver) one() {
	sa := d.w.ini.SA(d.spi)
	c := sa.children[len(sa.children)-1]
	acts := &Ready{}
	d.w.ini.RekeyChild(d.w.now, d.spi, c.InSPI, acts)
	toRes := true
	d.messages = 0
	for steps := 0; len(acts.Send) > 0; steps++ {
		if steps > 20 {
			d.b.Fatal("rekey loops")
		}
		from, to := d.w.ini, d.w.res
		if !toRes {
			from, to = to, from
		}
		for _, p := range acts.Persist {
			from.Committed(p.SPI, p.Version)
		}
		out := &Ready{}
		for _, s := range acts.Send {
			for _, m := range s.Messages {
				d.messages++
				start := time.Now()
				to.Handle(d.w.now, Packet{Local: s.Remote, Remote: s.Local, Data: m}, out)
				if toRes {
					d.resTime += time.Since(start)
				}
			}
		}
		acts, toRes = out, !toRes
	}
	if c.replacedBy == nil {
		d.b.Fatal("rekey did not complete")
	}
	// The old SA goes after the overlap: let it.
	d.w.now = d.w.now.Add(time.Minute)
	for _, e := range []*Engine{d.w.ini, d.w.res} {
		rd := &Ready{}
		e.Tick(d.w.now, rd)
		d.w.run(rd, e == d.w.ini)
	}
}

// BenchmarkHybridChildRekeyCost compares, in one run, CHILD SA rekeys with
// X25519 PFS against rekeys that add ML-KEM-768 in IKE_FOLLOWUP_KE (RFC
// 9370), the gateway starting, rekeys alternating so both see the same
// machine: the responder's cost per rekey and the ratio.
func BenchmarkHybridChildRekeyCost(b *testing.B) {
	const ikeP = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
	plain := newRekeyDriver(b, ikeP, "aes256gcm16-x25519")
	hybrid := newRekeyDriver(b, ikeP, "aes256gcm16-x25519-ke1_mlkem768")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		plain.one()
		hybrid.one()
	}
	n := float64(b.N)
	b.ReportMetric(float64(plain.resTime.Microseconds())/n, "plain-responder-us/rekey")
	b.ReportMetric(float64(hybrid.resTime.Microseconds())/n, "mlkem768-responder-us/rekey")
	b.ReportMetric(float64(hybrid.resTime)/float64(plain.resTime), "responder-ratio")
	b.ReportMetric(float64(plain.messages), "plain-datagrams/rekey")
	b.ReportMetric(float64(hybrid.messages), "mlkem768-datagrams/rekey")
}
