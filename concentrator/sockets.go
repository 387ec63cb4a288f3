package concentrator

// The UDP socket loops: IKE on port 500 and 4500 (with the non-ESP marker),
// NAT-T keepalives, and user-space ESP handed to the data plane.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
)

// Implementation limits of the socket loop.
const (
	shardQueueLen = 4096  // packets waiting per shard before we drop
	maxDatagram   = 65535 // UDP payload
	spiShardShift = 44    // IKE SPI bits 44..51 name the shard
	spiShardMask  = uint64(0xff) << spiShardShift
)

// socketConfigurer is implemented by data planes that need to prepare the
// node's UDP sockets (xfrm: UDP_ENCAP_ESPINUDP on the NAT-T socket).
type socketConfigurer interface {
	ConfigureSocket(c *net.UDPConn, natt bool) error
}

func (n *Node) readLoop(c transport.Conn) {
	local := c.LocalAddr()
	n.mu.Lock()
	natt := n.natt[local]
	n.mu.Unlock()
	espIn, _ := n.dp.(dataplane.ESPHandler)
	buf := make([]byte, maxDatagram)
	for {
		nb, remote, err := c.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("read failed", "local", local.String(), "err", err)
			continue
		}
		b := buf[:nb]
		if natt {
			switch {
			case nb == 1 && b[0] == 0xff:
				n.keepalives.Add(1) // NAT-T keepalive (RFC 3948 §2.3)
				continue
			case nb >= 4 && binary.BigEndian.Uint32(b) == 0:
				b = b[4:] // non-ESP marker: IKE
			case espIn != nil:
				espIn.HandleESP(b, local, remote) // user-space ESP
				continue
			default:
				n.nonIKEDrops.Add(1) // ESP: the data plane's, not ours
				continue
			}
		}
		if n.ops.draining.Load() && n.refuseInit(c, natt, b, netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())) {
			continue // draining: no new IKE SAs (ops.go)
		}
		s := n.shardFor(b)
		if s == nil {
			n.nonIKEDrops.Add(1)
			continue
		}
		pkt := ike.Packet{Local: local, Remote: remote, Data: append([]byte(nil), b...)}
		select {
		case s.in <- pkt:
		default:
			n.countQueueDrop(local, natt, s)
		}
	}
}

// shardFor routes a message to the shard owning its SA: by our SPI's shard
// bits, or for a new IKE_SA_INIT by a hash of the initiator's SPI.
func (n *Node) shardFor(b []byte) *shard {
	if len(b) < 28 {
		return nil
	}
	spii := binary.BigEndian.Uint64(b[0:])
	spir := binary.BigEndian.Uint64(b[8:])
	fromInitiator := b[19]&ike.FlagInitiator != 0
	var idx uint64
	switch {
	case fromInitiator && spir == 0:
		idx = maphash.Comparable(n.seed, spii) % uint64(len(n.shards))
	case fromInitiator:
		idx = (spir & spiShardMask) >> spiShardShift
	default:
		idx = (spii & spiShardMask) >> spiShardShift
	}
	return n.shards[idx%uint64(len(n.shards))] // as shardOfSPI
}

// conn returns the socket bound to local, or to its port on the wildcard
// address, and whether it is a NAT-T socket.
func (n *Node) conn(local netip.AddrPort) (transport.Conn, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, natt := n.conns[local], n.natt[local]
	if c == nil {
		// Bound to the wildcard address: find the socket by port.
		for addr, conn := range n.conns {
			if addr.Port() == local.Port() && addr.Addr().IsUnspecified() {
				c, natt = conn, n.natt[addr]
				break
			}
		}
	}
	return c, natt
}

// SendUDP sends b as is from the socket bound to local: the data plane's
// user-space ESP (dataplane.UDPSender).
func (n *Node) SendUDP(b []byte, local, remote netip.AddrPort) error {
	c, _ := n.conn(local)
	if c == nil {
		return fmt.Errorf("no socket bound to %s", local)
	}
	return c.WriteTo(b, remote)
}

// sendKeepalive sends a NAT-T keepalive: one 0xFF octet, no marker.
func (n *Node) sendKeepalive(a ike.Send) {
	if c, _ := n.conn(a.Local); c != nil {
		if err := c.WriteTo([]byte{0xff}, a.Remote); err != nil {
			n.log.Debug("keepalive failed", "remote", a.Remote.String(), "err", err)
		} else {
			n.obs.keepalivesSent.Add(1)
		}
	}
}

func (n *Node) send(a ike.Send) {
	if n.persist != nil && !n.persist.store.CanSend() {
		// Fenced: our lease may have lapsed and another node may own
		// these SAs now; stay silent until re-registered.
		n.fencedDrops.Add(1)
		return
	}
	c, natt := n.conn(a.Local)
	if c == nil {
		n.log.Warn("no socket to send from", "local", a.Local.String(), "remote", a.Remote.String())
		return
	}
	for _, m := range a.Messages {
		if natt {
			m = append([]byte{0, 0, 0, 0}, m...)
		}
		if err := c.WriteTo(m, a.Remote); err != nil {
			n.log.Warn("send failed", "local", a.Local.String(), "remote", a.Remote.String(), "err", err)
		}
	}
}
