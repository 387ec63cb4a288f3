package xfrm

import (
	"cmp"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// A CHILD SA's install is one netlink datagram: its two states and its
// policies, each a message of its own (rawXfrm.batch); so is its removal
// (the reads of its states' last counters, then the deletes of its
// policies and states). The netlink library sends one request per system
// call and reads its answer with another (and asks for the socket's port
// ID with a third), so an SA of two states and three policies cost
// fifteen system calls to install and thirty to remove; batched, two and
// four (a send, and a receive for each get's reply, a datagram of its
// own, and for the batch's end). The removal reads no policy: the data
// plane knows which of an SA's policies a successor took (entry.lost).
// A successor (a CHILD rekey with the same selectors) takes its
// predecessor's policies over in two more: their reads, then their
// updates (takePolicies).

// stateRequest is st's XFRM_MSG_NEWSA (stateAddMessage) as a request.
func stateRequest(st *netlink.XfrmState, rp Replay, maxDiff uint32, inbound bool) (*nl.NetlinkRequest, error) {
	msg, attrs, err := stateAddMessage(st, rp, maxDiff, inbound)
	if err != nil {
		return nil, err
	}
	req := nl.NewNetlinkRequest(nl.XFRM_MSG_NEWSA, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req, nil
}

// policySel fills sel with p's selector.
func policySel(sel *nl.XfrmSelector, p *netlink.XfrmPolicy) {
	sel.Family = uint16(nl.FAMILY_V4)
	if p.Dst != nil {
		sel.Family = uint16(nl.GetIPFamily(p.Dst.IP))
		sel.Daddr.FromIP(p.Dst.IP)
		n, _ := p.Dst.Mask.Size()
		sel.PrefixlenD = uint8(n)
	}
	if p.Src != nil {
		sel.Saddr.FromIP(p.Src.IP)
		n, _ := p.Src.Mask.Size()
		sel.PrefixlenS = uint8(n)
	}
	sel.Proto = uint8(p.Proto)
	sel.Dport = nl.Swap16(uint16(p.DstPort))
	sel.Sport = nl.Swap16(uint16(p.SrcPort))
	if sel.Dport != 0 {
		sel.DportMask = ^uint16(0)
	}
	if sel.Sport != 0 {
		sel.SportMask = ^uint16(0)
	}
	sel.Ifindex = int32(p.Ifindex)
}

// addMarkIfid adds XFRMA_MARK (as the library writes it: a mask of 0
// means all ones) and XFRMA_IF_ID to req, those of them that are set.
func addMarkIfid(req *nl.NetlinkRequest, m *netlink.XfrmMark, ifid int) {
	if m != nil {
		mk := &nl.XfrmMark{Value: m.Value, Mask: m.Mask}
		if mk.Mask == 0 {
			mk.Mask = ^uint32(0)
		}
		req.AddData(nl.NewRtAttr(nl.XFRMA_MARK, mk.Serialize()))
	}
	if ifid != 0 {
		req.AddData(nl.NewRtAttr(nl.XFRMA_IF_ID, nl.Uint32Attr(uint32(ifid))))
	}
}

// policyRequest is p's XFRM_MSG_NEWPOLICY (create, not replace), built as
// the netlink library's XfrmPolicyAdd builds it.
func policyRequest(p *netlink.XfrmPolicy) *nl.NetlinkRequest {
	return policyRequestOf(nl.XFRM_MSG_NEWPOLICY, p)
}

// policyRequestOf is p's XFRM_MSG_NEWPOLICY or XFRM_MSG_UPDPOLICY (create
// or replace; the kernel takes the message type for which, not the
// flags), as XfrmPolicyAdd and XfrmPolicyUpdate build them.
func policyRequestOf(typ int, p *netlink.XfrmPolicy) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	msg := &nl.XfrmUserpolicyInfo{}
	policySel(&msg.Sel, p)
	msg.Priority = uint32(p.Priority)
	msg.Index = uint32(p.Index)
	msg.Dir = uint8(p.Dir)
	msg.Action = uint8(p.Action)
	msg.Lft.SoftByteLimit = nl.XFRM_INF
	msg.Lft.HardByteLimit = nl.XFRM_INF
	msg.Lft.SoftPacketLimit = nl.XFRM_INF
	msg.Lft.HardPacketLimit = nl.XFRM_INF
	req.AddData(msg)
	if len(p.Tmpls) > 0 {
		b := make([]byte, nl.SizeofXfrmUserTmpl*len(p.Tmpls))
		for i, t := range p.Tmpls {
			u := nl.DeserializeXfrmUserTmpl(b[i*nl.SizeofXfrmUserTmpl : (i+1)*nl.SizeofXfrmUserTmpl])
			u.XfrmId.Daddr.FromIP(t.Dst)
			u.Saddr.FromIP(t.Src)
			u.Family = uint16(nl.GetIPFamily(t.Dst))
			u.XfrmId.Proto = uint8(t.Proto)
			u.XfrmId.Spi = nl.Swap32(uint32(t.Spi))
			u.Mode = uint8(t.Mode)
			u.Reqid = uint32(t.Reqid)
			u.Optional = uint8(t.Optional)
			u.Aalgos, u.Ealgos, u.Calgos = ^uint32(0), ^uint32(0), ^uint32(0)
		}
		req.AddData(nl.NewRtAttr(nl.XFRMA_TMPL, b))
	}
	addMarkIfid(req, p.Mark, p.Ifid)
	return req
}

// policyIDRequest is p's XFRM_MSG_GETPOLICY or XFRM_MSG_DELPOLICY (by
// selector and direction), as the netlink library builds it.
func policyIDRequest(typ int, p *netlink.XfrmPolicy) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, 0)
	msg := &nl.XfrmUserpolicyId{}
	policySel(&msg.Sel, p)
	msg.Index = uint32(p.Index)
	msg.Dir = uint8(p.Dir)
	req.AddData(msg)
	addMarkIfid(req, p.Mark, p.Ifid)
	return req
}

