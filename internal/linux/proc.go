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
	// State is the one-letter state (R, S, D, Z, X, …).
	State byte
	// PPid is the parent's pid (field 4).
	PPid int
	// StartTime is the start time in clock ticks since boot (field 22): with
	// the pid it names one process, even after the pid is reused.
	StartTime uint64
}

// Exited reports whether the process has ended (a zombie or dead).
func (s ProcStat) Exited() bool { return s.State == 'Z' || s.State == 'X' }

// Stat reads /proc/<pid>/stat.
func Stat(pid int) (ProcStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	start, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	ppid, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return ProcStat{State: fields[0][0], PPid: ppid, StartTime: start}, nil
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
