// Package linux holds the few process and network helpers that auraed's
// services (cells, pods, the hypervisor, the guest init) share.
package linux

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcStat is what /proc/<pid>/stat says of a process that matters here.
type ProcStat struct {
	Pid int
	// Comm is the command name (field 2), without its parentheses.
	Comm string
	// State is the one-letter state (R, S, D, Z, X, …).
	State byte
	// PPid is the parent's pid (field 4).
	PPid int
	// UTime and STime are the user and system CPU times in clock ticks
	// (fields 14 and 15); Threads is field 20.
	UTime, STime uint64
	Threads      int
	// StartTime is the start time in clock ticks since boot (field 22): with
	// the pid it names one process, even after the pid is reused.
	StartTime uint64
	// VSize is the virtual memory size in bytes (field 23), RSSPages the
	// resident set in pages (field 24).
	VSize, RSSPages uint64
}

// Exited reports whether the process has ended (a zombie or dead).
func (s ProcStat) Exited() bool { return s.State == 'Z' || s.State == 'X' }

// Stat reads /proc/<pid>/stat.
func Stat(pid int) (ProcStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// ParseStat parses the text of a /proc/<pid>/stat.
func ParseStat(b []byte) (ProcStat, error) {
	// The command name (field 2) may hold spaces and parentheses: it runs
	// from the first '(' to the last ')', and fields are counted from there.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return ProcStat{}, errors.New("malformed")
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open])))
	if err != nil {
		return ProcStat{}, fmt.Errorf("pid: %w", err)
	}
	fields := bytes.Fields(b[end+1:])
	// fields[0] is field 3 (state); field n is fields[n-3].
	if len(fields) < 22 || len(fields[0]) != 1 {
		return ProcStat{}, errors.New("malformed")
	}
	start, err := strconv.ParseUint(string(fields[22-3]), 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("field 22: %w", err)
	}
	num := make(map[int]uint64, 6)
	for _, n := range []int{4, 14, 15, 20, 23, 24} {
		v, err := strconv.ParseInt(string(fields[n-3]), 10, 64)
		if err != nil {
			return ProcStat{}, fmt.Errorf("field %d: %w", n, err)
		}
		num[n] = uint64(max(v, 0))
	}
	return ProcStat{
		Pid: pid, Comm: string(b[open+1 : end]), State: fields[0][0], PPid: int(num[4]),
		UTime: num[14], STime: num[15], Threads: int(num[20]),
		StartTime: start, VSize: num[23], RSSPages: num[24],
	}, nil
}

// StartTime is the process's start time in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	st, err := Stat(pid)
	return st.StartTime, err
}

// OpenPidfd opens a pidfd for pid if it still names the running process that
// started at start.
func OpenPidfd(pid int, start uint64) (int, bool) {
	if pid <= 0 {
		return -1, false
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, false
	}
	// Checked after the open: the fd now pins the process we compare.
	if st, err := Stat(pid); err != nil || st.StartTime != start || st.Exited() {
		_ = unix.Close(fd)
		return -1, false
	}
	return fd, true
}

// Alive reports whether pid still names the running process started at start.
func Alive(pid int, start uint64) bool {
	fd, ok := OpenPidfd(pid, start)
	if ok {
		_ = unix.Close(fd)
	}
	return ok
}

// WaitPidfd blocks until the process behind the pidfd has exited.
func WaitPidfd(fd int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); errors.Is(err, unix.EINTR) {
			continue
		}
		return
	}
}

// LoopbackUp brings up lo in the caller's network namespace.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// OwnOOMScoreAdj is this process's oom_score_adj: the floor of the
// processes it starts (without CAP_SYS_RESOURCE the kernel refuses a lower
// one, and an OCI runtime asked for it fails).
func OwnOOMScoreAdj() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
