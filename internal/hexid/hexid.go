// Package hexid formats SPIs and other identifiers as zero-padded
// lower-case hex (as fmt's %016x and %08x) without fmt: state-store keys
// and SA log lines are built for every SA.
package hexid

const digitChars = "0123456789abcdef"

// Append appends v's low digits hex digits (at most 16) to dst.
func Append(dst []byte, v uint64, digits int) []byte {
	var d [16]byte
	for i := digits - 1; i >= 0; i-- {
		d[i] = digitChars[v&0xf]
		v >>= 4
	}
	return append(dst, d[:digits]...)
}

// String is Append as a string.
func String(v uint64, digits int) string {
	var d [16]byte
	return string(Append(d[:0], v, digits))
}
