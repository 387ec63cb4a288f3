package loadtest

import (
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// spoofBatch is how many forged datagrams go out in one sendmmsg.
const spoofBatch = 64

// spoofer sends UDP datagrams with forged IPv4 source addresses through a
// send-only raw socket (IPPROTO_RAW: the header is ours; CAP_NET_RAW),
// each from a random address of a prefix and a random port, batched.
type spoofer struct {
	c      net.PacketConn
	pc     *ipv4.PacketConn
	from   netip.Prefix
	r      *mrand.Rand
	bufs   [spoofBatch][]byte
	msgs   []ipv4.Message
	init   [spoofBatch]bool
	queued int
}

func newSpoofer(from netip.Prefix, r *mrand.Rand) (*spoofer, error) {
	if !from.Addr().Is4() {
		return nil, fmt.Errorf("%w: spoofed sources must be an IPv4 prefix, not %v", ErrFloodOptions, from)
	}
	c, err := net.ListenPacket("ip4:255", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("loadtest: raw socket for spoofed sources (needs CAP_NET_RAW): %w", err)
	}
	s := &spoofer{c: c, pc: ipv4.NewPacketConn(c), from: from.Masked(), r: r, msgs: make([]ipv4.Message, spoofBatch)}
	for i := range s.bufs {
		s.bufs[i] = make([]byte, 0, 20+8+1500)
	}
	return s, nil
}

// source is a random address of the prefix (never its first or last) and
// a random port above 1023.
func (s *spoofer) source() (netip.Addr, uint16) {
	a := s.from.Addr().As4()
	base := binary.BigEndian.Uint32(a[:])
	host := uint32(0)
	if bits := 32 - s.from.Bits(); bits > 1 {
		host = 1 + s.r.Uint32N(uint32(uint64(1)<<bits-2))
	}
	binary.BigEndian.PutUint32(a[:], base|host)
	return netip.AddrFrom4(a), uint16(1024 + s.r.IntN(65536-1024))
}

// add queues payload for to from a forged source (init says whether it is
// an IKE_SA_INIT request, for the counts) and sends the batch when it is
// full (see flush).
func (s *spoofer) add(payload []byte, to netip.AddrPort, init bool) spoofCounts {
	src, sport := s.source()
	b := s.bufs[s.queued][:20+8+len(payload)]
	udpPacket(b, src, sport, to, payload)
	m := &s.msgs[s.queued]
	m.Buffers = [][]byte{b}
	m.Addr = &net.IPAddr{IP: to.Addr().AsSlice()}
	s.init[s.queued] = init
	if s.queued++; s.queued == spoofBatch {
		return s.flush()
	}
	return spoofCounts{}
}

// spoofCounts are the datagrams a flush sent, by kind, and those the
// kernel refused.
type spoofCounts struct{ inits, bad, failed uint64 }

// flush sends what is queued: a datagram the kernel refuses is skipped and
// counted as failed, the rest still go.
func (s *spoofer) flush() (c spoofCounts) {
	for i := 0; i < s.queued; {
		n, err := s.pc.WriteBatch(s.msgs[i:s.queued], 0)
		n = max(n, 0)
		for _, init := range s.init[i : i+n] {
			if init {
				c.inits++
			} else {
				c.bad++
			}
		}
		i += n
		if i < s.queued && (err != nil || n == 0) {
			c.failed++
			i++
		}
	}
	s.queued = 0
	return c
}

func (s *spoofer) close() { s.c.Close() }

// udpPacket writes an IPv4 header (the kernel fills in the total length,
// the ID and the header checksum) and a UDP header with its checksum
// before payload, into b (len 28+len(payload)).
func udpPacket(b []byte, src netip.Addr, sport uint16, dst netip.AddrPort, payload []byte) {
	s4, d4 := src.As4(), dst.Addr().As4()
	b[0], b[1] = 0x45, 0
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint32(b[4:], 0) // ID (kernel), no fragment flags
	b[8], b[9] = 64, 17
	binary.BigEndian.PutUint16(b[10:], 0)
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	binary.BigEndian.PutUint16(u[6:], 0)
	copy(u[8:], payload)
	// The checksum over the pseudo header and the UDP datagram.
	sum := uint32(17) + uint32(8+len(payload))
	for i := 0; i < 4; i += 2 {
		sum += uint32(s4[i])<<8 | uint32(s4[i+1])
		sum += uint32(d4[i])<<8 | uint32(d4[i+1])
	}
	for i := 0; i+1 < len(u); i += 2 {
		sum += uint32(u[i])<<8 | uint32(u[i+1])
	}
	if len(u)%2 == 1 {
		sum += uint32(u[len(u)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff // 0 means "no checksum"
	}
	binary.BigEndian.PutUint16(u[6:], c)
}
