package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// waitExitOrClose waits until the process behind pidfd exits (true) or
// the eventfd closing is signalled (false).
func waitExitOrClose(pidfd, closing int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}, {Fd: int32(closing), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || fds[1].Revents != 0 {
			return false
		}
		if fds[0].Revents != 0 {
			return true
		}
	}
}

// removeCgroupTree removes a cgroup and its children from every hierarchy
// (runc creates the container's cgroup in controllers auraed does not use,
// and their parents with it). Only empty cgroups can go: the caller killed
// their processes.
func removeCgroupTree(path string) error {
	var errs []error
	for _, d := range cgroup.AllDirs(path) {
		if err := rmdirTree(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func rmdirTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := rmdirTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	delay := time.Millisecond
	for try := 0; ; try++ {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || try == 10 {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(delay)
		delay *= 2
	}
}

// killCgroup sends SIGKILL to every process of a cgroup and its children
// until none is left. It does not freeze the cgroup first, unlike
// cgroup.Kill on v1: freezing a cgroup while a multi-threaded process in it
// is in execve (runc init becoming the container's process) can stay
// FREEZING for good, and the freeze call then never returns.
func killCgroup(ctx context.Context, path string) error {
	cg, err := cgroup.Load(path)
	if errors.Is(err, cgroup.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for {
		procs, err := cg.Procs()
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) {
			return nil // gone (ENODEV: a systemd unit's cgroup being removed)
		}
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		for _, pid := range procs {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s still has %d processes: %w", path, len(procs), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
