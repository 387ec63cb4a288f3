package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
)

// Implementation limits of the in-memory network.
const (
	memQueueLen   = 4096  // datagrams waiting per socket before drops
	memFirstEphem = 49152 // ephemeral ports are allocated from here up
)

// ErrAddrInUse is a Listen on an address already bound on the Network.
var ErrAddrInUse = errors.New("transport: address in use")

// Network is an in-memory datagram network. Datagrams go to the socket
// bound to their destination (one of the hosts sharing it, see Host), or
// else to one bound to the unspecified address of the same family and
// the destination's port; datagrams
// nobody is bound to, or that find the receiver's queue full, are
// dropped, as UDP would. Safe for concurrent use.
type Network struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*memConn
	ephem uint16
	// shared: addresses bound by several hosts (Host), by host name.
	shared map[netip.AddrPort]map[string]*memConn
	route  func(from, to netip.AddrPort, hosts []string) string

	// Filter, if set before use, sees every datagram and drops those it
	// returns false for (loss, partitions, captures in tests). It is
	// called concurrently and must not block.
	Filter func(from, to netip.AddrPort, b []byte) bool

	delivered, dropped atomic.Uint64
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{conns: map[netip.AddrPort]*memConn{}, ephem: memFirstEphem,
		shared: map[netip.AddrPort]map[string]*memConn{}}
}

// Host is the transport of one host on the network that binds a shared
// (anycast) address: several hosts may bind the same address and port,
// and SetRoute chooses which of them gets each datagram, as a router
// spreading flows over ECMP next hops would. A host's other addresses
// are bound as on Listen.
func (n *Network) Host(name string) Transport { return hostTransport{n, name} }

// SetRoute sets the choice of host for datagrams to a shared address:
// route gets the datagram's source and destination and the names of the
// hosts bound to the destination (sorted), and returns one of them; any
// other answer drops the datagram. Without a route the first host gets
// it. Safe to call while the network runs (a flow moves to another host
// from its next datagram on); route is called concurrently.
func (n *Network) SetRoute(route func(from, to netip.AddrPort, hosts []string) string) {
	n.mu.Lock()
	n.route = route
	n.mu.Unlock()
}

type hostTransport struct {
	n    *Network
	host string
}

func (h hostTransport) Listen(local netip.AddrPort) (Conn, error) {
	if !local.Addr().IsValid() || local.Port() == 0 {
		return nil, fmt.Errorf("transport: host %s: listen on %v: shared addresses need an address and a port", h.host, local)
	}
	local = unmap(local)
	n := h.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[local] != nil || n.shared[local][h.host] != nil {
		return nil, fmt.Errorf("transport: host %s: listen on %v: %w", h.host, local, ErrAddrInUse)
	}
	c := &memConn{net: n, local: local, host: h.host, q: make(chan datagram, memQueueLen), closed: make(chan struct{})}
	if n.shared[local] == nil {
		n.shared[local] = map[string]*memConn{}
	}
	n.shared[local][h.host] = c
	return c, nil
}

// Listen implements Transport.
func (n *Network) Listen(local netip.AddrPort) (Conn, error) {
	if !local.Addr().IsValid() {
		return nil, fmt.Errorf("transport: listen on %v: no address", local)
	}
	local = unmap(local)
	n.mu.Lock()
	defer n.mu.Unlock()
	if local.Port() == 0 {
		for tries := 0; ; tries++ {
			if tries > 65535-memFirstEphem {
				return nil, fmt.Errorf("transport: listen on %v: no free port", local.Addr())
			}
			p := n.ephem
			if n.ephem++; n.ephem == 0 {
				n.ephem = memFirstEphem
			}
			if a := netip.AddrPortFrom(local.Addr(), p); n.conns[a] == nil {
				local = a
				break
			}
		}
	}
	if n.conns[local] != nil {
		return nil, fmt.Errorf("transport: listen on %v: %w", local, ErrAddrInUse)
	}
	c := &memConn{net: n, local: local, q: make(chan datagram, memQueueLen), closed: make(chan struct{})}
	n.conns[local] = c
	return c, nil
}

