package statestore

import (
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// countedTxn counts the writes of a committed transaction (Health.Puts,
// Health.Deletes): the puts and deletes in the branches that ran, nested
// transactions included, as etcd counts them (etcd_mvcc_put_total,
// etcd_mvcc_delete_total: a delete counts whether or not its key was
// there; not the keys etcd removes with an expired or revoked lease).
// etcd's work for an SA is mostly per key it writes
// (docs/architecture.md, "What one SA writes"), so these counts
// per SA are the store's footprint.
type countedTxn struct {
	clientv3.Txn
	s         *Store
	then, els []clientv3.Op
}

func (t *countedTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *countedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = ops
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *countedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.els = ops
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *countedTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	if err == nil {
		ran := t.els
		if r.Succeeded {
			ran = t.then
		}
		t.s.noteWritten(writtenBy(ran, r.Responses))
	}
	return r, err
}

func (s *Store) noteWritten(puts, deletes uint64) {
	s.puts.Add(puts)
	s.deletes.Add(deletes)
}

// writtenBy counts the puts and deletes among ops, descending into nested
// transactions along the branch each took (rs: the responses to ops, in
// order).
func writtenBy(ops []clientv3.Op, rs []*etcdserverpb.ResponseOp) (puts, deletes uint64) {
	for i := range min(len(ops), len(rs)) {
		switch op := &ops[i]; {
		case op.IsPut():
			puts++
		case op.IsDelete():
			deletes++
		case op.IsTxn():
			_, then, els := op.Txn()
			tr := rs[i].GetResponseTxn()
			ran := els
			if tr.GetSucceeded() {
				ran = then
			}
			p, d := writtenBy(ran, tr.GetResponses())
			puts, deletes = puts+p, deletes+d
		}
	}
	return puts, deletes
}
