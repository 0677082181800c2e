package pods

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// userHz is the unit of cgroup v1's cpuacct.stat (USER_HZ, 100 on Linux).
const userHz = 100

// addMetrics fills what the CRI's cAdvisor-compatible metrics need beyond
// CPU time and working set: the cgroup's CPU, memory and pids accounting,
// its processes' threads and descriptors, and the interfaces of the network
// namespace of pid (the container's init). What cannot be read stays zero.
func addMetrics(resp *podsv0.ContainerStatsResponse, path string, pid int) {
	if cgroup.Unified() {
		addV2(resp, path)
	} else {
		addV1(resp, path)
	}
	addProcesses(resp, path)
	if pid > 0 {
		resp.Interfaces = netDev(filepath.Join("/proc", strconv.Itoa(pid), "net", "dev"))
	}
}

func addV1(resp *podsv0.ContainerStatsResponse, path string) {
	acct := keyed(cgroup.ControllerFile(path, "cpuacct", "cpuacct.stat"))
	resp.CpuUserNanos = acct["user"] * (1e9 / userHz)
	resp.CpuSystemNanos = acct["system"] * (1e9 / userHz)
	cpu := keyed(cgroup.ControllerFile(path, "cpu", "cpu.stat"))
	resp.CpuPeriods, resp.CpuThrottledPeriods, resp.CpuThrottledNanos = cpu["nr_periods"], cpu["nr_throttled"], cpu["throttled_time"]
	mem := func(f string) uint64 { return single(cgroup.ControllerFile(path, "memory", f)) }
	resp.MemoryUsageBytes = mem("memory.usage_in_bytes")
	resp.MemoryMaxUsageBytes = mem("memory.max_usage_in_bytes")
	resp.MemoryFailcnt = mem("memory.failcnt")
	resp.MemoryKernelBytes = mem("memory.kmem.usage_in_bytes")
	st := keyed(cgroup.ControllerFile(path, "memory", "memory.stat"))
	resp.MemoryCacheBytes, resp.MemoryRssBytes, resp.MemorySwapBytes = st["total_cache"], st["total_rss"], st["total_swap"]
	resp.MemoryMappedFileBytes, resp.MemoryPgfault, resp.MemoryPgmajfault = st["total_mapped_file"], st["total_pgfault"], st["total_pgmajfault"]
	resp.OomEvents = keyed(cgroup.ControllerFile(path, "memory", "memory.oom_control"))["oom_kill"]
	resp.ThreadsMax = single(cgroup.ControllerFile(path, "pids", "pids.max"))
}

func addV2(resp *podsv0.ContainerStatsResponse, path string) {
	file := func(f string) string { return cgroup.ControllerFile(path, "", f) }
	cpu := keyed(file("cpu.stat"))
	resp.CpuUserNanos, resp.CpuSystemNanos = cpu["user_usec"]*1000, cpu["system_usec"]*1000
	resp.CpuPeriods, resp.CpuThrottledPeriods, resp.CpuThrottledNanos = cpu["nr_periods"], cpu["nr_throttled"], cpu["throttled_usec"]*1000
	resp.MemoryUsageBytes = single(file("memory.current"))
	resp.MemoryMaxUsageBytes = single(file("memory.peak"))
	resp.MemorySwapBytes = single(file("memory.swap.current"))
	st := keyed(file("memory.stat"))
	resp.MemoryCacheBytes, resp.MemoryRssBytes, resp.MemoryMappedFileBytes = st["file"], st["anon"], st["file_mapped"]
	resp.MemoryKernelBytes = st["kernel"]
	if resp.MemoryKernelBytes == 0 {
		resp.MemoryKernelBytes = st["kernel_stack"] + st["slab"] + st["sock"] + st["pagetables"]
	}
	resp.MemoryPgfault, resp.MemoryPgmajfault = st["pgfault"], st["pgmajfault"]
	ev := keyed(file("memory.events"))
	resp.MemoryFailcnt, resp.OomEvents = ev["max"], ev["oom_kill"]
	resp.ThreadsMax = single(file("pids.max"))
}

// addProcesses counts the cgroup's processes, their threads, open files
// and sockets (cadvisor's container_processes, _threads,
// _file_descriptors, _sockets).
func addProcesses(resp *podsv0.ContainerStatsResponse, path string) {
	cg, err := cgroup.Load(path)
	if err != nil {
		return
	}
	pids, err := cg.Procs()
	if err != nil {
		return
	}
	resp.Processes = uint64(len(pids))
	for _, pid := range pids {
		proc := filepath.Join("/proc", strconv.Itoa(pid))
		if tasks, err := os.ReadDir(filepath.Join(proc, "task")); err == nil {
			resp.Threads += uint64(len(tasks))
		}
		fds, err := os.ReadDir(filepath.Join(proc, "fd"))
		if err != nil {
			continue
		}
		resp.FileDescriptors += uint64(len(fds))
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(proc, "fd", fd.Name())); err == nil && strings.HasPrefix(target, "socket:") {
				resp.Sockets++
			}
		}
	}
}

// keyed reads a flat-keyed cgroup file ("key value" lines); a missing file
// or a line that is no number reads as nothing.
func keyed(file string) map[string]uint64 {
	out := map[string]uint64{}
	b, err := os.ReadFile(file)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

// single reads a one-number cgroup file; "max" and what cannot be read are 0.
func single(file string) uint64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// netDev parses a /proc/<pid>/net/dev: the counters of each interface of
// that process's network namespace but loopback.
func netDev(file string) []*podsv0.InterfaceStats {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []*podsv0.InterfaceStats
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue // the two header lines
		}
		name = strings.TrimSpace(name)
		f := strings.Fields(rest)
		if name == "lo" || len(f) < 16 {
			continue
		}
		n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
		out = append(out, &podsv0.InterfaceStats{
			Name:    name,
			RxBytes: n(0), RxPackets: n(1), RxErrors: n(2), RxDropped: n(3),
			TxBytes: n(8), TxPackets: n(9), TxErrors: n(10), TxDropped: n(11),
		})
	}
	return out
}
