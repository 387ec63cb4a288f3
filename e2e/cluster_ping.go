//go:build linux

package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// PingStream sends ICMP echo requests from one address in a namespace to
// another every Interval and records which were answered (however late),
// so outages and losses can be read for any stretch of time afterwards.
type PingStream struct {
	Interval time.Duration

	c    net.PacketConn
	id   uint16
	quit chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu   sync.Mutex
	sent []time.Time // by seq-1
	got  []bool
	rtt  []time.Duration // of the answered ones
}

// StartPingStream starts the stream; Stop (also registered as cleanup by
// the caller) ends it.
func StartPingStream(tp *Topology, ns, src, dst string, interval time.Duration) (*PingStream, error) {
	c, err := tp.ListenPacket(ns, "ip4:icmp", src)
	if err != nil {
		return nil, fmt.Errorf("ping stream from %s in %s: %w", src, ns, err)
	}
	p := &PingStream{Interval: interval, c: c, id: uint16(os.Getpid()) ^ uint16(pingID.Add(1)<<8), quit: make(chan struct{})}
	to := &net.IPAddr{IP: net.ParseIP(dst)}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != p.id || from.String() != dst {
				continue
			}
			seq := int(binary.BigEndian.Uint16(buf[6:]))
			p.mu.Lock()
			if seq >= 1 && seq <= len(p.got) && !p.got[seq-1] {
				p.got[seq-1] = true
				p.rtt[seq-1] = time.Since(p.sent[seq-1])
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		msg := make([]byte, 8+56)
		for seq := 1; seq < 65536; seq++ {
			p.mu.Lock()
			p.sent = append(p.sent, time.Now())
			p.got = append(p.got, false)
			p.rtt = append(p.rtt, 0)
			p.mu.Unlock()
			msg[0], msg[2], msg[3] = 8, 0, 0
			binary.BigEndian.PutUint16(msg[4:], p.id)
			binary.BigEndian.PutUint16(msg[6:], uint16(seq))
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
			_, _ = c.WriteTo(msg, to) // no route while a tunnel is down: lost
			select {
			case <-p.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return p, nil
}

// Stop ends the stream.
func (p *PingStream) Stop() {
	p.once.Do(func() { close(p.quit); p.c.Close(); p.wg.Wait() })
}

// PingWindow is what happened to the echo requests sent in a stretch of
// time.
type PingWindow struct {
	Sent, Lost int
	// Outage is the longest run of consecutive unanswered requests times
	// the interval: how long the path was down, to within one interval.
	Outage time.Duration
	// LastAnswered is when the last answered request in the window was sent
	// (zero if none was).
	LastAnswered time.Time
	// MaxRTT is the longest an answered request waited for its answer: a
	// request held up (parked while its SA moved) is late, not lost.
	MaxRTT time.Duration
}

// Down is how long the path was out for the stream's traffic: the longer
// of its longest run of lost requests and its longest round trip (a
// request held while its SA moved, answered late, was an outage too).
func (w PingWindow) Down() time.Duration { return max(w.Outage, w.MaxRTT) }

// Window reports the requests sent in [from, to).
func (p *PingStream) Window(from, to time.Time) PingWindow {
	p.mu.Lock()
	defer p.mu.Unlock()
	var w PingWindow
	run := 0
	for i, at := range p.sent {
		if at.Before(from) || !at.Before(to) {
			continue
		}
		w.Sent++
		if p.got[i] {
			run = 0
			w.LastAnswered = at
			w.MaxRTT = max(w.MaxRTT, p.rtt[i])
			continue
		}
		w.Lost++
		run++
		if d := time.Duration(run) * p.Interval; d > w.Outage {
			w.Outage = d
		}
	}
	return w
}

// AnsweredSince reports whether a request sent at or after t was answered.
func (p *PingStream) AnsweredSince(t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.sent) - 1; i >= 0 && !p.sent[i].Before(t); i-- {
		if p.got[i] {
			return true
		}
	}
	return false
}
