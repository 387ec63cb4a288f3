package xfrm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Replay state and async events (aevents) of XFRM states, in netlink
// messages this package builds itself: the netlink library adds ESN states
// with their counters forced to zero and can neither set the event
// thresholds nor ask for or parse async events.

// Async event flags (enum xfrm_ae_ftype_t, linux/xfrm.h).
const (
	aeReplayThresh = 1  // XFRM_AE_RTHR: report the replay threshold
	aeCauseReplay  = 16 // XFRM_AE_CR: the event was caused by a sequence number update
	aeCauseTimer   = 32 // XFRM_AE_CE: ... by the event timer
	aeCauseUpdate  = 64 // XFRM_AE_CU: ... by XFRM_MSG_NEWAE
)

// Sizes of kernel structures.
const (
	sizeofAeventID   = 48   // struct xfrm_aevent_id: xfrm_usersa_id, saddr, flags, reqid
	sizeofReplay     = 12   // struct xfrm_replay_state
	sizeofReplayESN  = 24   // struct xfrm_replay_state_esn without its bitmap
	maxReplayESNBits = 4096 // the kernel caps bmp_len at XFRMA_REPLAY_ESN_MAX/4/8 = 128 words
)

// maxDiffOff is the largest replay threshold: in effect no event.
const maxDiffOff = 1<<32 - 1

// Replay is the replay state a state is installed with or the kernel
// reports: OSeq the last outbound sequence number used (outbound states),
// Seq the highest inbound number authenticated (inbound states) and
// Bitmap the window below it, in the kernel's layout (legacy: bit i is
// Seq-i; ESN: a ring of Window bits). A nil Bitmap with Seq > 0 means
// every bit set: every number up to Seq is refused.
type Replay struct {
	ESN       bool
	Window    uint32 // ESN: the window in packets (bitmap words = ceil(Window/32))
	OSeq, Seq uint64
	Bitmap    []uint32
}

// replayAttr returns the replay attribute of r: XFRMA_REPLAY_ESN_VAL for
// an ESN state, XFRMA_REPLAY_VAL (32-bit numbers, 32-bit bitmap)
// otherwise.
func replayAttr(r Replay) (*nl.RtAttr, error) {
	ne := binary.NativeEndian
	if !r.ESN {
		if r.OSeq > 0xffffffff || r.Seq > 0xffffffff {
			return nil, unsupported("sequence numbers %d/%d above 2^32-1 without ESN", r.OSeq, r.Seq)
		}
		b := make([]byte, sizeofReplay)
		ne.PutUint32(b[0:], uint32(r.OSeq))
		ne.PutUint32(b[4:], uint32(r.Seq))
		var bm uint32
		switch {
		case len(r.Bitmap) > 0:
			bm = r.Bitmap[0]
		case r.Seq > 0:
			bm = ^uint32(0)
		}
		ne.PutUint32(b[8:], bm)
		return nl.NewRtAttr(nl.XFRMA_REPLAY_VAL, b), nil
	}
	if r.Window == 0 || r.Window > maxReplayESNBits {
		return nil, unsupported("ESN replay window %d (1..%d)", r.Window, maxReplayESNBits)
	}
	words := (r.Window + 31) / 32
	if r.Bitmap != nil && len(r.Bitmap) != int(words) {
		return nil, fmt.Errorf("xfrm: replay bitmap of %d words for a window of %d", len(r.Bitmap), r.Window)
	}
	b := make([]byte, sizeofReplayESN+4*int(words))
	ne.PutUint32(b[0:], words) // bmp_len
	ne.PutUint32(b[4:], uint32(r.OSeq))
	ne.PutUint32(b[8:], uint32(r.Seq))
	ne.PutUint32(b[12:], uint32(r.OSeq>>32))
	ne.PutUint32(b[16:], uint32(r.Seq>>32))
	ne.PutUint32(b[20:], r.Window)
	for i := uint32(0); i < words; i++ {
		var w uint32
		switch {
		case r.Bitmap != nil:
			w = r.Bitmap[i]
		case r.Seq > 0:
			w = ^uint32(0)
		}
		ne.PutUint32(b[sizeofReplayESN+4*int(i):], w)
	}
	return nl.NewRtAttr(nl.XFRMA_REPLAY_ESN_VAL, b), nil
}

