package xfrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NFQUEUE over nfnetlink (linux/netfilter/nfnetlink_queue.h), only what
// the unknown-SPI path needs: bind a queue, copy the first bytes of each
// packet, accept everything in batches.
const (
	nfnlSubsysQueue = 3 // NFNL_SUBSYS_QUEUE

	nfqnlMsgPacket       = 0 // NFQNL_MSG_PACKET
	nfqnlMsgConfig       = 2 // NFQNL_MSG_CONFIG
	nfqnlMsgVerdictBatch = 4 // NFQNL_MSG_VERDICT_BATCH

	nfqaPacketHdr  = 1  // NFQA_PACKET_HDR: be32 id, be16 hw_protocol, u8 hook
	nfqaVerdictHdr = 2  // NFQA_VERDICT_HDR: be32 verdict, be32 id
	nfqaPayload    = 10 // NFQA_PAYLOAD

	nfqaCfgCmd         = 1 // NFQA_CFG_CMD: u8 command, u8 pad, be16 pf
	nfqaCfgParams      = 2 // NFQA_CFG_PARAMS: be32 copy_range, u8 copy_mode
	nfqaCfgQueueMaxlen = 3 // NFQA_CFG_QUEUE_MAXLEN: be32
	nfqaCfgMask        = 4 // NFQA_CFG_MASK: be32
	nfqaCfgFlags       = 5 // NFQA_CFG_FLAGS: be32

	nfqnlCfgCmdBind   = 1 // NFQNL_CFG_CMD_BIND
	nfqnlCopyPacket   = 2 // NFQNL_COPY_PACKET
	nfqaCfgFFailOpen  = 1 // NFQA_CFG_F_FAIL_OPEN: accept when the queue is full
	nfAccept          = 1 // NF_ACCEPT
	nfqCopyRange      = 80
	nfqQueueMaxLen    = 4096
	nfqRecvBufferSize = 1 << 20
)

// nfQueue reads one NFQUEUE: every packet's SPI goes to the function set
// with onSPI, every packet is accepted.
type nfQueue struct {
	sock *nl.NetlinkSocket
	num  uint16
	on   atomic.Pointer[func(uint32)]
	stop atomic.Bool
	done chan struct{}
	// Counters: packets seen, reported, not ESP-in-UDP, receive errors;
	// the reader's returns from its receive (packets or the timeout).
	packets, reported, malformed, recvErrors, wakeups atomic.Uint64
}

// openNFQueue binds queue num in namespace ns (fail-open: a full queue
// accepts) and starts reading it.
func openNFQueue(ns netns.NsHandle, num uint16) (*nfQueue, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nfqueue: netlink socket: %w", err)
	}
	q := &nfQueue{sock: s, num: num, done: make(chan struct{})}
	fd := s.GetFd()
	// The library opens its sockets non-blocking (for Go's poller); the
	// reader blocks in recvfrom instead, until a packet or the timeout
	// below. Non-blocking, it spun: a whole core, from start to stop.
	if err := unix.SetNonblock(fd, false); err != nil {
		s.Close()
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, nfqRecvBufferSize)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	// Receives wake up twice a second to see whether to stop.
	tv := unix.Timeval{Usec: 500000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		s.Close()
		return nil, err
	}
	for _, m := range nfqBindMessages(num) {
		if err := q.request(m); err != nil {
			s.Close()
			return nil, fmt.Errorf("nfqueue %d: bind: %w", num, err)
		}
	}
	go q.run()
	return q, nil
}

// nfqMessage is one nfnetlink message of the queue subsystem: header,
// nfgenmsg (family unspec, version 0, queue number) and attributes.
func nfqMessage(typ, flags uint16, seq uint32, queue uint16, attrs ...[]byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4, 64)
	b[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	binary.BigEndian.PutUint16(b[unix.NLMSG_HDRLEN+2:], queue)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return b
}

// nfqAttr is one netlink attribute (host-order header, data as given,
// padded to four bytes).
func nfqAttr(typ uint16, data ...byte) []byte {
	n := unix.NLA_HDRLEN + len(data)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.NLA_HDRLEN:], data)
	return b
}

// nfqBindMessages bind queue num (sequence numbers 1, 2): the command,
// then copy mode (the first nfqCopyRange bytes of each packet: enough for
// the IP, UDP and ESP headers), queue length and fail-open.
func nfqBindMessages(num uint16) [][]byte {
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	ack := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
	return [][]byte{
		nfqMessage(nfqnlMsgConfig, ack, 1, num, nfqAttr(nfqaCfgCmd, nfqnlCfgCmdBind, 0, 0, 0)),
		nfqMessage(nfqnlMsgConfig, ack, 2, num,
			nfqAttr(nfqaCfgParams, append(be32(nfqCopyRange), nfqnlCopyPacket)...),
			nfqAttr(nfqaCfgQueueMaxlen, be32(nfqQueueMaxLen)...),
			nfqAttr(nfqaCfgMask, be32(nfqaCfgFFailOpen)...),
			nfqAttr(nfqaCfgFlags, be32(nfqaCfgFFailOpen)...)),
	}
}

