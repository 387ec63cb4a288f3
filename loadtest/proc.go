package loadtest

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// /proc reports CPU times in USER_HZ, which is 100 on every Linux ABI.
const userHZ = 100

// procStat is one reading of a process's CPU time and resident set.
type procStat struct {
	at     time.Time
	cpu    time.Duration // user + system
	rssKiB int64
}

// readProc reads /proc/PID/stat (utime, stime) and /proc/PID/status
// (VmRSS). pid 0 reads our own process.
func readProc(pid int) (procStat, error) {
	dir := "/proc/self"
	if pid > 0 {
		dir = "/proc/" + strconv.Itoa(pid)
	}
	st := procStat{at: time.Now()}
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return st, err
	}
	cpu, err := parseStatCPU(b)
	if err != nil {
		return st, fmt.Errorf("%s/stat: %w", dir, err)
	}
	st.cpu = cpu
	b, err = os.ReadFile(dir + "/status")
	if err != nil {
		return st, err
	}
	st.rssKiB = parseStatusRSS(b)
	return st, nil
}

// parseStatCPU returns utime+stime from a /proc/PID/stat line. The command
// name in parentheses may hold spaces and parentheses: fields are counted
// after its last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command field")
	}
	f := strings.Fields(string(b[i+1:]))
	// After the command: state(3) ppid(4) ... utime(14) stime(15).
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("utime/stime: %q %q", f[11], f[12])
	}
	return time.Duration(ut+stt) * time.Second / userHZ, nil
}

func parseStatusRSS(b []byte) int64 {
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// procSample is the use over one interval.
type procSample struct {
	cpuPct float64 // % of one core
	rssMiB float64
}

// procWatch follows one process across samples.
type procWatch struct {
	pid         int
	first, last procStat
	ok          bool
	rssMax      int64
	err         error
}

func newProcWatch(pid int) (*procWatch, error) {
	st, err := readProc(pid)
	if err != nil {
		return nil, err
	}
	return &procWatch{pid: pid, first: st, last: st, ok: true, rssMax: st.rssKiB}, nil
}

// sample reads the process again; nil once it has gone.
func (w *procWatch) sample() *procSample {
	st, err := readProc(w.pid)
	if err != nil {
		w.err = err
		return nil
	}
	dt := st.at.Sub(w.last.at)
	s := &procSample{rssMiB: float64(st.rssKiB) / 1024}
	if dt > 0 {
		s.cpuPct = round1(100 * float64(st.cpu-w.last.cpu) / float64(dt))
	}
	s.rssMiB = round1(s.rssMiB)
	w.last = st
	w.rssMax = max(w.rssMax, st.rssKiB)
	return s
}

// cpuBetween is the CPU time used from the first sample to the last.
func (w *procWatch) cpuUsed() time.Duration { return w.last.cpu - w.first.cpu }

func round1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }
