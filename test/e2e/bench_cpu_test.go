package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// cpuGroup is a cgroup a runtime's processes are moved into for a
// benchmark, to read their CPU time from the kernel's accounting: the
// cpuacct hierarchy's cpuacct.usage on cgroup v1 (and hybrid) hosts, the
// unified hierarchy's cpu.stat usage_usec on v2 ones. The processes the
// moved ones start later (runc, shims, monitors until they move
// themselves) are in it or below it; the containers are in their pods'
// cgroups and not counted. It counts every process once, reaped or not.
type cpuGroup struct {
	dir string
	v2  bool
}

// newCPUGroup makes a cgroup named after key below the root of the CPU
// accounting hierarchy; b's cleanup moves what is still in it back to the
// root and removes it.
func newCPUGroup(b testing.TB, key string) (*cpuGroup, error) {
	root, v2, err := cpuAcctRoot()
	if err != nil {
		return nil, err
	}
	g := &cpuGroup{dir: filepath.Join(root, "aurae-bench-cpu-"+strings.ReplaceAll(key, ".", "")+"-"+randomHex(b, 4)), v2: v2}
	if err := os.Mkdir(g.dir, 0o755); err != nil {
		return nil, err
	}
	b.Cleanup(func() {
		for range 10 {
			b, err := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
			if err != nil || len(strings.Fields(string(b))) == 0 {
				break
			}
			for _, pid := range strings.Fields(string(b)) {
				_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
			}
		}
		if err := os.Remove(g.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.Errorf("remove the benchmark's cgroup %s: %v", g.dir, err)
		}
	})
	return g, nil
}

// cpuAcctRoot is where the cpuacct controller is mounted (v1), else the
// unified hierarchy's root.
func cpuAcctRoot() (string, bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	unified := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, rest := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(rest) < 3 {
			continue
		}
		switch rest[0] {
		case "cgroup":
			for _, o := range strings.Split(rest[2], ",") {
				if o == "cpuacct" {
					return fields[4], false, nil
				}
			}
		case "cgroup2":
			if unified == "" {
				unified = fields[4]
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", false, err
	}
	if unified == "" {
		return "", false, errors.New("no cpuacct (v1) or unified (v2) cgroup hierarchy mounted")
	}
	return unified, true, nil
}

// add moves the processes into the group.
func (g *cpuGroup) add(pids map[int]*benchProc) error {
	for pid := range pids {
		err := os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !strings.Contains(err.Error(), "no such process") {
			return fmt.Errorf("move %d into %s: %w", pid, g.dir, err)
		}
	}
	return nil
}

// usage is the CPU time of everything that ran in the group.
func (g *cpuGroup) usage() (time.Duration, error) {
	if !g.v2 {
		b, err := os.ReadFile(filepath.Join(g.dir, "cpuacct.usage"))
		if err != nil {
			return 0, err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return time.Duration(ns), err
	}
	b, err := os.ReadFile(filepath.Join(g.dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Duration(us) * time.Microsecond, err
		}
	}
	return 0, fmt.Errorf("%s: no usage_usec in cpu.stat", g.dir)
}

// cpuSampler reads a cpuGroup's usage every second until stopped: the
// CPU time in all and the peak of the per-second deltas (in cores).
type cpuSampler struct {
	g    *cpuGroup
	stop chan struct{}
	done sync.WaitGroup

	mu        sync.Mutex
	first     time.Duration
	last      time.Duration
	peakCores float64
	err       error
}

func startCPUSampler(g *cpuGroup) (*cpuSampler, error) {
	u0, err := g.usage()
	if err != nil {
		return nil, err
	}
	s := &cpuSampler{g: g, stop: make(chan struct{}), first: u0, last: u0}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		lastAt := time.Now()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			s.sample(&lastAt)
		}
	}()
	return s, nil
}

func (s *cpuSampler) sample(lastAt *time.Time) {
	u, err := s.g.usage()
	at := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.err = err
		return
	}
	if cores := (u - s.last).Seconds() / at.Sub(*lastAt).Seconds(); cores > s.peakCores {
		s.peakCores = cores
	}
	s.last, *lastAt = u, at
}

// Stop ends the sampling and returns the CPU seconds since the start and
// the peak cores of a one-second interval (of the whole run when shorter).
func (s *cpuSampler) Stop(start time.Time) (cpuSeconds, peakCores float64, err error) {
	close(s.stop)
	s.done.Wait()
	u, err := s.g.usage()
	if err != nil {
		return 0, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, 0, s.err
	}
	if s.peakCores == 0 {
		s.peakCores = (u - s.first).Seconds() / time.Since(start).Seconds()
	}
	return (u - s.first).Seconds(), s.peakCores, nil
}
