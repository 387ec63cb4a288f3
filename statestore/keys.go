package statestore

import (
	"fmt"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ikefleet/ikefleet/internal/hexid"
)

// Key layout under the prefix:
//
//	nodes/<id>            Node, on the node's lease; epoch = its create revision
//	slots/<n>             node id, on the node's lease
//	owner/<ike-spi>       "<node id>/<epoch>"
//	owned/<id>/<ike-spi>  "" (index of owner records by node; layouts 2
//	                      and 3 only: readers list owner/ instead)
//	sa/<ike-spi>          Record (sealed); empty on the lease while the IKE
//	                      SPI is only reserved (ReserveIKESPIs)
//	seq/<ike-spi>         SeqRecord: reservations renewed since the Record
//	                      (empty on the lease with sa/ while reserved);
//	                      not written from layout 5, whose records hold
//	                      their reservations (reservations_inline)
//	spi/ike/<ike-spi>     node id: written by releases before the record keys
//	                      reserved the SPI; deleted with its SA
//	spi/esp/<esp-spi>     node id; on the lease until its CHILD SA is stored
//	layout                the cluster's store layout (layout.go); absent: 2
//
// <ike-spi> is our (local) IKE SPI in 16 hex digits, <esp-spi> an inbound
// ESP SPI in 8.

type keys struct{ p string }

func (k keys) node(id string) string    { return k.p + "nodes/" + id }
func (k keys) layout() string           { return k.p + "layout" }
func (k keys) slots() string            { return k.p + "slots/" }
func (k keys) slot(n int) string        { return fmt.Sprintf("%sslots/%05d", k.p, n) }
func (k keys) owner(spi uint64) string  { return hexKey(k.p, "owner/", spi, 16) }
func (k keys) ownedBy(id string) string { return k.p + "owned/" + id + "/" }
func (k keys) owned(id string, spi uint64) string {
	return hexKey(k.p+"owned/", id+"/", spi, 16)
}
func (k keys) sa(spi uint64) string     { return hexKey(k.p, "sa/", spi, 16) }
func (k keys) seq(spi uint64) string    { return hexKey(k.p, "seq/", spi, 16) }
func (k keys) ikeSPI(spi uint64) string { return hexKey(k.p, "spi/ike/", spi, 16) }
func (k keys) espSPI(spi uint32) string { return hexKey(k.p, "spi/esp/", uint64(spi), 8) }

// appendSADeletes appends the deletes of SA spi's own keys, owned by
// node, in store layout layout: its record and its owner, its
// reservations key if seq (false: it is known to have none, as SAs
// stored in layout 5 have not; a delete costs etcd a lookup even when
// the key is absent), before layout 4 its owned/ index entry, and in
// layout 2 the spi/ike/ key written by releases before ReserveIKESPIs
// used the record keys.
func (k keys) appendSADeletes(ops []clientv3.Op, spi uint64, node string, layout int, seq bool) []clientv3.Op {
	ops = append(ops,
		opDelete(k.sa(spi)),
		opDelete(k.owner(spi)))
	if seq {
		ops = append(ops, opDelete(k.seq(spi)))
	}
	if layout < ownedGone {
		ops = append(ops, clientv3.OpDelete(k.owned(node, spi)))
	}
	if layout < 3 {
		ops = append(ops, clientv3.OpDelete(k.ikeSPI(spi)))
	}
	return ops
}

// appendOwnedPut appends, before store layout 4, the owned/ index entry
// of SA spi for node: the index releases of layouts 2 and 3 list a
// node's SAs by.
func (k keys) appendOwnedPut(ops []clientv3.Op, spi uint64, node string, layout int) []clientv3.Op {
	if layout >= ownedGone {
		return ops
	}
	return append(ops, clientv3.OpPut(k.owned(node, spi), ""))
}

// appendOwnedMove appends, before store layout 4, the move of SA spi's
// owned/ index entry from node from to node to.
func (k keys) appendOwnedMove(ops []clientv3.Op, spi uint64, from, to string, layout int) []clientv3.Op {
	if layout >= ownedGone || from == to {
		return ops
	}
	return append(ops, clientv3.OpDelete(k.owned(from, spi)), clientv3.OpPut(k.owned(to, spi), ""))
}

// saName is the record's name within the prefix; it is the AAD of the
// sealed key material, so changing the prefix does not orphan records.
func saName(spi uint64) string { return hexKey("", "sa/", spi, 16) }

// seqName is the reservation record's name within the prefix (its AAD).
func seqName(spi uint64) string { return hexKey("", "seq/", spi, 16) }

// hexKey is a+b+v, v in lower-case hex zero-padded to digits (at most
// 16; v must fit): fmt.Sprintf("%s%s%016x") in one allocation, as keys
// are built for every operation of every change.
func hexKey(a, b string, v uint64, digits int) string {
	var d [16]byte
	var sb strings.Builder
	sb.Grow(len(a) + len(b) + digits)
	sb.WriteString(a)
	sb.WriteString(b)
	sb.Write(hexid.Append(d[:0], v, digits))
	return sb.String()
}

// Owner names a node registration: the node id and its epoch.
type Owner struct {
	Node  string
	Epoch int64
}

func (o Owner) String() string { return o.Node + "/" + strconv.FormatInt(o.Epoch, 10) }

func (o Owner) value() string { return o.String() }

func parseOwner(b []byte) (Owner, error) {
	s := string(b)
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return Owner{}, fmt.Errorf("statestore: bad owner record %q", s)
	}
	e, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil || e <= 0 {
		return Owner{}, fmt.Errorf("statestore: bad owner record %q", s)
	}
	return Owner{Node: s[:i], Epoch: e}, nil
}

func parseSPIKey(key, prefix string) (uint64, bool) {
	if !strings.HasPrefix(key, prefix) {
		return 0, false
	}
	v, err := strconv.ParseUint(key[len(prefix):], 16, 64)
	return v, err == nil
}

// SlotSPI builds a locally allocated SPI that carries the node's slot in
// its top slotBits bits (a routing hint for half-open SAs, docs/architecture.md);
// the rest comes from random. Reserve the result before use.
func SlotSPI(slot int, slotBits uint, random uint64) uint64 {
	if slotBits == 0 || slotBits >= 64 {
		return random
	}
	shift := 64 - slotBits
	return uint64(slot)<<shift | random&(1<<shift-1)
}

// SlotOf extracts the slot that SlotSPI put into spi.
func SlotOf(spi uint64, slotBits uint) int {
	if slotBits == 0 || slotBits >= 64 {
		return 0
	}
	return int(spi >> (64 - slotBits))
}
