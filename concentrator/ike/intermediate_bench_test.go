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