// parseReplay reads a replay attribute (either kind).
func parseReplay(typ uint16, v []byte) (Replay, error) {
	ne := binary.NativeEndian
	switch typ {
	case nl.XFRMA_REPLAY_VAL:
		if len(v) < sizeofReplay {
			return Replay{}, errShortAE
		}
		return Replay{OSeq: uint64(ne.Uint32(v)), Seq: uint64(ne.Uint32(v[4:])), Bitmap: []uint32{ne.Uint32(v[8:])}}, nil
	case nl.XFRMA_REPLAY_ESN_VAL:
		if len(v) < sizeofReplayESN {
			return Replay{}, errShortAE
		}
		words := ne.Uint32(v)
		if uint64(len(v)) < sizeofReplayESN+4*uint64(words) {
			return Replay{}, errShortAE
		}
		r := Replay{ESN: true,
			OSeq:   uint64(ne.Uint32(v[12:]))<<32 | uint64(ne.Uint32(v[4:])),
			Seq:    uint64(ne.Uint32(v[16:]))<<32 | uint64(ne.Uint32(v[8:])),
			Window: ne.Uint32(v[20:]),
			Bitmap: make([]uint32, words),
		}
		for i := range r.Bitmap {
			r.Bitmap[i] = ne.Uint32(v[sizeofReplayESN+4*i:])
		}
		return r, nil
	}
	return Replay{}, fmt.Errorf("xfrm: attribute %d is no replay state", typ)
}

var errShortAE = errors.New("xfrm: short async event")

// mappingMaxAge is the kernel's pause between two NAT mapping events of
// an inbound encapsulated state for packets from the same new port
// (XFRMA_MTIMER_THRESH, seconds): the first packet from a new address or
// port is reported at once, further ones at most every other second
// instead of each packet (the monitor reports one a second per SPI, and
// the engine checks at most once a second per SA). Kernels before 5.18
// ignore the attribute.
const mappingMaxAge = 1

// stateAddMessage builds the XFRM_MSG_NEWSA request body for st (as the
// netlink library would) with replay state r and the async event
// thresholds: maxDiff sequence numbers (XFRMA_REPLAY_THRESH) and no event
// timer (XFRMA_ETIMER_THRESH 0); an inbound state with encapsulation also
// gets the mapping event pause (XFRMA_MTIMER_THRESH).
func stateAddMessage(st *netlink.XfrmState, r Replay, maxDiff uint32, inbound bool) (*nl.XfrmUsersaInfo, []*nl.RtAttr, error) {
	if st.Spi == 0 {
		return nil, nil, errors.New("xfrm: state without SPI")
	}
	if st.ESN != r.ESN {
		return nil, nil, fmt.Errorf("xfrm: ESN state %v with replay state ESN %v", st.ESN, r.ESN)
	}
	msg := &nl.XfrmUsersaInfo{}
	msg.Family = uint16(nl.GetIPFamily(st.Dst))
	msg.Id.Daddr.FromIP(st.Dst)
	msg.Saddr.FromIP(st.Src)
	msg.Id.Proto = uint8(st.Proto)
	msg.Id.Spi = nl.Swap32(uint32(st.Spi))
	msg.Mode = uint8(st.Mode)
	msg.Reqid = uint32(st.Reqid)
	if st.Mode == netlink.XFRM_MODE_TUNNEL {
		// No selector family on the state (as strongSwan does): the
		// kernel would give it the outer family, and a state whose
		// selector family is IPv6 is never chosen for IPv4 traffic (nor
		// the reverse). A tunnel-mode state's policies select its
		// traffic; this lets one CHILD SA carry both inner families
		// whatever the outer one.
		msg.Flags |= nl.XFRM_STATE_AF_UNSPEC
	}
	if st.ESN {
		msg.Flags |= nl.XFRM_STATE_ESN // the window goes in the ESN replay state
	} else {
		msg.ReplayWindow = uint8(min(st.ReplayWindow, 255))
	}
	lim := func(v uint64) uint64 {
		if v == 0 {
			return nl.XFRM_INF
		}
		return v
	}
	msg.Lft.SoftByteLimit, msg.Lft.HardByteLimit = lim(st.Limits.ByteSoft), lim(st.Limits.ByteHard)
	msg.Lft.SoftPacketLimit, msg.Lft.HardPacketLimit = lim(st.Limits.PacketSoft), lim(st.Limits.PacketHard)
	msg.Lft.SoftAddExpiresSeconds, msg.Lft.HardAddExpiresSeconds = st.Limits.TimeSoft, st.Limits.TimeHard
	msg.Lft.SoftUseExpiresSeconds, msg.Lft.HardUseExpiresSeconds = st.Limits.TimeUseSoft, st.Limits.TimeUseHard

	algo := func(a *netlink.XfrmStateAlgo) [64]byte {
		var n [64]byte
		copy(n[:], a.Name)
		return n
	}
	var attrs []*nl.RtAttr
	if a := st.Auth; a != nil {
		x := nl.XfrmAlgoAuth{AlgName: algo(a), AlgKeyLen: uint32(len(a.Key) * 8), AlgTruncLen: uint32(a.TruncateLen), AlgKey: a.Key}
		attrs = append(attrs, nl.NewRtAttr(nl.XFRMA_ALG_AUTH_TRUNC, x.Serialize()))
	}
	if a := st.Crypt; a != nil {
		x := nl.XfrmAlgo{AlgName: algo(a), AlgKeyLen: uint32(len(a.Key) * 8), AlgKey: a.Key}
		attrs = append(attrs, nl.NewRtAttr(nl.XFRMA_ALG_CRYPT, x.Serialize()))
	}
	if a := st.Aead; a != nil {
		x := nl.XfrmAlgoAEAD{AlgName: algo(a), AlgKeyLen: uint32(len(a.Key) * 8), AlgICVLen: uint32(a.ICVLen), AlgKey: a.Key}
		attrs = append(attrs, nl.NewRtAttr(nl.XFRMA_ALG_AEAD, x.Serialize()))
	}
	if e := st.Encap; e != nil {
		b := make([]byte, nl.SizeofXfrmEncapTmpl)
		t := nl.DeserializeXfrmEncapTmpl(b)
		t.EncapType = uint16(e.Type)
		t.EncapSport = nl.Swap16(uint16(e.SrcPort))
		t.EncapDport = nl.Swap16(uint16(e.DstPort))
		t.EncapOa.FromIP(e.OriginalAddress)
		attrs = append(attrs, nl.NewRtAttr(nl.XFRMA_ENCAP, b))
	}
	ra, err := replayAttr(r)
	if err != nil {
		return nil, nil, err
	}
	attrs = append(attrs, ra,
		nl.NewRtAttr(nl.XFRMA_REPLAY_THRESH, nl.Uint32Attr(max(maxDiff, 1))),
		nl.NewRtAttr(nl.XFRMA_ETIMER_THRESH, nl.Uint32Attr(0)))
	if inbound && st.Encap != nil { // the kernel refuses it without XFRMA_ENCAP
		attrs = append(attrs, nl.NewRtAttr(nl.XFRMA_MTIMER_THRESH, nl.Uint32Attr(mappingMaxAge)))
	}
	return msg, attrs, nil
}

