package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// waitExit waits until pid (started at start) exits or ctx ends.
func waitExit(ctx context.Context, pid int, start uint64) error {
	fd, ok := linux.OpenPidfd(pid, start)
	if !ok {
		return nil
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for pid %d: %w", pid, err)
		}
		if n > 0 {
			// Readable: exited. A child of ours may linger as a zombie
			// until its reaper runs; it runs nothing any more.
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// A zombie that is nobody's child to reap (pidfd readable covers
		// it, but be safe against a parent that never reaps).
		if _, err := startTime(pid); err != nil {
			return nil
		}
	}
}

// killProc sends SIGKILL to pid (if it still is the process started at
// start) and waits up to d for it to exit.
func killProc(ctx context.Context, pid int, start uint64, d time.Duration) error {
	fd, ok := linux.OpenPidfd(pid, start)
	if !ok {
		return nil
	}
	err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	unix.Close(fd)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", pid, err)
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := waitExit(wctx, pid, start); err != nil {
		return fmt.Errorf("pid %d did not exit after SIGKILL: %w", pid, err)
	}
	return nil
}

// cmdline is a process's argv.
func cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// rssKiB is a process's resident set size in KiB (VmRSS), 0 if unknown.
func rssKiB(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseUint(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// RSSKiB is the resident set size of the hypervisor process in KiB (0 when
// it is gone).
func (p *Proc) RSSKiB() uint64 {
	if !p.Alive() {
		return 0
	}
	return rssKiB(p.Pid)
}

// startTime is pid's start time; an exited (zombie) process has none: it no
// longer runs the VM.
func startTime(pid int) (uint64, error) {
	st, err := linux.Stat(pid)
	if err != nil {
		return 0, err
	}
	if st.Exited() {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return st.StartTime, nil
}

func alive(pid int, start uint64) bool { return linux.Alive(pid, start) }
