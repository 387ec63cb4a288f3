package statestore

import (
	"bytes"
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// recordingKV is a KV client that keeps the transaction requests a
// client built, answering each with an empty success.
type recordingKV struct {
	pb.KVClient
	got []*pb.TxnRequest
}

func (k *recordingKV) Txn(_ context.Context, r *pb.TxnRequest, _ ...grpc.CallOption) (*pb.TxnResponse, error) {
	k.got = append(k.got, r)
	return &pb.TxnResponse{Header: &pb.ResponseHeader{}, Succeeded: true}, nil
}

// The operations ops.go builds are the ones clientv3's constructors
// build: the client turns both into the same request.
func TestOpsAsTheClientBuildsThem(t *testing.T) {
	rec := &recordingKV{}
	kv := clientv3.NewKVFromKVClient(rec, nil)
	request := func(ops ...clientv3.Op) []byte {
		t.Helper()
		if _, err := kv.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		b, err := rec.got[len(rec.got)-1].Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	value := []byte("\x00sealed record\xff")
	for _, c := range []struct {
		name      string
		ours, std clientv3.Op
	}{
		{"put", opPut("/p/sa/0000000000000001", value), clientv3.OpPut("/p/sa/0000000000000001", string(value))},
		{"put of a string", opPutString("/p/owner/1", "a/7"), clientv3.OpPut("/p/owner/1", "a/7")},
		{"put of nothing", opPutString("/p/owned/a/1", ""), clientv3.OpPut("/p/owned/a/1", "")},
		{"delete", opDelete("/p/sa/1"), clientv3.OpDelete("/p/sa/1")},
		{"get", opGet("/p/owner/1"), clientv3.OpGet("/p/owner/1")},
		{"get of the key alone", opGetKeysOnly("/p/sa/1"), clientv3.OpGet("/p/sa/1", clientv3.WithKeysOnly())},
		{"get of a prefix", opGetPrefix("/p/ident/gw/"), clientv3.OpGet("/p/ident/gw/", clientv3.WithPrefix())},
		{"get of a prefix ending in 0xff", opGetPrefix("/p/x\xff"), clientv3.OpGet("/p/x\xff", clientv3.WithPrefix())},
		{"put on a lease", putsOnLease(0x1234)("/p/spi/esp/0000002a", "a"), clientv3.OpPut("/p/spi/esp/0000002a", "a", clientv3.WithLease(0x1234))},
		{"put of nothing on a lease", putsOnLease(0x1234)("/p/sa/2a", ""), clientv3.OpPut("/p/sa/2a", "", clientv3.WithLease(0x1234))},
	} {
		if ours, std := request(c.ours), request(c.std); !bytes.Equal(ours, std) || len(std) == 0 {
			t.Errorf("%s: %q, the client's %q", c.name, ours, std)
		}
	}
	// A blank is copied, never changed.
	a, b := opDelete("/p/a"), opDelete("/p/b")
	if string(a.KeyBytes()) != "/p/a" || string(b.KeyBytes()) != "/p/b" || string(blankDelete.KeyBytes()) != "-" {
		t.Fatalf("keys %q %q, the blank's %q", a.KeyBytes(), b.KeyBytes(), blankDelete.KeyBytes())
	}
}
