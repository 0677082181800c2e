package cells

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// startTime is a process's start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat): with the pid it names one process, even after the pid
// is reused.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return strconv.ParseUint(string(fields[19]), 10, 64)
}

// openPidfd opens a pidfd for pid if it still names the process that
// started at start.
func openPidfd(pid int, start uint64) (int, bool) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, false
	}
	// Checked after the open: the fd now pins the process we compare.
	if st, err := startTime(pid); err != nil || st != start {
		unix.Close(fd)
		return -1, false
	}
	return fd, true
}

// waitPidfd blocks until the process behind fd has exited.
func waitPidfd(fd int) {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err == unix.EINTR {
			continue
		}
		return
	}
}
