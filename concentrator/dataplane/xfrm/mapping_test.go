package xfrm

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// xfrmUserMapping builds a struct xfrm_user_mapping as the kernel sends it.
func xfrmUserMapping(family uint16, dst netip.Addr, spi, reqid uint32, oldSrc, newSrc netip.AddrPort) []byte {
	b := make([]byte, sizeofXfrmUserMapping)
	put := func(off int, a netip.Addr) {
		s := a.AsSlice()
		copy(b[off:off+16], s)
	}
	put(0, dst)
	binary.BigEndian.PutUint32(b[16:], spi)
	binary.NativeEndian.PutUint16(b[20:], family)
	b[22] = unix.IPPROTO_ESP
	binary.NativeEndian.PutUint32(b[24:], reqid)
	put(28, oldSrc.Addr())
	put(44, newSrc.Addr())
	binary.BigEndian.PutUint16(b[60:], oldSrc.Port())
	binary.BigEndian.PutUint16(b[62:], newSrc.Port())
	return b
}

func TestParseMapping(t *testing.T) {
	dst := netip.MustParseAddr("192.168.100.2")
	oldSrc := netip.MustParseAddrPort("192.168.100.1:4500")
	newSrc := netip.MustParseAddrPort("192.168.100.1:20417")
	m, err := ParseMapping(xfrmUserMapping(unix.AF_INET, dst, 0xc1234567, 0x49460003, oldSrc, newSrc))
	if err != nil {
		t.Fatal(err)
	}
	if m.SPI != 0xc1234567 || m.ReqID != 0x49460003 || m.Dst != dst || m.OldSrc != oldSrc || m.NewSrc != newSrc || m.Proto != unix.IPPROTO_ESP {
		t.Fatalf("parsed %+v", m)
	}
	v6 := netip.MustParseAddrPort("[2001:db8::7]:4501")
	m, err = ParseMapping(xfrmUserMapping(unix.AF_INET6, netip.MustParseAddr("2001:db8::1"), 1, 2, v6, v6))
	if err != nil || m.NewSrc != v6 {
		t.Fatalf("IPv6: %+v %v", m, err)
	}
	if _, err := ParseMapping(make([]byte, sizeofXfrmUserMapping-1)); err == nil {
		t.Fatal("short message accepted")
	}
	if _, err := ParseMapping(xfrmUserMapping(99, dst, 1, 2, oldSrc, newSrc)); err == nil {
		t.Fatal("unknown family accepted")
	}
}

func TestMappingReportRateLimit(t *testing.T) {
	m := &mappingMonitor{last: map[uint32]time.Time{}}
	var got []dataplane.Mapping
	f := func(mp dataplane.Mapping) { got = append(got, mp) }
	m.f.Store(&f)
	now := time.Unix(1000, 0)
	mp := Mapping{SPI: 7, NewSrc: netip.MustParseAddrPort("192.0.2.1:20000")}
	if !m.report(mp, now) || m.report(mp, now.Add(500*time.Millisecond)) || !m.report(mp, now.Add(1100*time.Millisecond)) {
		t.Fatal("not one report per second")
	}
	if !m.report(Mapping{SPI: 8, NewSrc: mp.NewSrc}, now) {
		t.Fatal("another SA's report held back")
	}
	if len(got) != 3 || got[0].InSPI != 7 || got[0].Remote != mp.NewSrc {
		t.Fatalf("reports %+v", got)
	}
}

// FuzzParseMapping: netlink input never panics.
func FuzzParseMapping(f *testing.F) {
	f.Add(xfrmUserMapping(unix.AF_INET, netip.MustParseAddr("10.0.0.1"), 1, 2,
		netip.MustParseAddrPort("10.0.0.2:4500"), netip.MustParseAddrPort("10.0.0.2:4501")))
	f.Fuzz(func(t *testing.T, b []byte) { ParseMapping(b) })
}
