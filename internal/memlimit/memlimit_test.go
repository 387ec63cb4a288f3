package memlimit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Setting
	}{
		{"", Setting{}}, {"auto", Setting{}}, {"off", Setting{Off: true}},
		{"1536MiB", Setting{Bytes: 1536 << 20}}, {"2GiB", Setting{Bytes: 2 << 30}},
		{"1073741824", Setting{Bytes: 1 << 30}}, {"1048576KiB", Setting{Bytes: 1 << 30}},
		{"2 GiB", Setting{Bytes: 2 << 30}}, {"1TiB", Setting{Bytes: 1 << 40}},
	} {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"1.5GiB", "10MiB", "-1", "0", "2GB", "lots", "9999999999TiB"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
}

// tree writes files (path → contents) under a new directory.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range files {
		f := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupLimit(t *testing.T) {
	const noLimitV1 = "9223372036854771712\n"
	for _, c := range []struct {
		name  string
		files map[string]string
		self  string
		want  int64
		from  string
	}{
		{"v2 under systemd: the slice's limit is lower than the service's",
			map[string]string{"cgroup.controllers": "memory", "system.slice/memory.max": "1073741824\n",
				"system.slice/c.service/memory.max": "2147483648\n"},
			"0::/system.slice/c.service\n", 1 << 30, "system.slice/memory.max"},
		{"v2 in a container: the host's path is not mounted, the mount's root is the pod's cgroup",
			map[string]string{"cgroup.controllers": "memory", "memory.max": "536870912\n"},
			"0::/kubepods/burstable/pod1/abc\n", 512 << 20, "memory.max"},
		{"v2 without a limit",
			map[string]string{"cgroup.controllers": "memory", "a/memory.max": "max\n"},
			"0::/a\n", 0, ""},
		{"hybrid host: v1 memory hierarchy, no limit",
			map[string]string{"unified/cgroup.controllers": "", "memory/memory.limit_in_bytes": noLimitV1,
				"memory/process_api/x/memory.limit_in_bytes": noLimitV1},
			"4:memory:/process_api/x\n0::/\n", 0, ""},
		{"hybrid host: v1 limit on the process's cgroup",
			map[string]string{"unified/cgroup.controllers": "", "memory/memory.limit_in_bytes": noLimitV1,
				"memory/process_api/x/memory.limit_in_bytes": "268435456\n"},
			"9:name=systemd:/\n4:memory:/process_api/x\n0::/\n", 256 << 20, "memory/process_api/x/memory.limit_in_bytes"},
		{"v1 with controllers joined",
			map[string]string{"memory/k/memory.limit_in_bytes": "335544320"},
			"3:cpu,memory:/k\n", 320 << 20, "memory/k/memory.limit_in_bytes"},
		{"no cgroup file systems", map[string]string{}, "0::/\n", 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := tree(t, c.files)
			got, from, err := CgroupLimit(root, []byte(c.self))
			if err != nil {
				t.Fatal(err)
			}
			want := ""
			if c.from != "" {
				want = filepath.Join(root, filepath.FromSlash(c.from))
			}
			if got != c.want || from != want {
				t.Fatalf("%d from %q, want %d from %q", got, from, c.want, want)
			}
		})
	}
	root := tree(t, map[string]string{"cgroup.controllers": "", "a/memory.max": "lots\n"})
	if _, _, err := CgroupLimit(root, []byte("0::/a\n")); err == nil || !strings.Contains(err.Error(), "lots") {
		t.Fatalf("a garbled limit: %v", err)
	}
}

// TestApplyInCgroup runs a process in a memory cgroup of its own with a
// 256 MiB limit: auto sets the Go soft limit to Share of it, GOMEMLIMIT in
// the environment wins, and off leaves it unset. Needs root and a writable
// memory cgroup hierarchy (v1 or v2).
func TestApplyInCgroup(t *testing.T) {
	if os.Getenv("MEMLIMIT_CHILD") != "" {
		return // TestHelperChild does the work
	}
	const limit = 256 << 20
	limitFile, procs := newMemoryCgroup(t, limit)
	run := func(setting string, env ...string) string {
		t.Helper()
		cmd := exec.Command("sh", "-c", `echo $$ > "$0" && exec "$@"`, procs, os.Args[0], "-test.run=^TestHelperChild$")
		cmd.Env = append(append(os.Environ(), "MEMLIMIT_CHILD="+setting), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "applied "); ok {
				return v
			}
		}
		t.Fatalf("child said nothing:\n%s", out)
		return ""
	}
	lim := int64(limit)
	want := int64(float64(lim) * Share)
	if got := run("auto"); got != fmt.Sprintf("%d %s", want, limitFile) {
		t.Fatalf("auto in a 256 MiB cgroup: %s, want %d from %s", got, want, limitFile)
	}
	if got := run("auto", "GOMEMLIMIT=100MiB"); got != fmt.Sprintf("%d GOMEMLIMIT", 100<<20) {
		t.Fatalf("auto with GOMEMLIMIT: %s", got)
	}
	if got := run("off"); got != fmt.Sprintf("%d none", int64(1<<63-1)) {
		t.Fatalf("off: %s", got)
	}
	if got := run("128MiB"); got != fmt.Sprintf("%d node.memory_limit", 128<<20) {
		t.Fatalf("128MiB: %s", got)
	}
}

func TestHelperChild(t *testing.T) {
	v := os.Getenv("MEMLIMIT_CHILD")
	if v == "" {
		return // a child of TestApplyInCgroup only
	}
	s, err := Parse(v)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Apply(s, "/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != a.Limit {
		t.Fatalf("runtime limit %d, Apply says %d", got, a.Limit)
	}
	fmt.Printf("applied %d %s\n", a.Limit, a.Source)
}

// newMemoryCgroup makes a memory cgroup with limit bytes (removed at the
// end of the test) and returns its limit file and its procs file.
func newMemoryCgroup(t *testing.T, limit int64) (limitFile, procs string) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI: %s", why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		skip("needs root to make a memory cgroup")
	}
	name := "ikefleet-memlimit-" + strconv.Itoa(os.Getpid())
	candidates := []struct{ parent, file string }{
		{"/sys/fs/cgroup", "memory.max"},                   // v2
		{"/sys/fs/cgroup/memory", "memory.limit_in_bytes"}, // v1
	}
	for _, c := range candidates {
		if c.file == "memory.max" {
			ctl, err := os.ReadFile(filepath.Join(c.parent, "cgroup.subtree_control"))
			if err != nil || !strings.Contains(string(ctl), "memory") {
				continue
			}
		} else if _, err := os.Stat(filepath.Join(c.parent, "memory.limit_in_bytes")); err != nil {
			continue
		}
		dir := filepath.Join(c.parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() {
			if err := os.Remove(dir); err != nil {
				t.Logf("cgroup %s: %v", dir, err)
			}
		})
		limitFile = filepath.Join(dir, c.file)
		if err := os.WriteFile(limitFile, []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
			t.Fatalf("%s: %v", limitFile, err)
		}
		return limitFile, filepath.Join(dir, "cgroup.procs")
	}
	skip("no writable memory cgroup hierarchy (v2 with the memory controller, or v1) under /sys/fs/cgroup")
	return "", ""
}
