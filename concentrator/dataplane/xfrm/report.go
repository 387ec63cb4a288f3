package xfrm

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// xfrmStatPath holds the kernel's XFRM error counters of the caller's
// network namespace (CONFIG_XFRM_STATISTICS).
const xfrmStatPath = "/proc/net/xfrm_stat"

// Report sums the byte and packet counters of our kernel states (those of
// SAs removed included, read just before their removal) and reports drops
// by reason: the kernel's XFRM error counters (/proc/net/xfrm_stat, e.g.
// XfrmInNoStates as "in_no_states"; in the caller's network namespace
// only) and the expiries this data plane could not deliver
// ("expiry_queue_full", "expiry_overrun"). It dumps every state once.
func (d *DataPlane) Report(ctx context.Context) (dataplane.Report, error) {
	cs, err := d.Counters(ctx)
	if err != nil {
		return dataplane.Report{}, err
	}
	d.mu.Lock()
	r := dataplane.Report{InBytes: d.gone.InBytes, InPackets: d.gone.InPackets,
		OutBytes: d.gone.OutBytes, OutPackets: d.gone.OutPackets}
	d.mu.Unlock()
	for _, c := range cs {
		r.InBytes += c.InBytes
		r.InPackets += c.InPackets
		r.OutBytes += c.OutBytes
		r.OutPackets += c.OutPackets
	}
	r.Drops = map[string]uint64{}
	if !d.opts.NetNS.IsOpen() {
		if b, err := os.ReadFile(xfrmStatPath); err == nil {
			r.Drops = ParseXfrmStat(b)
		}
	}
	dropped, overruns := d.ExpiriesDropped()
	r.Drops["expiry_queue_full"] = dropped
	r.Drops["expiry_overrun"] = overruns
	return r, nil
}

// ParseXfrmStat parses /proc/net/xfrm_stat ("XfrmInNoStates  12" lines)
// into counters by snake-case reason without the Xfrm prefix
// ("in_no_states"). Lines that do not parse are skipped.
func ParseXfrmStat(b []byte) map[string]uint64 {
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || !strings.HasPrefix(f[0], "Xfrm") || len(f[0]) == len("Xfrm") {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		out[snake(f[0][len("Xfrm"):])] = v
	}
	return out
}

// snake turns "InStateProtoError" into "in_state_proto_error".
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
