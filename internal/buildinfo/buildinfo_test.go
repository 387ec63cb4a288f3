package buildinfo

import "testing"

func TestGet(t *testing.T) {
	if v := Get(); v == "" {
		t.Fatal("empty version")
	}
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "v9.9.9"
	if v := Get(); v != "v9.9.9" {
		t.Fatalf("Get with Version set = %q", v)
	}
}
