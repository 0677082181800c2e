package osinfo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

// clockTicks is the unit of /proc/<pid>/stat's times: USER_HZ, 100 on
// every Linux architecture.
const clockTicks = 100

func (s *Service) processes(context.Context, *emptypb.Empty) (*osapi.ProcessesResponse, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	page := uint64(os.Getpagesize())
	var procs []*osapi.ProcessInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		// A process that exits meanwhile is left out.
		if p, err := readProcess(pid, page); err == nil {
			procs = append(procs, p)
		}
	}
	sort.Slice(procs, func(i, j int) bool { return procs[i].GetPid() < procs[j].GetPid() })
	return &osapi.ProcessesResponse{Messages: []*osapi.Process{{Metadata: s.meta(), Processes: procs}}}, nil
}

// readProcess reads /proc/<pid>: stat (state, ppid, times, threads,
// sizes), cmdline and the exe link.
func readProcess(pid int, pageSize uint64) (*osapi.ProcessInfo, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return nil, err
	}
	p, err := parseStat(stat, pageSize)
	if err != nil {
		return nil, fmt.Errorf("%s/stat: %w", dir, err)
	}
	if cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		p.Args = strings.Join(strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00"), " ")
	}
	// Kernel threads and other users' processes without ptrace access
	// have no readable exe.
	p.Executable, _ = os.Readlink(filepath.Join(dir, "exe"))
	return p, nil
}

// parseStat parses /proc/<pid>/stat ("pid (comm) state ppid ..."; comm
// may hold spaces and parentheses, so it ends at the last ')').
func parseStat(b []byte, pageSize uint64) (*osapi.ProcessInfo, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return nil, fmt.Errorf("malformed %q", b)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return nil, err
	}
	// f[0] is field 3 (state) of proc(5).
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 22 {
		return nil, fmt.Errorf("%d fields, want at least 24", len(f)+2)
	}
	nums := make(map[int]uint64)
	for _, i := range []int{4, 14, 15, 20, 23, 24} {
		v, err := strconv.ParseInt(f[i-3], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("field %d: %w", i, err)
		}
		nums[i] = uint64(max(v, 0))
	}
	return &osapi.ProcessInfo{
		Pid:            int32(pid),
		Ppid:           int32(nums[4]),
		State:          f[0],
		Threads:        int32(nums[20]),
		CpuTime:        float64(nums[14]+nums[15]) / clockTicks,
		VirtualMemory:  nums[23],
		ResidentMemory: nums[24] * pageSize,
		Command:        string(b[open+1 : end]),
	}, nil
}