// stateIDRequest is st's XFRM_MSG_GETSA or XFRM_MSG_DELSA (by destination,
// protocol, SPI and source), as the netlink library builds it.
func stateIDRequest(typ int, st *netlink.XfrmState) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, 0)
	msg := &nl.XfrmUsersaId{}
	msg.Family = uint16(nl.GetIPFamily(st.Dst))
	msg.Daddr.FromIP(st.Dst)
	msg.Proto = uint8(st.Proto)
	msg.Spi = nl.Swap32(uint32(st.Spi))
	req.AddData(msg)
	if st.Src != nil {
		req.AddData(nl.NewRtAttr(nl.XFRMA_SRCADDR, st.Src.To16()))
	}
	addMarkIfid(req, st.Mark, st.Ifid)
	return req
}

// answer is the kernel's answer to one request of a batch.
type answer struct {
	data []byte // a get's reply (its message's body); nil for other requests
	err  error  // nil: done
}

// drain reads what is left in the socket (under its lock).
func (r *rawXfrm) drain() {
	for {
		_, _, err := unix.Recvfrom(r.sh.Socket.GetFd(), r.rbuf, 0)
		if err != nil && err != unix.EINTR && err != unix.ENOBUFS {
			return
		}
	}
}

// errNoAnswer: the kernel's answer to a batch was not in the socket after
// the send (lost: the socket's receive buffer was full); what the batch
// did is unknown.
var errNoAnswer = errors.New("xfrm: no answer to a netlink batch")

// maxBatch is the most requests in one datagram. The kernel queues its
// answers (a get's reply, a failure) in the socket before the send
// returns, each a datagram of its own taking 1-2 KiB of the socket's
// receive buffer (about 208 KiB by default); what it cannot queue is lost
// and the next read fails with ENOBUFS (1,000 gets in one datagram: none
// answered). A datagram beyond the send buffer is refused (EMSGSIZE);
// 32 requests of a few hundred bytes are far from either.
const maxBatch = 32

