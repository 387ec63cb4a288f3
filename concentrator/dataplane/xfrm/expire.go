package xfrm

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

var _ dataplane.ExpiryReporter = (*DataPlane)(nil)

// expiryMonitor reads the kernel's XFRM_MSG_EXPIRE multicasts (group
// XFRMNLGRP_EXPIRE) on its own netlink socket and turns those of our
// states into dataplane.Expiry values. It never blocks on the channel: an
// expiry that finds it full is dropped and counted.
type expiryMonitor struct {
	s       *nl.NetlinkSocket
	ch      chan dataplane.Expiry
	done    chan struct{}
	closing atomic.Bool
	// inBySlot maps a slot to its inbound SPI, for outbound states'
	// expiries; written beside DataPlane.slots, read without DataPlane.mu
	// so the reader never waits for a long install or reconcile.
	inBySlot sync.Map // uint32 -> uint32
	dropped  atomic.Uint64
	overruns atomic.Uint64
}

// expiryRecvBuffer is the monitor socket's receive buffer: room for a burst
// of about 4000 expiries (each message is about 300 bytes with headers).
const expiryRecvBuffer = 1 << 20

func newExpiryMonitor(ns netns.NsHandle, queue int) (*expiryMonitor, error) {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_XFRM, nl.XFRMNLGRP_EXPIRE)
	if err != nil {
		return nil, err
	}
	_ = s.SetReceiveBufferSize(expiryRecvBuffer, false)
	return &expiryMonitor{s: s, ch: make(chan dataplane.Expiry, queue), done: make(chan struct{})}, nil
}

// run reads until the socket is closed, then closes the channel.
func (m *expiryMonitor) run(d *DataPlane) {
	defer close(m.done)
	defer close(m.ch)
	for {
		msgs, from, err := m.s.Receive()
		if err != nil {
			switch {
			case m.closing.Load():
				return
			case errors.Is(err, unix.ENOBUFS):
				// The kernel dropped multicasts: the socket buffer overflowed.
				m.overruns.Add(1)
				d.log.Warn("xfrm expiry monitor: kernel dropped expire events (ENOBUFS)")
				continue
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, os.ErrClosed):
				return
			}
			d.log.Error("xfrm expiry monitor stopped", "err", err)
			return
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, msg := range msgs {
			if msg.Header.Type != nl.XFRM_MSG_EXPIRE || len(msg.Data) < nl.SizeofXfrmUserExpire {
				continue
			}
			ue := nl.DeserializeXfrmUserExpire(msg.Data)
			e, ok := ExpiryFromKernel(&d.opts, &ue.XfrmUsersaInfo, ue.Hard != 0, m.inSPI)
			if !ok {
				continue
			}
			select {
			case m.ch <- e:
			default:
				m.dropped.Add(1)
			}
			d.log.Info("xfrm CHILD_SA expiry", "in_spi", fmt.Sprintf("%08x", e.InSPI), "hard", e.Hard, "reason", e.Reason)
		}
	}
}

func (m *expiryMonitor) inSPI(slot uint32) (uint32, bool) {
	v, ok := m.inBySlot.Load(slot)
	if !ok {
		return 0, false
	}
	return v.(uint32), true
}

func (m *expiryMonitor) stop() {
	m.closing.Store(true)
	m.s.Close()
	<-m.done
}

// ExpiryFromKernel turns one expired state (the kernel's xfrm_usersa_info
// of an XFRM_MSG_EXPIRE) into an Expiry, if the state is an ESP state of
// ours: an inbound state's SPI is the InSPI, an outbound state's is mapped
// to its pair's inbound SPI through inSPI (slot -> inbound SPI); foreign
// states, and outbound states of slots inSPI does not know, are ignored.
// The reason is the limit the state's current lifetime reached.
func ExpiryFromKernel(opts *Options, sa *nl.XfrmUsersaInfo, hard bool, inSPI func(slot uint32) (uint32, bool)) (dataplane.Expiry, bool) {
	if sa.Id.Proto != uint8(netlink.XFRM_PROTO_ESP) {
		return dataplane.Expiry{}, false
	}
	slot, in, ok := opts.ours(sa.Reqid)
	if !ok {
		return dataplane.Expiry{}, false
	}
	e := dataplane.Expiry{Hard: hard, Reason: expiryReason(&sa.Lft, &sa.Curlft, hard)}
	if in {
		e.InSPI = nl.Swap32(sa.Id.Spi)
	} else if e.InSPI, ok = inSPI(slot); !ok {
		return dataplane.Expiry{}, false
	}
	return e, true
}

func expiryReason(lft *nl.XfrmLifetimeCfg, cur *nl.XfrmLifetimeCur, hard bool) string {
	pkts, bytes := lft.SoftPacketLimit, lft.SoftByteLimit
	if hard {
		pkts, bytes = lft.HardPacketLimit, lft.HardByteLimit
	}
	switch {
	case cur.Packets >= pkts:
		return "packet limit"
	case cur.Bytes >= bytes:
		return "byte limit"
	}
	return "lifetime"
}

// Expiries reports soft and hard expiries of our CHILD SAs' kernel states
// (packet and byte limits, see StateLimits). Both states of a pair expire
// on their own, so one CHILD SA may be reported twice (the inbound and the
// outbound state), both under its inbound SPI. A hard expiry means the
// kernel has deleted that state. The channel is closed by Close; expiries
// that find it full are dropped (ExpiriesDropped).
func (d *DataPlane) Expiries() <-chan dataplane.Expiry { return d.exp.ch }

// ExpiriesDropped returns how many expiries found the Expiries channel
// full, and how many times the kernel reported that the monitor socket
// overflowed (each losing an unknown number of expiries).
func (d *DataPlane) ExpiriesDropped() (dropped, overruns uint64) {
	return d.exp.dropped.Load(), d.exp.overruns.Load()
}