// Inject delivers b to the socket bound to `to` as if `from` had sent
// it. It reports whether a socket took it.
func (n *Network) Inject(from, to netip.AddrPort, b []byte) bool {
	return n.deliver(unmap(from), unmap(to), b)
}

// Stats counts datagrams delivered and dropped (no receiver, full queue,
// or Filter) since the network was made.
func (n *Network) Stats() (delivered, dropped uint64) {
	return n.delivered.Load(), n.dropped.Load()
}

// Queued is the number of datagrams delivered but not yet read, on all
// sockets: with Stats, how a test knows the network is quiet.
func (n *Network) Queued() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := 0
	for _, c := range n.conns {
		q += len(c.q)
	}
	return q
}

func (n *Network) deliver(from, to netip.AddrPort, b []byte) bool {
	if f := n.Filter; f != nil && !f(from, to, b) {
		n.dropped.Add(1)
		return false
	}
	n.mu.Lock()
	c := n.conns[to]
	if hosts := n.shared[to]; c == nil && len(hosts) > 0 {
		names := make([]string, 0, len(hosts))
		for h := range hosts {
			names = append(names, h)
		}
		slices.Sort(names)
		pick := names[0]
		if n.route != nil {
			pick = n.route(from, to, names)
		}
		c = hosts[pick]
	}
	if c == nil {
		wild := netip.IPv4Unspecified()
		if to.Addr().Is6() {
			wild = netip.IPv6Unspecified()
		}
		c = n.conns[netip.AddrPortFrom(wild, to.Port())]
	}
	n.mu.Unlock()
	if c == nil {
		n.dropped.Add(1)
		return false
	}
	select {
	case c.q <- datagram{from: from, to: to, b: append([]byte(nil), b...)}:
		n.delivered.Add(1)
		return true
	default:
		n.dropped.Add(1)
		return false
	}
}

type datagram struct {
	from, to netip.AddrPort
	b        []byte
}

type memConn struct {
	net    *Network
	local  netip.AddrPort
	host   string // bound through Host: a shared address
	q      chan datagram
	once   sync.Once
	closed chan struct{}
}

func (c *memConn) ReadFrom(b []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-c.q:
		return copy(b, d.b), d.from, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, fmt.Errorf("transport: read on %v: %w", c.local, net.ErrClosed)
	}
}

// ReadFromTo is ReadFrom that also returns the datagram's destination:
// a socket bound to the unspecified address receives for every address
// nobody bound (one socket can serve many simulated hosts).
func (c *memConn) ReadFromTo(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	select {
	case d := <-c.q:
		return copy(b, d.b), d.from, d.to, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, netip.AddrPort{}, fmt.Errorf("transport: read on %v: %w", c.local, net.ErrClosed)
	}
}

// WriteTo sends from the bound address (a socket bound to the
// unspecified address sends from it: bind specific addresses on a
// Network).
func (c *memConn) WriteTo(b []byte, to netip.AddrPort) error {
	select {
	case <-c.closed:
		return fmt.Errorf("transport: write on %v: %w", c.local, net.ErrClosed)
	default:
	}
	c.net.deliver(c.local, unmap(to), b)
	return nil
}

func (c *memConn) LocalAddr() netip.AddrPort { return c.local }

func (c *memConn) Close() error {
	c.once.Do(func() {
		c.net.mu.Lock()
		if c.net.conns[c.local] == c {
			delete(c.net.conns, c.local)
		}
		if hosts := c.net.shared[c.local]; hosts[c.host] == c {
			if delete(hosts, c.host); len(hosts) == 0 {
				delete(c.net.shared, c.local)
			}
		}
		c.net.mu.Unlock()
		close(c.closed)
	})
	return nil
}
