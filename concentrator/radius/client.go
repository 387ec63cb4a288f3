package radius

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Server is one RADIUS authentication server.
type Server struct {
	Address string // host:port (1812)
	Secret  []byte
}

// Config configures a Client.
type Config struct {
	Servers []Server      // tried in order; the client stays on one that answers
	Timeout time.Duration // per attempt; 0 = 2 s
	Retries int           // attempts per server; 0 = 3
	// NASIdentifier names this node to the server (attribute 32).
	NASIdentifier string
}

// ErrNoAnswer: no server answered.
var ErrNoAnswer = errors.New("radius: no server answered")

// Client sends Access-Requests. It is safe for concurrent use; each
// server's socket carries at most 256 requests at a time (the identifier
// space), more wait.
type Client struct {
	cfg    Config
	conns  []*serverConn
	active atomic.Int32 // the server tried first
	closed chan struct{}
	wg     sync.WaitGroup

	Sent, Retransmitted, Timeouts, BadResponses atomic.Uint64
}

type serverConn struct {
	srv   Server
	conn  net.Conn
	slots chan struct{}
	mu    sync.Mutex
	wait  map[byte]chan []byte
	next  byte
}

// New dials the servers (UDP: nothing is sent until a request).
func New(cfg Config) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("radius: no servers")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 3
	}
	c := &Client{cfg: cfg, closed: make(chan struct{})}
	for _, s := range cfg.Servers {
		if len(s.Secret) == 0 {
			c.Close()
			return nil, fmt.Errorf("radius: server %s without a shared secret", s.Address)
		}
		conn, err := net.Dial("udp", s.Address)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("radius: server %s: %w", s.Address, err)
		}
		sc := &serverConn{srv: s, conn: conn, slots: make(chan struct{}, 256), wait: make(map[byte]chan []byte)}
		c.conns = append(c.conns, sc)
		c.wg.Add(1)
		go c.read(sc)
	}
	return c, nil
}

// Close stops the client; requests in flight fail.
func (c *Client) Close() {
	select {
	case <-c.closed:
		return
	default:
	}
	close(c.closed)
	for _, sc := range c.conns {
		sc.conn.Close()
	}
	c.wg.Wait()
}