// batch sends reqs in datagrams of up to maxBatch requests and returns
// each one's answer. Only the last of a datagram asks for an
// acknowledgement: the kernel handles a datagram's messages in order,
// each whatever became of the one before, before the send returns, and
// answers a get or a failed request whether or not it asked; so the
// others' answers arrive before the last one's.
func (r *rawXfrm) batch(reqs []*nl.NetlinkRequest) []answer {
	ans := make([]answer, len(reqs))
	for i := 0; i < len(reqs); i += maxBatch {
		j := min(i+maxBatch, len(reqs))
		r.datagram(reqs[i:j], ans[i:j])
	}
	return ans
}

// datagram sends reqs (at most maxBatch) in one datagram and fills ans
// with their answers.
func (r *rawXfrm) datagram(reqs []*nl.NetlinkRequest, ans []answer) {
	fail := func(err error) {
		for i := range ans {
			if ans[i].err == nil && ans[i].data == nil {
				ans[i].err = err
			}
		}
	}
	s := r.sh.Socket
	s.Lock()
	defer s.Unlock()
	first := atomic.AddUint32(&r.sh.Seq, uint32(len(reqs))) - uint32(len(reqs)) + 1
	var buf []byte
	for i, req := range reqs {
		req.Flags &^= unix.NLM_F_ACK
		if i == len(reqs)-1 {
			req.Flags |= unix.NLM_F_ACK
		}
		req.Seq, req.Pid = first+uint32(i), r.pid
		buf = append(buf, req.Serialize()...)
		for len(buf)%unix.NLMSG_ALIGNTO != 0 {
			buf = append(buf, 0)
		}
	}
	for {
		err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		r.calls.Add(1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fail(fmt.Errorf("xfrm: send a netlink batch: %w", err))
			return
		}
		break
	}
	// Every answer is queued by now: read them straight from the socket
	// (non-blocking) into a buffer kept for it. (The library's read waits
	// with a deadline and takes a fresh 64 KiB buffer each time.) If the
	// kernel could not queue some (ENOBUFS), which ones is unknown: the
	// rest of the socket is read (so that the next batch finds it empty)
	// and every request without an answer of its own fails.
	last := first + uint32(len(reqs)) - 1
	if r.rbuf == nil {
		r.rbuf = make([]byte, nl.RECEIVE_BUFFER_SIZE)
	}
	var lost error
	for {
		n, from, err := unix.Recvfrom(s.GetFd(), r.rbuf, 0)
		r.calls.Add(1)
		if err == unix.EINTR {
			continue
		}
		if err == unix.ENOBUFS {
			lost = fmt.Errorf("xfrm: netlink answers lost (the socket's receive buffer was full): %w", err)
			continue
		}
		if err != nil {
			if err == unix.EAGAIN {
				err = cmp.Or(lost, errNoAnswer)
			}
			fail(err)
			return
		}
		if nf, ok := from.(*unix.SockaddrNetlink); !ok || nf.Pid != nl.PidKernel {
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(r.rbuf[:n])
		if err != nil {
			r.drain()
			fail(fmt.Errorf("xfrm: netlink answer: %w", err))
			return
		}
		for _, m := range msgs {
			seq := m.Header.Seq
			i := seq - first // wraps with the sequence numbers
			if i >= uint32(len(reqs)) || m.Header.Pid != r.pid {
				continue // an earlier request's (one the library gave up on)
			}
			a := &ans[i]
			if m.Header.Type != unix.NLMSG_ERROR {
				a.data = append([]byte(nil), m.Data...) // a get's reply
				continue
			}
			if len(m.Data) < 4 {
				a.err = errors.New("xfrm: short netlink error message")
			} else if code := int32(nl.NativeEndian().Uint32(m.Data[:4])); code != 0 {
				a.err = syscall.Errno(-code)
			}
			if seq == last {
				if lost != nil {
					r.drain()
					fail(lost)
				}
				return
			}
		}
	}
}
