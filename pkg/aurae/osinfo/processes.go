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
	"github.com/aurae-runtime/aurae-cri/internal/linux"
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

// parseStat maps /proc/<pid>/stat onto a ProcessInfo.
func parseStat(b []byte, pageSize uint64) (*osapi.ProcessInfo, error) {
	st, err := linux.ParseStat(b)
	if err != nil {
		return nil, err
	}
	return &osapi.ProcessInfo{
		Pid:            int32(st.Pid),
		Ppid:           int32(st.PPid),
		State:          string(st.State),
		Threads:        int32(st.Threads),
		CpuTime:        float64(st.UTime+st.STime) / clockTicks,
		VirtualMemory:  st.VSize,
		ResidentMemory: st.RSSPages * pageSize,
		Command:        st.Comm,
	}, nil
}