func (c *Client) read(sc *serverConn) {
	defer c.wg.Done()
	buf := make([]byte, maxLen)
	for {
		n, err := sc.conn.Read(buf)
		if err != nil {
			select {
			case <-c.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// ICMP port unreachable surfaces as a read error on a
			// connected UDP socket: the request times out.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if n < headerLen {
			c.BadResponses.Add(1)
			continue
		}
		sc.mu.Lock()
		ch := sc.wait[buf[1]]
		sc.mu.Unlock()
		if ch == nil {
			c.BadResponses.Add(1)
			continue
		}
		select {
		case ch <- append([]byte(nil), buf[:n]...):
		default:
		}
	}
}

// Response is a verified answer to a request.
type Response struct {
	*Packet
	Secret  []byte   // of the server that answered
	ReqAuth [16]byte // the request's authenticator (for MSK decryption)
}

// Exchange sends an Access-Request (p's Code, Attrs; the identifier,
// authenticators and Message-Authenticator are the client's) and returns
// the verified answer.
func (c *Client) Exchange(ctx context.Context, p *Packet) (*Response, error) {
	first := int(c.active.Load())
	var last error = ErrNoAnswer
	for i := range c.conns {
		k := (first + i) % len(c.conns)
		r, err := c.exchange(ctx, c.conns[k], p)
		if err == nil {
			if k != first {
				c.active.Store(int32(k))
			}
			return r, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		last = err
	}
	return nil, last
}

func (c *Client) exchange(ctx context.Context, sc *serverConn, p *Packet) (*Response, error) {
	select {
	case sc.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.closed:
		return nil, net.ErrClosed
	}
	defer func() { <-sc.slots }()
	ch := make(chan []byte, 4)
	sc.mu.Lock()
	var id byte
	for {
		id = sc.next
		sc.next++
		if sc.wait[id] == nil {
			break
		}
	}
	sc.wait[id] = ch
	sc.mu.Unlock()
	defer func() {
		sc.mu.Lock()
		delete(sc.wait, id)
		sc.mu.Unlock()
	}()

	q := *p
	q.Identifier = id
	if _, err := rand.Read(q.Authenticator[:]); err != nil {
		return nil, err
	}
	b, err := q.EncodeRequest(sc.srv.Secret)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(c.cfg.Timeout)
	defer t.Stop()
	for attempt := 0; attempt < c.cfg.Retries; attempt++ {
		if attempt > 0 {
			c.Retransmitted.Add(1)
		}
		c.Sent.Add(1)
		if _, err := sc.conn.Write(b); err != nil && attempt == c.cfg.Retries-1 {
			return nil, fmt.Errorf("radius: %s: %w", sc.srv.Address, err)
		}
		t.Reset(c.cfg.Timeout)
	wait:
		for {
			select {
			case raw := <-ch:
				if err := VerifyResponse(raw, q.Authenticator, sc.srv.Secret); err != nil {
					c.BadResponses.Add(1)
					continue // forged or stale: keep waiting
				}
				resp, err := Parse(raw)
				if err != nil {
					c.BadResponses.Add(1)
					continue
				}
				return &Response{Packet: resp, Secret: sc.srv.Secret, ReqAuth: q.Authenticator}, nil
			case <-t.C:
				c.Timeouts.Add(1)
				break wait
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-c.closed:
				return nil, net.ErrClosed
			}
		}
	}
	return nil, fmt.Errorf("radius: %s: no answer after %d attempts", sc.srv.Address, c.cfg.Retries)
}

// Session is one EAP conversation relayed to the server.
type Session struct {
	User             string // User-Name: the peer's identity
	CallingStationID string // the peer's address
	CalledStationID  string // ours
	NASPort          uint32
	state            []byte // State of the last Access-Challenge
}

// EAPResult is the server's verdict on one EAP message.
type EAPResult struct {
	Code   byte   // CodeAccessChallenge, CodeAccessAccept or CodeAccessReject
	EAP    []byte // the EAP packet for the peer (request, success, failure)
	MSK    []byte // Access-Accept: the method's key, if the server sent one
	Reason string // Reply-Message, if any
}

// EAP relays one EAP message of session s.
func (c *Client) EAP(ctx context.Context, s *Session, eap []byte) (EAPResult, error) {
	p := &Packet{Code: CodeAccessRequest}
	p.Add(AttrUserName, []byte(s.User))
	if c.cfg.NASIdentifier != "" {
		p.Add(AttrNASIdentifier, []byte(c.cfg.NASIdentifier))
	}
	p.Add(AttrServiceType, binary.BigEndian.AppendUint32(nil, 2)) // Framed
	p.Add(AttrNASPortType, binary.BigEndian.AppendUint32(nil, 5)) // Virtual
	p.Add(AttrNASPort, binary.BigEndian.AppendUint32(nil, s.NASPort))
	if s.CallingStationID != "" {
		p.Add(AttrCallingStationID, []byte(s.CallingStationID))
	}
	if s.CalledStationID != "" {
		p.Add(AttrCalledStationID, []byte(s.CalledStationID))
	}
	if s.state != nil {
		p.Add(AttrState, s.state)
	}
	p.AddEAPMessage(eap)
	r, err := c.Exchange(ctx, p)
	if err != nil {
		return EAPResult{}, err
	}
	res := EAPResult{Code: r.Code, EAP: r.EAPMessage(), Reason: string(r.Get(AttrReplyMessage))}
	switch r.Code {
	case CodeAccessChallenge:
		s.state = r.Get(AttrState)
		if len(res.EAP) == 0 {
			return res, errors.New("radius: Access-Challenge without EAP-Message")
		}
	case CodeAccessAccept:
		s.state = nil
		if res.MSK, err = r.MSK(r.Secret, r.ReqAuth); err != nil {
			return res, err
		}
	case CodeAccessReject:
		s.state = nil
	default:
		return res, fmt.Errorf("radius: unexpected code %d", r.Code)
	}
	return res, nil
}

// IdentityResponse is the EAP-Response/Identity that starts a
// conversation for identity (RFC 3748 §5.1).
func IdentityResponse(identity []byte) []byte {
	m := []byte{2, 0, 0, 0, 1}
	m = append(m, identity...)
	binary.BigEndian.PutUint16(m[2:4], uint16(len(m)))
	return m
}