// nfqVerdictBatch accepts every queued packet with an id up to id.
func nfqVerdictBatch(queue uint16, id uint32) []byte {
	return nfqMessage(nfqnlMsgVerdictBatch, unix.NLM_F_REQUEST, 0, queue,
		nfqAttr(nfqaVerdictHdr, binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, nfAccept), id)...))
}

// request sends m and waits for its acknowledgement.
func (q *nfQueue) request(m []byte) error {
	if err := unix.Sendto(q.sock.GetFd(), m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	seq := binary.NativeEndian.Uint32(m[8:])
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(q.sock.GetFd(), buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, r := range msgs {
			if r.Header.Type != unix.NLMSG_ERROR || r.Header.Seq != seq || len(r.Data) < 4 {
				continue
			}
			if e := int32(binary.NativeEndian.Uint32(r.Data)); e != 0 {
				return unix.Errno(-e)
			}
			return nil
		}
	}
}

func (q *nfQueue) onSPI(f func(uint32)) { q.on.Store(&f) }

func (q *nfQueue) run() {
	defer close(q.done)
	buf := make([]byte, 1<<16)
	fd := q.sock.GetFd()
	for !q.stop.Load() {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		q.wakeups.Add(1)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				q.recvErrors.Add(1)
				continue
			}
			if q.stop.Load() {
				return
			}
			q.recvErrors.Add(1)
			continue
		}
		last, got := q.handle(buf[:n])
		if got {
			_ = unix.Sendto(fd, nfqVerdictBatch(q.num, last), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		}
	}
}

// handle reports the SPIs of the queued packets in b and returns the
// highest packet id (ids grow; one batch verdict accepts them all).
func (q *nfQueue) handle(b []byte) (last uint32, got bool) {
	f := q.on.Load()
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return last, got
		}
		m := b[:l]
		b = b[min((l+3)&^3, len(b)):]
		if binary.NativeEndian.Uint16(m[4:]) != nfnlSubsysQueue<<8|nfqnlMsgPacket {
			continue
		}
		id, payload, ok := parseNFQPacket(m[unix.NLMSG_HDRLEN:])
		if !ok {
			q.malformed.Add(1)
			continue
		}
		q.packets.Add(1)
		if !got || id > last {
			last = id
		}
		got = true
		spi, ok := espInUDPSPI(payload)
		if !ok {
			q.malformed.Add(1)
			continue
		}
		if f != nil {
			q.reported.Add(1)
			(*f)(spi)
		}
	}
	return last, got
}

// parseNFQPacket reads a NFQNL_MSG_PACKET's body (after the netlink
// header): the packet id and the copied packet.
func parseNFQPacket(b []byte) (id uint32, payload []byte, ok bool) {
	if len(b) < 4 {
		return 0, nil, false
	}
	b = b[4:] // nfgenmsg
	var haveID bool
	for len(b) >= unix.NLA_HDRLEN {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.NLA_HDRLEN || l > len(b) {
			return 0, nil, false
		}
		data := b[unix.NLA_HDRLEN:l]
		switch typ {
		case nfqaPacketHdr:
			if len(data) < 4 {
				return 0, nil, false
			}
			id, haveID = binary.BigEndian.Uint32(data), true
		case nfqaPayload:
			payload = data
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return id, payload, haveID
}

// espInUDPSPI returns the SPI of an IPv4 or IPv6 packet carrying
// ESP-in-UDP (RFC 3948: a non-zero first word after the UDP header).
func espInUDPSPI(p []byte) (uint32, bool) {
	if len(p) < 1 {
		return 0, false
	}
	var udp int
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 || p[9] != unix.IPPROTO_UDP {
			return 0, false
		}
		udp = int(p[0]&0x0f) * 4
		if udp < 20 {
			return 0, false
		}
	case 6:
		if len(p) < 40 || p[6] != unix.IPPROTO_UDP {
			return 0, false
		}
		udp = 40
	default:
		return 0, false
	}
	if len(p) < udp+16 { // UDP header, ESP SPI and sequence number
		return 0, false
	}
	spi := binary.BigEndian.Uint32(p[udp+8:])
	return spi, spi != 0
}

// close stops the reader and closes the socket (the kernel unbinds the
// queue; with the rule's bypass, packets pass again).
func (q *nfQueue) close() {
	if q.stop.Swap(true) {
		return
	}
	<-q.done
	q.sock.Close()
}
