package pods

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// monitorPods is how many idle containers BenchmarkMonitorMemory runs
// under each monitor binary.
const monitorPods = 12

var (
	monitorOnce sync.Once
	monitorRes  map[string]monitorMem
	monitorErr  error
)

// monitorMem is the median memory (KiB, smaps_rollup) of one set of
// monitors.
type monitorMem struct {
	exe                        string
	pss, private, rss          float64
	pssAll, privateAll, rssAll []float64
}

// BenchmarkMonitorMemory runs monitorPods pods of one idle container
// under Debian's conmon (on PATH) and as many under the pinned conmon of
// `make conmon`, both sets alive at once (taking turns pod after pod, so
// that each set shares its pages with its own kind only), and reports each
// set's median PSS, private memory and RSS per monitor and the ratio of
// the pinned one's PSS to Debian's. The scenario runs once per `go test`
// run, whatever b.N is.
func BenchmarkMonitorMemory(b *testing.B) {
	monitorOnce.Do(func() { monitorRes, monitorErr = measureMonitors(b) })
	if monitorErr != nil {
		b.Fatal(monitorErr)
	}
	for _, k := range []string{"debian", "pinned"} {
		m := monitorRes[k]
		b.ReportMetric(m.pss, k+"-pss-KiB")
		b.ReportMetric(m.private, k+"-private-KiB")
		b.ReportMetric(m.rss, k+"-rss-KiB")
		b.Logf("%s conmon %s: %d monitors, median PSS %.0f KiB, private %.0f KiB, RSS %.0f KiB; PSS %v",
			k, m.exe, monitorPods, m.pss, m.private, m.rss, m.pssAll)
	}
	b.ReportMetric(monitorRes["pinned"].pss/monitorRes["debian"].pss, "pss-ratio-pinned/debian")
}

func measureMonitors(b *testing.B) (map[string]monitorMem, error) {
	debian, err := exec.LookPath("conmon")
	if err != nil {
		return nil, fmt.Errorf("Debian's conmon (apt-get install conmon): %w", err)
	}
	if _, err := os.Stat(PinnedConmon); err != nil {
		if os.Getenv("CI") != "true" {
			b.Skipf("no pinned conmon (make conmon): %v", err)
		}
		return nil, fmt.Errorf("no pinned conmon (make conmon): %w", err)
	}
	envs := map[string]*env{}
	for k, bin := range map[string]string{"debian": debian, "pinned": PinnedConmon} {
		e := newEnv(b)
		if err := e.svc.Close(); err != nil {
			return nil, err
		}
		e.svc = nil
		s, err := NewService(context.Background(), Config{StateDir: e.stateDir, CgroupRoot: e.cgRoot, Conmon: bin, Logger: testLogger(b)})
		if err != nil {
			return nil, err
		}
		e.svc = s
		envs[k] = e
	}
	sleep := spec(b, nil, "sleep", "100000")
	pids := map[string][]int{}
	for i := range monitorPods {
		for _, k := range []string{"debian", "pinned"} {
			e := envs[k]
			id := fmt.Sprintf("mon-%s-%d", k, i)
			e.allocate(&podsv0.Pod{Id: id, Hostname: id})
			e.start(id, e.container(id+"-c", sleep))
			e.svc.mu.RLock()
			c := e.svc.ctrs[id+"-c"]
			e.svc.mu.RUnlock()
			if c == nil {
				return nil, fmt.Errorf("container %s-c is not known after its start", id)
			}
			pids[k] = append(pids[k], c.record().ConmonPid)
		}
	}
	out := map[string]monitorMem{}
	for k, ps := range pids {
		want := debian
		if k == "pinned" {
			want = PinnedConmon
		}
		m := monitorMem{exe: want}
		for _, pid := range ps {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err != nil {
				return nil, err
			}
			if exe != want {
				return nil, fmt.Errorf("%s monitor %d runs %s, want %s", k, pid, exe, want)
			}
			roll, err := smapsRollup(pid)
			if err != nil {
				return nil, err
			}
			m.pssAll = append(m.pssAll, roll["Pss"])
			m.privateAll = append(m.privateAll, roll["Private_Clean"]+roll["Private_Dirty"])
			m.rssAll = append(m.rssAll, roll["Rss"])
		}
		m.pss, m.private, m.rss = median(m.pssAll), median(m.privateAll), median(m.rssAll)
		out[k] = m
	}
	return out, nil
}

// smapsRollup is a process's /proc/<pid>/smaps_rollup, in KiB by field.
func smapsRollup(pid int) (map[string]float64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return nil, fmt.Errorf("smaps_rollup of %d: %q", pid, line)
			}
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out, nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
