package esp

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"testing"
	"time"
)

// BenchmarkUserspaceESP measures user-space ESP with AES-GCM-256 on one
// core against the raw AEAD cost of the same packets: encrypt is
// Outbound.Seal (header, padding, trailer, sequence number, AAD, in-place
// AEAD) versus cipher.AEAD.Seal of the same ESP plaintext with the same
// AAD; decrypt is a copy of the packet plus Inbound.Open (replay check,
// AEAD open, trailer, window update) versus a copy plus cipher.AEAD.Open.
// The custom metric ratio-to-aead is raw AEAD time / ESP time (1 = free;
// goal ≥ 0.7).
//
//	go test -run '^$' -bench UserspaceESP -benchtime 2s ./concentrator/esp
func BenchmarkUserspaceESP(b *testing.B) {
	cfg := Config{SPI: 0x01020304, EncrID: EncrAESGCM16, KeyBits: 256, EncrKey: keyBytes(36, 5)}
	for _, size := range []int{64, 512, 1400} {
		b.Run(fmt.Sprintf("encrypt/%d", size), func(b *testing.B) { benchEncrypt(b, cfg, size) })
		b.Run(fmt.Sprintf("decrypt/%d", size), func(b *testing.B) { benchDecrypt(b, cfg, size) })
	}
}

func rawGCM(b *testing.B, cfg Config) cipher.AEAD {
	blk, err := aes.NewCipher(cfg.EncrKey[:32])
	if err != nil {
		b.Fatal(err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

func benchEncrypt(b *testing.B, cfg Config, size int) {
	o, err := NewOutbound(cfg)
	if err != nil {
		b.Fatal(err)
	}
	p := innerPacket(size)
	buf := make([]byte, MaxHeadroom+size+MaxTailroom)
	hr := o.Headroom()
	ptLen := size + o.padLen(size) + 2
	g := rawGCM(b, cfg)
	nonce := make([]byte, 12)
	aad := make([]byte, 8)
	rbuf := make([]byte, ptLen+16)
	espOps := func(n int) {
		for range n {
			copy(buf[hr:], p)
			if _, err := o.Seal(buf, hr, size, NextHeaderIPv4); err != nil {
				b.Fatal(err)
			}
		}
	}
	rawOps := func(n int) {
		for i := range n {
			copy(rbuf, p)
			nonce[11] = byte(i)
			g.Seal(rbuf[:0], nonce, rbuf[:ptLen], aad)
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	interleave(b, espOps, rawOps)
}

// interleave runs b.N ESP operations (timed by the benchmark) and b.N raw
// AEAD operations (timed apart) in alternating chunks, so that a noisy
// neighbour slows both alike, and reports raw/ESP as ratio-to-aead.
func interleave(b *testing.B, espOps, rawOps func(n int)) {
	const chunk = 4096
	var esp, raw time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(chunk, b.N-done)
		t0 := time.Now()
		espOps(n)
		esp += time.Since(t0)
		b.StopTimer()
		t0 = time.Now()
		rawOps(n)
		raw += time.Since(t0)
		b.StartTimer()
		done += n
	}
	b.ReportMetric(float64(raw)/float64(esp), "ratio-to-aead")
}

func benchDecrypt(b *testing.B, cfg Config, size int) {
	const ring = 1024
	o, err := NewOutbound(cfg)
	if err != nil {
		b.Fatal(err)
	}
	in, err := NewInbound(cfg)
	if err != nil {
		b.Fatal(err)
	}
	p := innerPacket(size)
	pkts := make([][]byte, ring)
	for i := range pkts {
		if pkts[i], err = o.AppendSeal(nil, p, NextHeaderIPv4); err != nil {
			b.Fatal(err)
		}
	}
	work := make([]byte, len(pkts[0]))
	g := rawGCM(b, cfg)
	hr := o.Headroom()
	nonce := make([]byte, 12)
	copy(nonce, cfg.EncrKey[32:])
	aad := make([]byte, 8)
	next := 0
	espOps := func(n int) {
		for range n {
			if next%ring == 0 && next > 0 {
				// Replay the same packets: forget them (a 32-block clear
				// per 1024 packets).
				in.win = newWindow(DefaultReplayWindow)
			}
			copy(work, pkts[next%ring])
			next++
			if _, _, _, err := in.Open(work); err != nil {
				b.Fatal(err)
			}
		}
	}
	rawOps := func(n int) {
		for i := range n {
			pk := pkts[i%ring]
			copy(work, pk)
			copy(nonce[4:], pk[HeaderLen:hr])
			copy(aad, pk[:8])
			if _, err := g.Open(work[hr:hr], nonce, work[hr:], aad); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	interleave(b, espOps, rawOps)
}
