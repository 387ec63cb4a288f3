package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// parseFlags parses args with fs. --help prints the usage to stdout and
// returns errHelp; an unknown flag, a bad value or a flag after a
// positional argument is a usageError. It returns the positional
// arguments, of which there may be at most maxArgs (-1: any number).
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int, stdout io.Writer, synopsis string) ([]string, error) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(fs, stdout, synopsis)
		return nil, errHelp
	}
	if err != nil {
		return nil, usageError{err.Error()}
	}
	rest := fs.Args()
	for i, a := range rest {
		if a == "--" {
			rest = append(rest[:i:i], rest[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			if a == "-h" || a == "--help" || a == "-help" {
				printUsage(fs, stdout, synopsis)
				return nil, errHelp
			}
			return nil, usagef("flag %s after the argument %q: flags go before arguments", a, rest[0])
		}
	}
	if maxArgs >= 0 && len(rest) > maxArgs {
		if maxArgs == 0 {
			return nil, usagef("unexpected argument %q (this command takes only flags)", rest[0])
		}
		return nil, usagef("too many arguments: %q", rest)
	}
	return rest, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer, synopsis string) {
	fmt.Fprintln(w, strings.TrimSpace(synopsis))
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
