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

const mergeSynopsis = `
Usage: ikeload merge --json-out FILE [--label LABEL] [--html FILE] REPORT.json...

Combines the JSON reports of ikeload processes that loaded one responder at
the same time, each with its own range of gateways (--first, --count): a
fleet larger than one process's open file limit. Counts add up, the
timelines are summed on the wall clock and the setup rate against the fleet
size is measured on the sum; each latency figure is the worst of the parts'.
Prints the merged summary.`

func merge(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ikeload merge", flag.ContinueOnError)
	jsonOut := fs.String("json-out", "", "write the merged report (JSON) here (required)")
	html := fs.String("html", "", "write its HTML report here")
	label := fs.String("label", "", "label of the merged run (default: the first report's)")
	files, err := parseFlags(fs, args, -1, stdout, mergeSynopsis)
	if err != nil {
		return err
	}
	if len(files) == 0 || *jsonOut == "" {
		return usagef("merge: need --json-out and at least one report")
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
		reps = append(reps, r)
	}
	m, err := loadtest.Merge(reps, *label)
	if err != nil {
		return err
	}
	writeSummary(stdout, m)
	if err := writeJSON(*jsonOut, m); err != nil {
		return err
	}
	if *html != "" {
		if err := writeHTML(*html, m); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "HTML report: %s\n", *html)
	}
	return nil
}
