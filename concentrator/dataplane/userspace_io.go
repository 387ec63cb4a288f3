package dataplane

import "net/netip"

// ESPHandler is implemented by data planes that carry ESP in user space.
// The node hands them every ESP-in-UDP datagram that arrives on a NAT-T
// socket (RFC 3948: neither a non-ESP marker nor a keepalive) instead of
// dropping it. pkt starts with the SPI and is valid only during the call;
// HandleESP must not block.
type ESPHandler interface {
	HandleESP(pkt []byte, local, remote netip.AddrPort)
}

// UDPSender sends one datagram from the node's socket bound to local (the
// NAT-T socket for ESP), so that ESP and IKE share the peer's 5-tuple
// through its NAT.
type UDPSender interface {
	SendUDP(b []byte, local, remote netip.AddrPort) error
}

// SenderUser is implemented by data planes that send through the node's
// sockets; the node calls SetSender once, at construction.
type SenderUser interface {
	SetSender(UDPSender)
}
