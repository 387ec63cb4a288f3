package charttest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

const dockerfile = "../docker/Dockerfile"

// goVersion is the go directive of the main module's go.mod.
func goVersion(t *testing.T) string {
	t.Helper()
	for _, l := range strings.Split(string(readFile(t, "../../go.mod")), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "go" {
			return f[1]
		}
	}
	t.Fatal("no go directive in ../../go.mod")
	return ""
}

// commands are the cmd/ directories of the main module.
func commands(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("../../cmd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

var golangTag = regexp.MustCompile(`^golang:(\d+)\.(\d+)(?:\.(\d+))?(?:-[a-z0-9.]+)?$`)

// versionLess compares dotted versions numerically.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(pa), len(pb)); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// checkDockerfile parses src with BuildKit's Dockerfile parser and returns
// what is wrong with it as an image for ikefleet.
func checkDockerfile(src []byte, goMod string, cmds []string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return []string{"parse: " + err.Error()}
	}
	for _, w := range res.Warnings {
		bad("parser warning: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		bad("build check %s: %s", rule, msg)
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return append(problems, "instructions: "+err.Error())
	}
	if len(metaArgs) > 0 {
		bad("ARG before the first FROM: base images must be spelt out, pinned")
	}
	if len(stages) < 2 {
		return append(problems, fmt.Sprintf("%d stage(s): want a build stage and a runtime stage", len(stages)))
	}

	names := map[string]bool{}
	var buildStage *instructions.Stage
	for i := range stages {
		s := &stages[i]
		switch {
		case names[strings.ToLower(s.BaseName)]:
		case s.BaseName == "scratch":
		case !pinned(s.BaseName):
			bad("stage %d: FROM %s is not pinned to a tag (or digest)", i, s.BaseName)
		}
		if m := golangTag.FindStringSubmatch(s.BaseName); m != nil {
			v := m[1] + "." + m[2]
			if m[3] != "" {
				v += "." + m[3]
			}
			if versionLess(v, goMod) {
				bad("stage %d: FROM %s: Go %s is older than go.mod's go %s", i, s.BaseName, v, goMod)
			}
		}
		if s.Name != "" {
			names[strings.ToLower(s.Name)] = true
		}
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.AddCommand:
				for _, src := range c.SourcePaths {
					if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
						bad("stage %d: ADD %s fetches from the network; download in a RUN with a checksum, or COPY", i, src)
					}
				}
			case *instructions.RunCommand:
				if strings.Contains(strings.Join(c.CmdLine, " "), "go build") {
					buildStage = s
				}
			}
		}
	}

	// The build stage: static binaries, every command.
	if buildStage == nil {
		bad("no stage runs go build")
	} else {
		var cgoOff bool
		var binaries []string
		for _, c := range buildStage.Commands {
			switch c := c.(type) {
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					if kv.Key == "CGO_ENABLED" {
						cgoOff = kv.Value == "0"
					}
				}
			case *instructions.ArgCommand:
				for _, a := range c.Args {
					if a.Key == "BINARIES" && a.Value != nil {
						binaries = strings.Fields(strings.Trim(*a.Value, `"'`))
					}
				}
			}
		}
		if !cgoOff {
			bad("build stage: ENV CGO_ENABLED=0 missing: the runtime image has no C library")
		}
		want := append([]string{"concentratord", "concentratorctl", "ikeload"}, cmds...)
		slices.Sort(want)
		for _, want := range slices.Compact(want) {
			if !slices.Contains(binaries, want) {
				bad("build stage: ARG BINARIES %v lacks %s", binaries, want)
			}
		}
	}

	// The runtime stage: distroless or scratch, non-root, the daemon.
	final := &stages[len(stages)-1]
	if !strings.HasPrefix(final.BaseName, "gcr.io/distroless/static") && final.BaseName != "scratch" {
		bad("runtime stage: FROM %s, want gcr.io/distroless/static* or scratch", final.BaseName)
	}
	var user string
	var entrypoint []string
	var copied bool
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				bad("runtime stage: ENTRYPOINT in shell form (no shell in the image)")
			}
			entrypoint = c.CmdLine
		case *instructions.CopyCommand:
			if c.From == "" || !names[strings.ToLower(c.From)] {
				bad("runtime stage: COPY %v not from a build stage", c.SourcePaths)
			}
			if c.DestPath == "/usr/local/bin/" {
				copied = true
			}
		case *instructions.RunCommand:
			bad("runtime stage: RUN %v (no shell in the image)", c.CmdLine)
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "0" || u == "root" {
		bad("runtime stage: USER %q: the image must default to a non-root user", user)
	}
	if !copied {
		bad("runtime stage: binaries are not copied to /usr/local/bin/")
	}
	if len(entrypoint) != 1 || entrypoint[0] != "/usr/local/bin/concentratord" {
		bad("runtime stage: ENTRYPOINT %v, want [/usr/local/bin/concentratord]", entrypoint)
	}
	return problems
}

func TestDockerfile(t *testing.T) {
	for _, p := range checkDockerfile(readFile(t, dockerfile), goVersion(t), commands(t)) {
		t.Error(p)
	}
	ignore := string(readFile(t, dockerfile+".dockerignore"))
	for _, want := range []string{".git", "bin"} {
		if !slices.Contains(strings.Fields(ignore), want) {
			t.Errorf("%s.dockerignore does not exclude %s", filepath.Base(dockerfile), want)
		}
	}
}

// Each defect is reported: the check can fail.
func TestDockerfileCheckFinds(t *testing.T) {
	orig := string(readFile(t, dockerfile))
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unpinned builder", "FROM golang:1.26.8-bookworm AS build", "FROM golang AS build", "not pinned"},
		{"latest runtime", "static-debian12:nonroot AS runtime", "static-debian12:latest AS runtime", "not pinned"},
		{"old Go", "golang:1.26.8-bookworm", "golang:1.21.0-bookworm", "older than go.mod"},
		{"root user", "USER 65532:65532", "USER root", "non-root"},
		{"no user", "USER 65532:65532\n", "", "non-root"},
		{"ADD URL", "COPY --from=build /out/ /usr/local/bin/", "COPY --from=build /out/ /usr/local/bin/\nADD https://example.com/tool /usr/local/bin/tool", "fetches from the network"},
		{"cgo", "CGO_ENABLED=0", "CGO_ENABLED=1", "CGO_ENABLED=0"},
		{"binary missing", `ARG BINARIES="concentratord concentratorctl ikeload benchnode"`, `ARG BINARIES="concentratord ikeload benchnode"`, "lacks concentratorctl"},
		{"debian runtime", "FROM gcr.io/distroless/static-debian12:nonroot AS runtime", "FROM debian:bookworm-slim AS runtime", "want gcr.io/distroless/static"},
		{"shell entrypoint", `ENTRYPOINT ["/usr/local/bin/concentratord"]`, "ENTRYPOINT /usr/local/bin/concentratord", "shell form"},
		{"casing", "FROM golang:1.26.8-bookworm AS build", "FROM golang:1.26.8-bookworm as build", "build check FromAsCasing"},
		{"one stage", "FROM gcr.io/distroless/static-debian12:nonroot AS runtime", "", "stage"},
	} {
		if !strings.Contains(orig, tc.old) {
			t.Fatalf("%s: %q is not in %s", tc.name, tc.old, dockerfile)
		}
		src := strings.Replace(orig, tc.old, tc.new, 1)
		problems := checkDockerfile([]byte(src), goVersion(t), commands(t))
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
			t.Errorf("%s: no problem mentions %q; got %q", tc.name, tc.want, problems)
		}
	}
}
