//go:build linux

package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ESPPacket is one ESP-in-UDP packet seen on the wire.
type ESPPacket struct {
	At       time.Time
	Src, Dst netip.AddrPort
	SPI, Seq uint32
	Raw      []byte // the IPv4 packet
}

// ESPCapture records the ESP-in-UDP packets (UDP port 4500, no non-ESP
// marker) crossing one interface of a namespace: a packet socket, the
// wire's view, independent of both ends.
type ESPCapture struct {
	fd   int
	quit chan struct{} // closed by Stop
	once sync.Once
	done chan struct{} // closed when the reader returns
	mu   sync.Mutex
	pkts []ESPPacket
	err  error
}

// CaptureESP starts capturing on interface dev of namespace ns.
func (tp *Topology) CaptureESP(ns, dev string) (*ESPCapture, error) {
	c := &ESPCapture{fd: -1, quit: make(chan struct{}), done: make(chan struct{})}
	err := InNetns(ns, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		// ETH_P_ALL: packets a device sends reach only such sockets.
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", dev, err)
		}
		// Wake up now and then to notice Stop.
		tv := unix.Timeval{Usec: 100_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", dev, ns, err)
	}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *ESPCapture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		at := time.Now()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				select {
				case <-c.quit:
					return
				default:
					continue
				}
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		select {
		case <-c.quit:
			return
		default:
		}
		// Ethernet header, then IPv4.
		if n < 14 || binary.BigEndian.Uint16(buf[12:]) != unix.ETH_P_IP {
			continue
		}
		if p, ok := parseESPInUDP(buf[14:n]); ok {
			p.At = at
			c.mu.Lock()
			c.pkts = append(c.pkts, p)
			c.mu.Unlock()
		}
	}
}

// parseESPInUDP reads an IPv4 packet carrying ESP in UDP port 4500.
func parseESPInUDP(b []byte) (ESPPacket, bool) {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_UDP {
		return ESPPacket{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < 20 || total > len(b) || total < ihl+8+8 {
		return ESPPacket{}, false
	}
	udp := b[ihl:total]
	sport, dport := binary.BigEndian.Uint16(udp[0:]), binary.BigEndian.Uint16(udp[2:])
	esp := udp[8:]
	if sport != 4500 && dport != 4500 || binary.BigEndian.Uint32(esp) == 0 {
		return ESPPacket{}, false // not NAT-T, or IKE (non-ESP marker)
	}
	src, _ := netip.AddrFromSlice(b[12:16])
	dst, _ := netip.AddrFromSlice(b[16:20])
	return ESPPacket{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport),
		SPI: binary.BigEndian.Uint32(esp), Seq: binary.BigEndian.Uint32(esp[4:]),
		Raw: append([]byte(nil), b[:total]...)}, true
}

// Packets returns what was captured so far.
func (c *ESPCapture) Packets() []ESPPacket {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ESPPacket(nil), c.pkts...)
}

// Stop ends the capture and returns its error, if reading failed.
func (c *ESPCapture) Stop() error {
	c.once.Do(func() {
		close(c.quit)
		<-c.done
		unix.Close(c.fd)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// InjectIPv4 sends the IPv4 packet pkt as it is (header included) from
// namespace ns, routed by its destination.
func (tp *Topology) InjectIPv4(ns string, pkt []byte) error {
	return InNetns(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var dst [4]byte
		copy(dst[:], pkt[16:20])
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst})
	})
}
