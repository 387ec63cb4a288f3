package xfrm

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// MSSTable is the nftables table (family inet) of the TCP MSS clamp.
const MSSTable = "ikefleet_mss"

// DefaultMSS is the MSS that TCP SYNs arriving from a tunnel are clamped to:
// a 1500-byte path minus the outer IPv4 header (20), UDP (8), ESP header and
// IV (16), padding and trailer (up to 17), ICV (16), and the inner IPv4 and
// TCP headers (40), rounded down with a margin.
const DefaultMSS = 1360

// Keys of nftables expressions that google/nftables does not name.
const (
	nftMetaSecpath = 25 // NFT_META_SECPATH: the packet was decapsulated by XFRM
	nftRtXFRM      = 4  // NFT_RT_XFRM: the packet's route is an XFRM bundle
)

type mssClamp struct {
	ns    netns.NsHandle
	table *nftables.Table
}

func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	if ns.IsOpen() {
		return nftables.New(nftables.WithNetNSFd(int(ns)))
	}
	return nftables.New()
}

// lastingNftConn is nftConn's connection kept open across Flushes, until
// CloseLasting.
func lastingNftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	if ns.IsOpen() {
		return nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(int(ns)))
	}
	return nftables.New(nftables.AsLasting())
}

// installMSSClamp installs (replacing any earlier one) the table
//
//	table inet ikefleet_mss {
//	  chain forward { type filter hook forward priority mangle;
//	    tcp flags & (syn|rst) == syn meta secpath exists tcp option maxseg size set MSS
//	    tcp flags & (syn|rst) == syn rt ipsec exists tcp option maxseg size set rt mtu }
//	  chain output { type filter hook output priority mangle;
//	    tcp flags & (syn|rst) == syn rt ipsec exists tcp option maxseg size set rt mtu }
//	}
//
// SYNs entering the core from a tunnel get at most mss (the peer's MSS
// describes its LAN, not the tunnel); SYNs and SYN-ACKs routed into a
// tunnel get the MSS of the XFRM bundle's MTU, which already accounts for
// the ESP-in-UDP overhead. The kernel only ever lowers an MSS option.
func installMSSClamp(ns netns.NsHandle, mss uint16) (*mssClamp, error) {
	if mss == 0 {
		mss = DefaultMSS
	}
	c, err := nftConn(ns)
	if err != nil {
		return nil, err
	}
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
		for _, t := range tables {
			if t.Name == MSSTable {
				c.DelTable(t)
				if err := c.Flush(); err != nil {
					return nil, fmt.Errorf("replace table %s: %w", MSSTable, err)
				}
			}
		}
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: MSSTable})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: mssRule(&expr.Meta{Key: nftMetaSecpath, Register: 1}, mss)})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: mssRule(&expr.Rt{Key: nftRtXFRM, Register: 1}, 0)})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: mssRule(&expr.Rt{Key: nftRtXFRM, Register: 1}, 0)})
	if err := c.Flush(); err != nil {
		return nil, err
	}
	return &mssClamp{ns: ns, table: t}, nil
}

// mssRule: TCP SYN without RST, cond (a boolean loaded into register 1) is
// 1, then set the MSS option to mss, or to the route's ("rt mtu") if 0.
func mssRule(cond expr.Any, mss uint16) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		cond,
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
	}
	if mss != 0 {
		e = append(e, &expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, mss)})
	} else {
		e = append(e, &expr.Rt{Key: expr.RtTCPMSS, Register: 1})
	}
	return append(e, &expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2, SourceRegister: 1})
}

func (m *mssClamp) remove() error {
	c, err := nftConn(m.ns)
	if err != nil {
		return err
	}
	c.DelTable(m.table)
	return c.Flush()
}
