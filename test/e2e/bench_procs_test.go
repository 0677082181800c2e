package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// benchProc is one process of a runtime as read from /proc.
type benchProc struct {
	pid, ppid int
	cmdline   string // NUL-separated arguments
	rssKiB    int64
}

// readProcs reads every process of the machine; processes that exit while
// it reads are left out.
func readProcs() map[int]*benchProc {
	entries, _ := os.ReadDir("/proc")
	out := make(map[int]*benchProc, len(entries))
	page := int64(os.Getpagesize() / 1024)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// The fields after the comm, which may hold spaces and parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 22 {
			continue
		}
		p := &benchProc{pid: pid}
		p.ppid, _ = strconv.Atoi(f[1])
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		p.rssKiB = rss * page
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		p.cmdline = string(cmd)
		out[pid] = p
	}
	return out
}

// procSet picks the processes of one runtime: its daemons, every process
// whose command line names one of its markers (its state or socket dirs:
// shims, conmons) and the descendants of both, less the workloads (the
// benchmark's own container commands).
type procSet struct {
	daemons   func() []int
	markers   []string
	workloads []string // command lines (NUL-separated) that are the pods' payload
}

func (s procSet) pick(all map[int]*benchProc) map[int]*benchProc {
	in := map[int]bool{}
	for _, pid := range s.daemons() {
		if _, ok := all[pid]; ok {
			in[pid] = true
		}
	}
	for pid, p := range all {
		for _, m := range s.markers {
			if m != "" && strings.Contains(p.cmdline, m) {
				in[pid] = true
			}
		}
	}
	children := map[int][]int{}
	for pid, p := range all {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	queue := make([]int, 0, len(in))
	for pid := range in {
		queue = append(queue, pid)
	}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !in[c] {
				in[c] = true
				queue = append(queue, c)
			}
		}
	}
	out := make(map[int]*benchProc, len(in))
	for pid := range in {
		p := all[pid]
		if s.isWorkload(p.cmdline) {
			continue
		}
		out[pid] = p
	}
	return out
}

func (s procSet) isWorkload(cmdline string) bool {
	for _, w := range s.workloads {
		if strings.TrimRight(cmdline, "\x00") == w {
			return true
		}
	}
	return false
}

// pssKiBOf sums the PSS of pids.
func pssKiBOf(pids map[int]*benchProc) int64 {
	var sum int64
	for pid := range pids {
		sum += int64(pssKiB(pid))
	}
	return sum
}

// usageSampler samples a procSet's summed RSS every interval until
// stopped, keeping the peak. (CPU comes from the kernel's accounting of a
// cgroup: cpuGroup.)
type usageSampler struct {
	stop chan struct{}
	done sync.WaitGroup

	peakRSSKiB int64
}

func startUsageSampler(set procSet, interval time.Duration) *usageSampler {
	u := &usageSampler{stop: make(chan struct{})}
	u.done.Add(1)
	go func() {
		defer u.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-u.stop:
				return
			case <-t.C:
			}
			var rss int64
			for _, p := range set.pick(readProcs()) {
				rss += p.rssKiB
			}
			u.peakRSSKiB = max(u.peakRSSKiB, rss)
		}
	}()
	return u
}

func (u *usageSampler) Stop() {
	close(u.stop)
	u.done.Wait()
}
