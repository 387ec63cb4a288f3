package statestore_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ikefleet/ikefleet/statestore"
)

// A stand-alone node: embedded etcd in a data directory, one Store, an SA
// persisted when it is established, and the restore path of a restart.
func Example() {
	dir, _ := os.MkdirTemp("", "statestore-example")
	defer os.RemoveAll(dir)
	etcd, err := statestore.StartEmbedded(statestore.EmbedConfig{Dir: dir})
	if err != nil {
		panic(err)
	}
	defer etcd.Close()
	cli, err := statestore.Dial(etcd.Client())
	if err != nil {
		panic(err)
	}
	defer cli.Close()

	keys, _ := statestore.NewKeyring(1, bytes.Repeat([]byte{7}, statestore.ClusterKeyLen))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := statestore.Open(ctx, cli, statestore.Config{NodeID: "node-a", Keys: keys,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic(err)
	}
	defer st.Close()

	// Allocation: reserve SPIs ahead (create-if-absent, cluster-wide).
	me, slot := st.Registration()
	spi := statestore.SlotSPI(slot, 8, 0x1234)
	ok, _ := st.ReserveIKESPIs(ctx, []uint64{spi})
	fmt.Println("reserved:", ok[0])

	// Established: persist before sending the IKE_AUTH response.
	rec := &statestore.SARecord{SPIi: 0xaaaa, SPIr: spi, SKd: []byte("sk_d"),
		Children: []statestore.ChildRecord{{InSPI: 0xc0000001, OutSPI: 0x1}}}
	done := make(chan error, 1)
	st.Submit(statestore.Change{Kind: statestore.Established, Record: rec}, func(err error) { done <- err })
	fmt.Println("persisted:", <-done)

	// Before any send for an owned SA.
	fmt.Println("may send:", st.CanSend())

	// After a restart: the node's SAs come back.
	recs, _ := st.LoadOwned(ctx)
	fmt.Println("owned:", len(recs), recs[0].LocalSPI() == spi, me.Node)
	// Output:
	// reserved: true
	// persisted: <nil>
	// may send: true
	// owned: 1 true node-a
}
