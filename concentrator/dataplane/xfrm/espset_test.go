package xfrm

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftDebug renders expressions as `nft --debug=netlink` prints a rule's
// bytecode, for the expression kinds ESPTable uses.
func nftDebug(t *testing.T, exprs []expr.Any) string {
	t.Helper()
	reg := func(data []byte) string {
		var w []string
		for i := 0; i < len(data); i += 4 {
			var b [4]byte
			copy(b[:], data[i:])
			w = append(w, fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(b[:])))
		}
		return strings.Join(w, " ")
	}
	var sb strings.Builder
	for _, e := range exprs {
		// Every expression must also marshal to netlink bytes.
		if _, err := expr.Marshal(unix.NFPROTO_INET, e); err != nil {
			t.Fatalf("marshal %T: %v", e, err)
		}
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key != expr.MetaKeyL4PROTO {
				t.Fatalf("meta key %d", e.Key)
			}
			fmt.Fprintf(&sb, "[ meta load l4proto => reg %d ]\n", e.Register)
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}[e.Op]
			fmt.Fprintf(&sb, "[ cmp %s reg %d %s ]\n", op, e.Register, reg(e.Data))
		case *expr.Payload:
			if e.Base != expr.PayloadBaseTransportHeader {
				t.Fatalf("payload base %d", e.Base)
			}
			fmt.Fprintf(&sb, "[ payload load %db @ transport header + %d => reg %d ]\n", e.Len, e.Offset, e.DestRegister)
		case *expr.Lookup:
			inv := ""
			if e.Invert {
				inv = " 0x1"
			}
			fmt.Fprintf(&sb, "[ lookup reg %d set %s%s ]\n", e.SourceRegister, e.SetName, inv)
		case *expr.Counter:
			fmt.Fprintf(&sb, "[ counter pkts %d bytes %d ]\n", e.Packets, e.Bytes)
		case *expr.Queue:
			fl := ""
			if e.Flag&expr.QueueFlagBypass != 0 {
				fl = " bypass"
			}
			fmt.Fprintf(&sb, "[ queue num %d%s ]\n", e.Num, fl)
		case *expr.Verdict:
			if e.Kind != expr.VerdictDrop {
				t.Fatalf("verdict %v", e.Kind)
			}
			sb.WriteString("[ immediate reg 0 drop ]\n")
		default:
			t.Fatalf("unexpected expression %T", e)
		}
	}
	return sb.String()
}

// The golden bytecode is what nft 1.0.6 compiles the rules in ESPTable's
// comment to (nft --debug=netlink -f), port 4500 and queue 4500.
const (
	goldenInput = `[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000011 ]
[ payload load 2b @ transport header + 2 => reg 1 ]
[ cmp eq reg 1 0x00009411 ]
[ payload load 4b @ transport header + 8 => reg 1 ]
[ cmp neq reg 1 0x00000000 ]
[ payload load 4b @ transport header + 8 => reg 1 ]
[ lookup reg 1 set owned 0x1 ]
[ counter pkts 0 bytes 0 ]
[ queue num 4500 bypass ]
`
	goldenFenceUDP = `[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000011 ]
[ payload load 2b @ transport header + 0 => reg 1 ]
[ cmp eq reg 1 0x00009411 ]
[ payload load 4b @ transport header + 8 => reg 1 ]
[ lookup reg 1 set out ]
[ counter pkts 0 bytes 0 ]
[ immediate reg 0 drop ]
`
	goldenFenceESP = `[ meta load l4proto => reg 1 ]
[ cmp eq reg 1 0x00000032 ]
[ payload load 4b @ transport header + 0 => reg 1 ]
[ lookup reg 1 set out ]
[ counter pkts 0 bytes 0 ]
[ immediate reg 0 drop ]
`
)

func TestESPRulesMatchNft(t *testing.T) {
	owned := &nftables.Set{Name: espSetOwned, ID: 1}
	out := &nftables.Set{Name: espSetOut, ID: 2}
	if got := nftDebug(t, unknownSPIRule(owned, 4500, 4500)); got != goldenInput {
		t.Errorf("input rule:\n%s\nwant (nft):\n%s", got, goldenInput)
	}
	f := fenceRules(out, 4500)
	if len(f) != 2 {
		t.Fatalf("%d fence rules, want 2", len(f))
	}
	if got := nftDebug(t, f[0]); got != goldenFenceUDP {
		t.Errorf("fence rule (ESP-in-UDP):\n%s\nwant (nft):\n%s", got, goldenFenceUDP)
	}
	if got := nftDebug(t, f[1]); got != goldenFenceESP {
		t.Errorf("fence rule (ESP):\n%s\nwant (nft):\n%s", got, goldenFenceESP)
	}
	// Another port and queue land where they should.
	got := nftDebug(t, unknownSPIRule(owned, 4501, 7))
	if !strings.Contains(got, "[ cmp eq reg 1 0x00009511 ]") || !strings.Contains(got, "[ queue num 7 bypass ]") {
		t.Errorf("port 4501 queue 7:\n%s", got)
	}
}

func TestSPIKeyIsWireOrder(t *testing.T) {
	// An ESP header starting 0xc1 0x02 0x03 0x04 is loaded into the
	// register as those bytes: the key must be the same.
	if k := spiKey(0xc1020304); string(k) != "\xc1\x02\x03\x04" {
		t.Errorf("spiKey = % x", k)
	}
}

// captured records the messages of nftables batches sent through a test
// dialer (no kernel, no root).
type captured struct{ msgs []netlink.Message }

