package statestore

import (
	"bytes"
	"context"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestParseKeyring(t *testing.T) {
	k1, k2 := strings.Repeat("11", ClusterKeyLen), strings.Repeat("22", ClusterKeyLen)
	k, err := ParseKeyring([]byte(k1 + "\n"))
	if err != nil || k.Current() != 1 {
		t.Fatalf("one key: %v %v", k, err)
	}
	k, err = ParseKeyring([]byte("# rotated 2026-12\n1:" + k1 + "\n7: " + k2 + "  # newest\n"))
	if err != nil || k.Current() != 7 || len(k.IDs()) != 2 {
		t.Fatalf("two keys: %v", err)
	}
	for _, bad := range []string{"", "zz", k1 + "\n" + k2, "0:" + k1, "1:" + k1 + "\n1:" + k2, "x:" + k1, "2:" + k1[:10]} {
		if _, err := ParseKeyring([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Rotation: records sealed under key 1 stay readable with a keyring of
// keys 1 and 2; Rewrap rewrites them under key 2, after which key 1 is no
// longer needed.
func TestRewrapRotation(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 30*time.Second)
	old := testKeyring(t, 1, 9)
	cfg := testConfig(t, "a")
	cfg.Keys = old
	a := open(t, cli, cfg)
	const n = 30
	for i := 0; i < n; i++ {
		r := sampleRecord(uint64(1000 + i))
		for c := range r.Children {
			r.Children[c].InSPI = uint32(0x10000 + 16*i + c)
		}
		if err := a.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()

	both, err := ParseKeyring([]byte("1:" + hex.EncodeToString(bytes.Repeat([]byte{9}, ClusterKeyLen)) + "\n2:" +
		hex.EncodeToString(bytes.Repeat([]byte{7}, ClusterKeyLen)) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(t, "b")
	cfg.Keys = both
	b := open(t, cli, cfg)
	if rec, _, err := b.Load(ctx, 1000); err != nil || rec.SPIr != 1000 {
		t.Fatalf("old record with both keys: %v", err)
	}
	pages := 0
	st, err := b.Rewrap(ctx, func(RewrapStats) { pages++ })
	if err != nil {
		t.Fatal(err)
	}
	if st.Rewritten < n || st.Failed != 0 || pages == 0 {
		t.Fatalf("rewrap: %+v after %d pages", st, pages)
	}
	again, err := b.Rewrap(ctx, nil)
	if err != nil || again.Rewritten != 0 {
		t.Fatalf("second pass rewrote %+v %v", again, err)
	}
	// Key 1 gone: every record still opens.
	if err := both.Remove(1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if _, _, err := b.Load(context.Background(), uint64(1000+i)); err != nil {
			t.Fatalf("record %d after rewrap without key 1: %v", 1000+i, err)
		}
	}
}
