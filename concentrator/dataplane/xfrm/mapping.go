package xfrm

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

var _ dataplane.MappingReporter = (*DataPlane)(nil)

// NAT mapping changes: the kernel sends XFRM_MSG_MAPPING (group
// XFRMNLGRP_MAPPING) when ESP-in-UDP for an encapsulated inbound state
// arrives from another address or port than the state's (esp4/esp6
// input): for each such packet, unless the state was added with a pause
// (XFRMA_MTIMER_THRESH, ours: mappingMaxAge), which limits the events for
// one new port to one per pause. mappingMonitor reads them on its own
// socket and reports those of our inbound states, at most once per
// mappingInterval per SPI.

// sizeofXfrmUserMapping is struct xfrm_user_mapping: xfrm_usersa_id (24),
// reqid, old and new source address (16 each), old and new source port.
const sizeofXfrmUserMapping = 24 + 4 + 16 + 16 + 2 + 2

const mappingInterval = time.Second

// Mapping is one parsed XFRM_MSG_MAPPING.
type Mapping struct {
	SPI            uint32 // the state's SPI (host order)
	Proto          uint8
	Family         uint16
	ReqID          uint32
	Dst            netip.Addr // the state's destination: our address
	OldSrc, NewSrc netip.AddrPort
}

// ParseMapping reads a struct xfrm_user_mapping (native byte order for the
// host fields, network order for the SPI and ports).
func ParseMapping(b []byte) (Mapping, error) {
	if len(b) < sizeofXfrmUserMapping {
		return Mapping{}, errors.New("xfrm: short XFRM_MSG_MAPPING")
	}
	var m Mapping
	m.SPI = binary.BigEndian.Uint32(b[16:20])
	m.Family = binary.NativeEndian.Uint16(b[20:22])
	m.Proto = b[22]
	m.ReqID = binary.NativeEndian.Uint32(b[24:28])
	addr := func(a []byte) (netip.Addr, bool) {
		switch m.Family {
		case unix.AF_INET:
			return netip.AddrFrom4([4]byte(a[:4])), true
		case unix.AF_INET6:
			return netip.AddrFrom16([16]byte(a[:16])), true
		}
		return netip.Addr{}, false
	}
	var ok bool
	if m.Dst, ok = addr(b[0:16]); !ok {
		return Mapping{}, errors.New("xfrm: XFRM_MSG_MAPPING of an unknown address family")
	}
	oldA, _ := addr(b[28:44])
	newA, _ := addr(b[44:60])
	m.OldSrc = netip.AddrPortFrom(oldA, binary.BigEndian.Uint16(b[60:62]))
	m.NewSrc = netip.AddrPortFrom(newA, binary.BigEndian.Uint16(b[62:64]))
	return m, nil
}

type mappingMonitor struct {
	s       *nl.NetlinkSocket
	done    chan struct{}
	closing atomic.Bool
	f       atomic.Pointer[func(dataplane.Mapping)]
	mu      sync.Mutex
	last    map[uint32]time.Time // SPI -> last report
	count   atomic.Uint64
}

func newMappingMonitor(ns netns.NsHandle) (*mappingMonitor, error) {
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_XFRM, nl.XFRMNLGRP_MAPPING)
	if err != nil {
		return nil, err
	}
	return &mappingMonitor{s: s, done: make(chan struct{}), last: map[uint32]time.Time{}}, nil
}

func (m *mappingMonitor) run(d *DataPlane) {
	defer close(m.done)
	for {
		msgs, from, err := m.s.Receive()
		if err != nil {
			switch {
			case m.closing.Load(), errors.Is(err, os.ErrClosed):
				return
			case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
				continue // lost events come again with the next packets
			}
			d.log.Error("xfrm mapping monitor stopped", "err", err)
			return
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, msg := range msgs {
			if msg.Header.Type != nl.XFRM_MSG_MAPPING {
				continue
			}
			mp, err := ParseMapping(msg.Data)
			if err != nil || mp.Proto != uint8(netlink.XFRM_PROTO_ESP) {
				continue
			}
			if _, in, ours := d.opts.ours(mp.ReqID); !ours || !in {
				continue
			}
			m.report(mp, time.Now())
		}
	}
}

// report hands mp on, at most once per mappingInterval per SPI.
func (m *mappingMonitor) report(mp Mapping, now time.Time) bool {
	f := m.f.Load()
	if f == nil {
		return false
	}
	m.mu.Lock()
	if t, ok := m.last[mp.SPI]; ok && now.Sub(t) < mappingInterval {
		m.mu.Unlock()
		return false
	}
	m.last[mp.SPI] = now
	if len(m.last) > 4096 { // forget old entries now and then
		for k, t := range m.last {
			if now.Sub(t) >= mappingInterval {
				delete(m.last, k)
			}
		}
	}
	m.mu.Unlock()
	m.count.Add(1)
	(*f)(dataplane.Mapping{InSPI: mp.SPI, Remote: mp.NewSrc})
	return true
}

func (m *mappingMonitor) stop() {
	m.closing.Store(true)
	m.s.Close()
	<-m.done
}

// OnMapping sets the function told of NAT mapping changes of our inbound
// states (dataplane.MappingReporter).
func (d *DataPlane) OnMapping(f func(dataplane.Mapping)) {
	if d.mapm != nil {
		d.mapm.f.Store(&f)
	}
}