// stateID names a state for XFRM_MSG_GETAE and XFRM_MSG_NEWAE.
type stateID struct {
	dst, src net.IP
	spi      uint32
	reqid    uint32
}

func idOf(st *netlink.XfrmState) stateID {
	return stateID{dst: st.Dst, src: st.Src, spi: uint32(st.Spi), reqid: uint32(st.Reqid)}
}

// aeventID serializes struct xfrm_aevent_id for id.
func aeventID(id stateID, flags uint32) []byte {
	b := make([]byte, sizeofAeventID)
	var a nl.XfrmAddress
	a.FromIP(id.dst)
	copy(b[0:16], a.Serialize())
	binary.BigEndian.PutUint32(b[16:], id.spi)
	binary.NativeEndian.PutUint16(b[20:], uint16(nl.GetIPFamily(id.dst)))
	b[22] = unix.IPPROTO_ESP
	var s nl.XfrmAddress
	s.FromIP(id.src)
	copy(b[24:40], s.Serialize())
	binary.NativeEndian.PutUint32(b[40:], flags)
	binary.NativeEndian.PutUint32(b[44:], id.reqid)
	return b
}

// rawData is request data already serialized.
type rawData []byte

func (r rawData) Len() int          { return len(r) }
func (r rawData) Serialize() []byte { return r }

// aevent is one XFRM_MSG_NEWAE: an async event, or the answer to
// XFRM_MSG_GETAE.
type aevent struct {
	SPI    uint32
	Proto  uint8
	Reqid  uint32
	Flags  uint32
	Replay Replay
	Thresh uint32 // XFRMA_REPLAY_THRESH when asked for (aeReplayThresh)
}

// parseAevent reads an XFRM_MSG_NEWAE body. It never panics on bad input.
func parseAevent(b []byte) (aevent, error) {
	if len(b) < sizeofAeventID {
		return aevent{}, errShortAE
	}
	ev := aevent{
		SPI:   binary.BigEndian.Uint32(b[16:]),
		Proto: b[22],
		Flags: binary.NativeEndian.Uint32(b[40:]),
		Reqid: binary.NativeEndian.Uint32(b[44:]),
	}
	found := false
	for rest := b[sizeofAeventID:]; len(rest) >= 4; {
		// struct nlattr: length (header included), type; 4-byte aligned.
		n, typ := int(binary.NativeEndian.Uint16(rest)), binary.NativeEndian.Uint16(rest[2:])&0x3fff
		if n < 4 || n > len(rest) {
			return aevent{}, errors.New("xfrm: async event: bad attribute length")
		}
		v := rest[4:n]
		rest = rest[min((n+3)&^3, len(rest)):]
		switch typ {
		case nl.XFRMA_REPLAY_VAL, nl.XFRMA_REPLAY_ESN_VAL:
			var err error
			if ev.Replay, err = parseReplay(typ, v); err != nil {
				return aevent{}, err
			}
			found = true
		case nl.XFRMA_REPLAY_THRESH:
			if len(v) >= 4 {
				ev.Thresh = binary.NativeEndian.Uint32(v)
			}
		}
	}
	if !found {
		return aevent{}, errors.New("xfrm: async event without a replay state")
	}
	return ev, nil
}
