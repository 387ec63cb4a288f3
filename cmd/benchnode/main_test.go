package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]string{"memory+none": "memory+none", "userspace+embedded": "userspace+embedded", "strongswan": "strongswan"} {
		s, err := parseSpec(in)
		if err != nil || s.String() != want {
			t.Errorf("parseSpec(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, in := range []string{"memory", "xfrm+none", "memory+external", "strongswan+none"} {
		if _, err := parseSpec(in); err == nil {
			t.Errorf("parseSpec(%q): no error", in)
		}
	}
}

// Without charon the strongSwan row is skipped, saying why, and the run
// goes on.
func TestStrongSwanRowSkippedWithoutCharon(t *testing.T) {
	o := options{charon: t.TempDir() + "/no-charon"}
	var skip errSkipped
	if err := o.charonReady(); !errors.As(err, &skip) || !strings.Contains(skip.why, "no-charon") {
		t.Fatalf("charonReady = %v, want a skip naming the missing binary", err)
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--rows", "strongswan", "--burst", "0", "--pin=false",
		"--charon", o.charon, "--engine-cpu", "100us", "--concentratord", "/dev/null"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "strongswan           skipped: no ") {
		t.Fatalf("no skipped row in:\n%s", out.String())
	}
}

func TestSampleOf(t *testing.T) {
	const (
		drops = `ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="0",socket="ike"} 7`
		bare  = `ikefleet_statestore_txns_total 12`
	)
	for _, c := range []struct {
		line, name string
		want       float64
		ok         bool
	}{
		{drops, "ikefleet_queue_drops_total", 7, true},
		{drops, `ikefleet_queue_drops_total{queue="other"}`, 7, true},
		{drops, `ikefleet_queue_drops_total{socket="ike",queue="other"}`, 7, true},
		{drops, `ikefleet_queue_drops_total{queue="new"}`, 0, false},
		{drops, `ikefleet_queue_drops_total{queue="other",socket="natt"}`, 0, false},
		{drops, "ikefleet_queue_drops", 0, false}, // a prefix of the family's name
		{bare, "ikefleet_statestore_txns_total", 12, true},
		{bare, `ikefleet_statestore_txns_total{queue="other"}`, 0, false},
		{"# TYPE ikefleet_statestore_txns_total counter", "ikefleet_statestore_txns_total", 0, false},
	} {
		v, ok := sampleOf(c.line, c.name)
		if v != c.want || ok != c.ok {
			t.Errorf("sampleOf(%q, %q) = %v, %v; want %v, %v", c.line, c.name, v, ok, c.want, c.ok)
		}
	}
}
