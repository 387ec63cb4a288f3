// Package wycheproof reads Project Wycheproof test vector files for the
// known-answer tests of the suites (key exchange, AEAD) and of AUTH
// signature verification. The files are committed gzip-compressed and
// unmodified in the testdata of the packages that use them (see each
// testdata/wycheproof/README.md for their version); this package only
// decodes them and is imported by tests alone.
//
// Each vector's result is "valid" (must be accepted with the given
// output), "invalid" (must be refused) or "acceptable" (either, by the
// implementation's policy; the caller decides from the vector's flags).
package wycheproof

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/internal/vectors"
)

// File is one vector file; G is the type of its test groups.
type File[G any] struct {
	Algorithm     string `json:"algorithm"`
	NumberOfTests int    `json:"numberOfTests"`
	TestGroups    []G    `json:"testGroups"`
}

// Vector holds the fields every test vector has.
type Vector struct {
	ID      int      `json:"tcId"`
	Comment string   `json:"comment"`
	Flags   []string `json:"flags"`
	Result  string   `json:"result"`
}

// Has reports whether the vector carries flag.
func (v *Vector) Has(flag string) bool { return slices.Contains(v.Flags, flag) }

// Valid reports whether the vector must be accepted.
func (v *Vector) Valid() bool { return v.Result == "valid" }

// Invalid reports whether the vector must be refused.
func (v *Vector) Invalid() bool { return v.Result == "invalid" }

// Name identifies the vector in test failures.
func (v *Vector) Name() string {
	if v.Comment == "" {
		return fmt.Sprintf("tcId %d", v.ID)
	}
	return fmt.Sprintf("tcId %d (%s)", v.ID, v.Comment)
}

// Hex is a byte string written in hex in the files.
type Hex = vectors.Hex

// Load decodes the gzip-compressed vector file at path. It fails the test
// if the file is missing or malformed; count is called with each group
// and returns its number of vectors, which must add up to the file's
// numberOfTests (a schema the types do not match would otherwise leave
// vectors out unnoticed).
func Load[G any](tb testing.TB, path string, count func(*G) int) *File[G] {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	var out File[G]
	dec := json.NewDecoder(zr)
	if err := dec.Decode(&out); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	n := 0
	for i := range out.TestGroups {
		n += count(&out.TestGroups[i])
	}
	if n == 0 || n != out.NumberOfTests {
		tb.Fatalf("%s: %d vectors read, the file declares %d", path, n, out.NumberOfTests)
	}
	return &out
}
