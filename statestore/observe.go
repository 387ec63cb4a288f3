package statestore

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Observer is told of every key-value and lease request the client makes:
// method is the etcd gRPC method's name (Range, Put, DeleteRange, Txn,
// LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive).
type Observer func(method string, d time.Duration, err error)

// ObserveClient makes cli report its key-value and lease requests to obs.
// Dialled clients can use a gRPC interceptor instead; an in-process client
// (Embedded.LocalClient) has no gRPC connection to intercept, so the
// requests are timed here. Call it before the client is shared.
func ObserveClient(cli *clientv3.Client, obs Observer) {
	cli.KV = observedKV{cli.KV, obs}
	cli.Lease = observedLease{cli.Lease, obs}
}

type observedKV struct {
	clientv3.KV
	obs Observer
}

func (o observedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	t := time.Now()
	r, err := o.KV.Get(ctx, key, opts...)
	o.obs("Range", time.Since(t), err)
	return r, err
}

func (o observedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	t := time.Now()
	r, err := o.KV.Put(ctx, key, val, opts...)
	o.obs("Put", time.Since(t), err)
	return r, err
}

func (o observedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	t := time.Now()
	r, err := o.KV.Delete(ctx, key, opts...)
	o.obs("DeleteRange", time.Since(t), err)
	return r, err
}

func (o observedKV) Txn(ctx context.Context) clientv3.Txn { return &observedTxn{o.KV.Txn(ctx), o.obs} }

type observedTxn struct {
	clientv3.Txn
	obs Observer
}

func (t *observedTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *observedTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *observedTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *observedTxn) Commit() (*clientv3.TxnResponse, error) {
	start := time.Now()
	r, err := t.Txn.Commit()
	t.obs("Txn", time.Since(start), err)
	return r, err
}

type observedLease struct {
	clientv3.Lease
	obs Observer
}

func (o observedLease) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	t := time.Now()
	r, err := o.Lease.Grant(ctx, ttl)
	o.obs("LeaseGrant", time.Since(t), err)
	return r, err
}

func (o observedLease) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	t := time.Now()
	r, err := o.Lease.Revoke(ctx, id)
	o.obs("LeaseRevoke", time.Since(t), err)
	return r, err
}

func (o observedLease) KeepAliveOnce(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	t := time.Now()
	r, err := o.Lease.KeepAliveOnce(ctx, id)
	o.obs("LeaseKeepAlive", time.Since(t), err)
	return r, err
}

func (o observedLease) TimeToLive(ctx context.Context, id clientv3.LeaseID, opts ...clientv3.LeaseOption) (*clientv3.LeaseTimeToLiveResponse, error) {
	t := time.Now()
	r, err := o.Lease.TimeToLive(ctx, id, opts...)
	o.obs("LeaseTimeToLive", time.Since(t), err)
	return r, err
}
