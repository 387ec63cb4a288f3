package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// bar is a progress bar on stderr: redrawn in place on a terminal, a line
// at most every second (and the last one) otherwise, nothing when quiet.
type bar struct {
	w     io.Writer
	tty   bool
	quiet bool
	label string
	last  time.Time
	drawn bool
	prev  string // the last line drawn
	shown string // the last line printed (not a terminal)
	width int
}

func newBar(w io.Writer, label string, quiet bool) *bar {
	return &bar{w: w, tty: isTerminal(w), quiet: quiet, label: label, width: 30}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// update shows done of total (total 0: no bar, only the counts) and a
// detail text.
func (b *bar) update(done, total uint64, detail string) {
	if b.quiet {
		return
	}
	line := b.label
	if total > 0 {
		n := int(float64(b.width) * float64(min(done, total)) / float64(total))
		line += fmt.Sprintf(" [%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(".", b.width-n), done, total)
	}
	if detail != "" {
		line += " " + detail
	}
	if line == b.prev {
		return
	}
	b.prev = line
	if b.tty {
		fmt.Fprintf(b.w, "\r\033[K%s", line)
		b.drawn = true
		return
	}
	if time.Since(b.last) >= time.Second || (total > 0 && done >= total) {
		b.last = time.Now()
		b.shown = line
		fmt.Fprintln(b.w, line)
	}
}

// done ends the bar's line.
func (b *bar) done() {
	if b.quiet {
		return
	}
	if b.tty && b.drawn {
		fmt.Fprintln(b.w)
		b.drawn = false
	}
	if !b.tty && b.prev != b.shown {
		b.shown = b.prev
		fmt.Fprintln(b.w, b.prev)
	}
}

// follow reads a server stream of progress messages to its end, showing
// each on b through show, and returns the last one.
func follow[P any](stream interface{ Recv() (P, error) }, b *bar, show func(*bar, P)) (last P, err error) {
	defer b.done()
	for {
		p, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		last = p
		show(b, p)
	}
}
