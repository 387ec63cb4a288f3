package memory

import (
	"context"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

func TestSeqFields(t *testing.T) {
	ctx := context.Background()
	d := New()
	sa := &dataplane.ChildSA{InSPI: 0xc1, OutSPI: 0x61, OutSeq: 100, OutSeqLimit: 4196, OutSeqMargin: 2048, InSeqLow: 77}
	if err := d.Install(ctx, sa); err != nil {
		t.Fatal(err)
	}
	got, ok := d.Get(0xc1)
	if !ok || got.OutSeq != 100 || got.OutSeqLimit != 4196 || got.OutSeqMargin != 2048 || got.InSeqLow != 77 {
		t.Fatalf("recorded %+v", got)
	}
	if err := d.SetSeqLimit(ctx, 0xc1, 9000); err != nil {
		t.Fatal(err)
	}
	if err := d.SetSeqLimit(ctx, 0xc2, 9000); err == nil {
		t.Fatal("SetSeqLimit of an SA that is not installed")
	}
	l, _ := d.List(ctx)
	if len(l) != 1 || l[0].OutSeqLimit != 9000 || d.SeqLimitSets() != 1 || sa.OutSeqLimit != 4196 {
		t.Fatalf("after SetSeqLimit: %+v, %d sets; the caller's SA must not change", l, d.SeqLimitSets())
	}
	if !d.InjectProgress(dataplane.SeqProgress{InSPI: 0xc1, OutSeq: 5, InSeq: 6}) {
		t.Fatal("Report")
	}
	if p := <-d.SeqProgress(); p.InSPI != 0xc1 || p.OutSeq != 5 || p.InSeq != 6 {
		t.Fatalf("progress %+v", p)
	}
	d.Close()
	if err := d.SetSeqLimit(ctx, 0xc1, 1); err != dataplane.ErrClosed {
		t.Fatalf("after Close: %v", err)
	}
}
