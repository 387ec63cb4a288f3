package xfrm

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Socket options of ESP-in-UDP (linux/udp.h).
const (
	solUDP           = unix.SOL_UDP // 17
	udpEncap         = 100          // UDP_ENCAP
	udpEncapESPInUDP = 2            // UDP_ENCAP_ESPINUDP (RFC 3948)
)

// EnableESPInUDP sets UDP_ENCAP_ESPINUDP on the NAT-T socket c (UDP 4500).
// From then on the kernel takes every datagram that does not start with
// the four-byte non-ESP marker (and is not a one-byte NAT-T keepalive) as
// ESP and decapsulates it through the XFRM states; IKE messages (with the
// marker) and keepalives are still delivered to c. Without it, ESP-in-UDP
// for our states reaches the socket as plain UDP and is never decrypted.
func EnableESPInUDP(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), solUDP, udpEncap, udpEncapESPInUDP)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt UDP_ENCAP_ESPINUDP: %w", serr)
	}
	return nil
}
