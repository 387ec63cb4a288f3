package statestore

import clientv3 "go.etcd.io/etcd/client/v3"

// The operations of the batcher's changes, built without clientv3's
// constructors. Those apply their options through a pointer to the Op
// they return, so each Op (240 bytes) moved to the heap; OpGet and
// OpDelete also allocated two more to check their options for WithPrefix
// and WithFromKey together: 250 bytes for a put, 730 for a delete or a
// get, about 7 KB of garbage per SA's setup and delete in the batcher
// (BenchmarkBuild). Here a blank operation of each kind, made once by the
// constructor, is copied and given its key (and value): the same Op, as
// TestOpsAsTheClientBuildsThem checks against the requests clientv3 makes
// of both.
var (
	blankPut      = clientv3.OpPut("-", "")
	blankDelete   = clientv3.OpDelete("-")
	blankGet      = clientv3.OpGet("-")
	blankKeysOnly = clientv3.OpGet("-", clientv3.WithKeysOnly())
)

// keyed is blank (one of the blank operations) with key k.
func keyed(blank clientv3.Op, k string) clientv3.Op {
	blank.WithKeyBytes([]byte(k))
	return blank
}

// opPut is clientv3.OpPut(k, string(v)), v not copied: it must not change
// until the transaction is sent.
func opPut(k string, v []byte) clientv3.Op {
	op := keyed(blankPut, k)
	op.WithValueBytes(v)
	return op
}

// opPutString is clientv3.OpPut(k, v).
func opPutString(k, v string) clientv3.Op { return opPut(k, []byte(v)) }

// opDelete is clientv3.OpDelete(k).
func opDelete(k string) clientv3.Op { return keyed(blankDelete, k) }

// opGet is clientv3.OpGet(k).
func opGet(k string) clientv3.Op { return keyed(blankGet, k) }

// opGetKeysOnly is clientv3.OpGet(k, clientv3.WithKeysOnly()).
func opGetKeysOnly(k string) clientv3.Op { return keyed(blankKeysOnly, k) }

// opGetPrefix is clientv3.OpGet(k, clientv3.WithPrefix()), k not empty.
func opGetPrefix(k string) clientv3.Op {
	op := opGet(k)
	op.WithRangeBytes([]byte(clientv3.GetPrefixRangeEnd(k)))
	return op
}

// putsOnLease returns a maker of clientv3.OpPut(k, v,
// clientv3.WithLease(lease)): copies of one such put, made once.
func putsOnLease(lease clientv3.LeaseID) func(k, v string) clientv3.Op {
	blank := clientv3.OpPut("-", "", clientv3.WithLease(lease))
	return func(k, v string) clientv3.Op {
		op := keyed(blank, k)
		op.WithValueBytes([]byte(v))
		return op
	}
}
