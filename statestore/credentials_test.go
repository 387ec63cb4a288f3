package statestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestCredentialStore(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	ctx := tctx(t, time.Minute)

	// b follows from an empty set.
	rev, err := b.LoadCredentials(ctx, func(Credential) { t.Error("empty store loaded a credential") }, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]byte{}
	var badKeys []string // records the watch could not open
	wctx, wcancel := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() {
		werr <- b.WatchCredentials(wctx, rev, func(_ int64, id string, c *Credential) {
			mu.Lock()
			defer mu.Unlock()
			if c == nil {
				seen[id] = nil
				return
			}
			seen[id] = c.Secret
		}, func(key string, err error) {
			mu.Lock()
			badKeys = append(badKeys, key)
			mu.Unlock()
		})
	}()

	psk := []byte("device-psk-0123456789abcdef")
	if _, err := a.PutCredentials(ctx, []Credential{
		{ID: "gw1@iot.example", Kind: CredentialPSK, Secret: psk},
		{ID: "gw2.iot.example", Kind: CredentialPubKey, Secret: []byte("0Y0\x13 a DER key")},
	}); err != nil {
		t.Fatal(err)
	}
	c, err := b.GetCredential(ctx, "gw1@iot.example")
	if err != nil || !bytes.Equal(c.Secret, psk) || c.Kind != CredentialPSK {
		t.Fatalf("get: %+v %v", c, err)
	}
	// The PSK is sealed: it is not in etcd in clear, and a record copied
	// under another identity does not open.
	raw, err := cli.Get(ctx, a.k.cred("gw1@iot.example"))
	if err != nil || bytes.Contains(raw.Kvs[0].Value, psk) {
		t.Fatalf("PSK stored in clear: %s", raw.Kvs[0].Value)
	}
	if _, err := cli.Put(ctx, a.k.cred("gw9@iot.example"), string(raw.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetCredential(ctx, "gw9@iot.example"); !errors.As(err, new(*SealError)) {
		t.Fatalf("a record moved to another identity opened: %v", err)
	}
	if _, err := cli.Delete(ctx, a.k.cred("gw9@iot.example")); err != nil {
		t.Fatal(err)
	}

	// Rotate and revoke; b's watch sees both.
	if _, err := a.PutCredentials(ctx, []Credential{{ID: "gw1@iot.example", Kind: CredentialPSK, Secret: []byte("rotated-psk-0123456789abcdef")}}); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.DeleteCredential(ctx, "gw2.iot.example"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if ok, _ := a.DeleteCredential(ctx, "gw2.iot.example"); ok {
		t.Fatal("deleted twice")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done := string(seen["gw1@iot.example"]) == "rotated-psk-0123456789abcdef" && seen["gw2.iot.example"] == nil && len(seen) >= 2
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch saw %q", seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wcancel()
	<-werr
	if len(badKeys) != 1 || badKeys[0] != a.k.cred("gw9@iot.example") {
		t.Fatalf("watch reported as bad: %q (want the moved record only)", badKeys)
	}

	list, total, err := b.ListCredentials(ctx, "", 10)
	if err != nil || total != 1 || len(list) != 1 || list[0].Secret != nil || list[0].ID != "gw1@iot.example" {
		t.Fatalf("list: %+v total %d %v", list, total, err)
	}

	// Bad input is refused whole.
	for _, bad := range []Credential{
		{ID: "", Kind: CredentialPSK, Secret: psk},
		{ID: "gw3", Kind: "password", Secret: psk},
		{ID: "gw3", Kind: CredentialPSK},
	} {
		if _, err := a.PutCredentials(ctx, []Credential{{ID: "ok@x", Kind: CredentialPSK, Secret: psk}, bad}); !errors.As(err, new(*CredentialError)) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if _, err := b.GetCredential(ctx, "ok@x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused batch wrote: %v", err)
	}
}

// BenchmarkCredentialImport imports b.N credentials in batches (the bulk
// import path) and then loads the whole set as a node does at start.
func BenchmarkCredentialImport(b *testing.B) {
	e := startEtcd(b, true)
	cli := dial(b, e.Endpoints())
	s := open(b, cli, testConfig(b, "a"))
	ctx := context.Background()
	cs := make([]Credential, b.N)
	for i := range cs {
		cs[i] = Credential{ID: fmt.Sprintf("gw%06d@iot.example", i), Kind: CredentialPSK, Secret: []byte(fmt.Sprintf("psk-of-device-%06d-0123456789", i))}
	}
	b.ResetTimer()
	t0 := time.Now()
	if n, err := s.PutCredentials(ctx, cs); err != nil || n != b.N {
		b.Fatal(n, err)
	}
	imp := time.Since(t0)
	t1 := time.Now()
	n := 0
	if _, err := s.LoadCredentials(ctx, func(Credential) { n++ }, func(k string, err error) { b.Fatal(k, err) }); err != nil || n != b.N {
		b.Fatal(n, err)
	}
	b.ReportMetric(float64(imp.Microseconds())/float64(b.N), "import-us/cred")
	b.ReportMetric(float64(time.Since(t1).Microseconds())/float64(b.N), "load-us/cred")
}
