package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ikefleet/ikefleet/loadtest"
)

const compareSynopsis = `
Usage: ikeload compare [--html FILE] [--json FILE] [--baseline LABEL] REPORT.json...

Puts the JSON reports of several runs (ikeload --json-out) side by side:
prints, per scenario and authentication, each run's setups per second,
setups per CPU-second of the responder (--target-pid), p99 setup latency
and, against the run labelled --baseline, their ratios; writes one HTML
report with every run's plots overlaid.`

func compare(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ikeload compare", flag.ContinueOnError)
	html := fs.String("html", "", "write the combined HTML report here")
	jsonOut := fs.String("json", "", "write the comparison (JSON) here")
	baseline := fs.String("baseline", "", "label of the run the others are compared with (default: the last label)")
	files, err := parseFlags(fs, args, -1, stdout, compareSynopsis)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usagef("compare: no reports given")
	}
	var reps []loadtest.Report
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r loadtest.Report
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if r.Label == "" {
			r.Label = f
		}
		reps = append(reps, r)
	}
	cmp := loadtest.Compare(reps, *baseline)
	loadtest.WriteComparison(stdout, cmp)
	if *jsonOut != "" {
		if err := writeJSON(*jsonOut, cmp); err != nil {
			return err
		}
	}
	if *html != "" {
		if err := writeHTML(*html, reps...); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "HTML report: %s\n", *html)
	}
	return nil
}
