package xfrm

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Attributes of XFRM_MSG_NEWSPDINFO (linux/xfrm.h, enum xfrm_spdattr_type_t).
const (
	xfrmaSPDIPv4HThresh = 3
	xfrmaSPDIPv6HThresh = 4
)

// spdFlags is XFRM_MSG_NEWSPDINFO's fixed header: a u32 of flags (unused).
type spdFlags uint32

func (f spdFlags) Len() int { return 4 }
func (f spdFlags) Serialize() []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(f))
}

// setSPDHashThresholds is `ip xfrm policy set hthresh4 L R hthresh6 L R`:
// policies whose local and remote prefixes are at least L and R bits long
// go to the SPD's hash tables instead of the one list sorted by priority
// that every insert walks (docs/architecture.md, "Data plane": 20,000 per-peer
// policies took 36.5 s with the defaults and 5.9 s with hthresh4 0 32).
// The kernel rebuilds its hash tables in the background.
func setSPDHashThresholds(ns netns.NsHandle, v4, v6 [2]int) error {
	for _, t := range [][2]int{v4, v6} {
		if t[0] < 0 || t[1] < 0 || t[0] > 128 || t[1] > 128 {
			return fmt.Errorf("thresholds %v out of range", t)
		}
	}
	if v4[0] > 32 || v4[1] > 32 {
		return fmt.Errorf("IPv4 thresholds %v out of range 0-32", v4)
	}
	req := nl.NewNetlinkRequest(nl.XFRM_MSG_NEWSPDINFO, unix.NLM_F_ACK)
	req.AddData(spdFlags(0))
	req.AddData(nl.NewRtAttr(xfrmaSPDIPv4HThresh, []byte{byte(v4[0]), byte(v4[1])}))
	req.AddData(nl.NewRtAttr(xfrmaSPDIPv6HThresh, []byte{byte(v6[0]), byte(v6[1])}))
	if ns.IsOpen() {
		s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_XFRM)
		if err != nil {
			return err
		}
		defer s.Close()
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_XFRM: {Socket: s}}
	}
	_, err := req.Execute(unix.NETLINK_XFRM, 0)
	return err
}

// getSPDHashThresholds reads the IPv4 hash thresholds
// (XFRM_MSG_GETSPDINFO), for tests and diagnostics.
func getSPDHashThresholds(ns netns.NsHandle) (lbits, rbits int, err error) {
	req := nl.NewNetlinkRequest(nl.XFRM_MSG_GETSPDINFO, 0)
	req.AddData(spdFlags(0))
	if ns.IsOpen() {
		s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_XFRM)
		if err != nil {
			return 0, 0, err
		}
		defer s.Close()
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_XFRM: {Socket: s}}
	}
	msgs, err := req.Execute(unix.NETLINK_XFRM, nl.XFRM_MSG_NEWSPDINFO)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[4:])
		if err != nil {
			return 0, 0, err
		}
		for _, a := range attrs {
			if a.Attr.Type == xfrmaSPDIPv4HThresh && len(a.Value) >= 2 {
				return int(a.Value[0]), int(a.Value[1]), nil
			}
		}
	}
	return 0, 0, fmt.Errorf("no IPv4 hash thresholds in the SPD info")
}