func (c *captured) conn(t *testing.T) *nftables.Conn {
	t.Helper()
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		c.msgs = append(c.msgs, req...)
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// types returns the nftables message types sent (batch markers left out).
func (c *captured) types() []int {
	var out []int
	for _, m := range c.msgs {
		ty := int(m.Header.Type)
		if ty>>8 != unix.NFNL_SUBSYS_NFTABLES {
			continue
		}
		out = append(out, ty&0xff)
	}
	return out
}

func TestESPTableBatch(t *testing.T) {
	for _, queue := range []uint16{4500, 0} {
		var cap captured
		c := cap.conn(t)
		s := &espSteer{natt: 4500, queue: queue}
		s.build(c)
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		want := []int{unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_NEWSET, unix.NFT_MSG_NEWSET, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_NEWCHAIN}
		if queue != 0 {
			want = append(want, unix.NFT_MSG_NEWRULE)
		}
		if got := cap.types(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("queue %d: messages %v, want %v", queue, got, want)
		}
		if s.owned.KeyType.Bytes != 4 || s.owned.Name != espSetOwned || s.out.Name != espSetOut {
			t.Errorf("sets %+v %+v", s.owned, s.out)
		}
		if s.input.Hooknum == nil || *s.input.Hooknum != *nftables.ChainHookInput ||
			s.output.Hooknum == nil || *s.output.Hooknum != *nftables.ChainHookOutput {
			t.Errorf("chains hook %v %v", s.input.Hooknum, s.output.Hooknum)
		}
		if queue != 0 {
			// The rule message carries the expressions' bytes.
			last := cap.msgs[len(cap.msgs)-2].Data // before the batch end
			for _, e := range unknownSPIRule(s.owned, 4500, queue) {
				b, err := expr.Marshal(unix.NFPROTO_INET, e)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(last), string(b)) {
					t.Errorf("rule message lacks %T's bytes", e)
				}
			}
		}
	}
}

func TestESPSetOpsChunked(t *testing.T) {
	var cap captured
	c := cap.conn(t)
	set := &nftables.Set{Table: &nftables.Table{Family: nftables.TableFamilyINet, Name: ESPTable}, Name: espSetOwned, KeyType: nftables.TypeInteger}
	add := make([]uint32, 2*espSetChunk+1)
	for i := range add {
		add[i] = uint32(0x1000 + i)
	}
	setOps(c, set, add, []uint32{7})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	want := []int{unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM}
	if got := cap.types(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("messages %v, want %v", got, want)
	}
	// The first SPI's key is in the first message, in wire order.
	if first := cap.msgs[1].Data; !strings.Contains(string(first), "\x00\x00\x10\x00") {
		t.Error("first element message lacks SPI 0x00001000 in network byte order")
	}
}

func TestESPSetDiff(t *testing.T) {
	have := map[uint32]bool{1: true, 2: true}
	add, del := setDiff(have, map[uint32]bool{1: true, 2: false, 3: true, 4: false})
	if fmt.Sprint(add) != "[3]" || fmt.Sprint(del) != "[2]" {
		t.Errorf("add %v del %v, want [3] [2] (adding what is there or deleting what is not is nothing)", add, del)
	}
}

// The sets follow the SA table through many batches on the one kept
// connection: what the kernel holds after each sync is what was noted.
// nftables, not ESP: this runs on the build hosts too (root).
func TestESPSteerSetsFollowChanges(t *testing.T) {
	requireRoot(t)
	ns := newNS(t)
	s, err := newESPSteer(ns, 4500, 0, slog.New(slog.DiscardHandler)) // no queue rule: the build hosts lack nft_queue
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	held := func(set *nftables.Set) map[uint32]bool {
		t.Helper()
		c, err := nftConn(ns)
		if err != nil {
			t.Fatal(err)
		}
		els, err := c.GetSetElements(set)
		if err != nil {
			t.Fatal(err)
		}
		m := map[uint32]bool{}
		for _, e := range els {
			m[binary.BigEndian.Uint32(e.Key)] = true
		}
		return m
	}
	wantIn, wantOut := map[uint32]bool{}, map[uint32]bool{}
	for round := range 20 {
		for i := range 30 {
			in, out := uint32(0xc0000000+round*100+i), uint32(0x0a000000+round*100+i)
			s.add(in, out)
			wantIn[in], wantOut[out] = true, true
		}
		if round > 0 { // and the previous round's first ten go
			for i := range 10 {
				in, out := uint32(0xc0000000+(round-1)*100+i), uint32(0x0a000000+(round-1)*100+i)
				s.del(in, out)
				delete(wantIn, in)
				delete(wantOut, out)
			}
		}
		s.sync()
		for _, c := range []struct {
			set  *nftables.Set
			want map[uint32]bool
		}{{s.owned, wantIn}, {s.out, wantOut}} {
			got := held(c.set)
			// The library's dump of a set now and then returns part of
			// a set of a few hundred (about one read in a hundred here;
			// the kernel then holds them all): a wrong set stays wrong
			// when read again.
			for k := 0; k < 4 && !maps.Equal(got, c.want); k++ {
				got = held(c.set)
			}
			if !maps.Equal(got, c.want) {
				t.Fatalf("round %d: set %s holds %d SPIs, want %d (failed batches %d)", round, c.set.Name, len(got), len(c.want), s.errors.Load())
			}
		}
	}
	if e := s.errors.Load(); e != 0 {
		t.Fatalf("%d failed batches", e)
	}
}
