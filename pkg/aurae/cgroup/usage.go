package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// Usage is what a cgroup's processes (and those of its descendants) have
// used: cumulative CPU time and the memory working set.
type Usage struct {
	CPU time.Duration
	// MemoryWorkingSet is the memory usage minus inactive file pages, as
	// cadvisor and the kubelet count it.
	MemoryWorkingSet uint64
}

// ReadUsage reads the usage of the cgroup at path (below the hierarchy
// roots): cpuacct.usage and memory.usage_in_bytes with total_inactive_file
// on v1, cpu.stat's usage_usec and memory.current with inactive_file on v2.
// A cgroup that is gone, or goes while it is read, is ErrNotExist; a v2
// cgroup without the memory controller has a working set of 0.
func ReadUsage(path string) (Usage, error) {
	if !Exists(path) {
		return Usage{}, fmt.Errorf("cgroup %s: %w", path, ErrNotExist)
	}
	cpu, err := cpuUsage(path, Unified())
	if err != nil {
		return Usage{}, usageErr(path, err)
	}
	ws, err := workingSet(path)
	if errors.Is(err, fs.ErrNotExist) && Unified() && Exists(path) {
		// No memory controller of its own (v2 enables it where asked
		// for): its memory counts in the nearest ancestor's that has one.
		ws, err = 0, nil
	}
	if err != nil {
		return Usage{}, usageErr(path, err)
	}
	return Usage{CPU: cpu, MemoryWorkingSet: ws}, nil
}

func usageErr(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cgroup %s: %w: %w", path, ErrNotExist, err)
	}
	return fmt.Errorf("usage of cgroup %s: %w", path, err)
}

// cpuUsage is the CPU time used by the cgroup's processes so far.
func cpuUsage(path string, unified bool) (time.Duration, error) {
	if unified {
		b, err := os.ReadFile(ControllerFile(path, "", "cpu.stat"))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				return time.Duration(n) * time.Microsecond, err
			}
		}
		return 0, fmt.Errorf("cpu.stat of %s: no usage_usec", path)
	}
	b, err := os.ReadFile(ControllerFile(path, "cpuacct", "cpuacct.usage"))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return time.Duration(n), err
}

// workingSet is the memory usage minus the inactive file pages.
func workingSet(path string) (uint64, error) {
	usageFile, statKey := ControllerFile(path, "memory", "memory.usage_in_bytes"), "total_inactive_file"
	if Unified() {
		usageFile, statKey = ControllerFile(path, "", "memory.current"), "inactive_file"
	}
	b, err := os.ReadFile(usageFile)
	if err != nil {
		return 0, err
	}
	usage, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	st, err := os.ReadFile(ControllerFile(path, "memory", "memory.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, statKey+" "); ok {
			inactive, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err == nil && inactive < usage {
				return usage - inactive, nil
			}
			return 0, nil
		}
	}
	return usage, nil
}
