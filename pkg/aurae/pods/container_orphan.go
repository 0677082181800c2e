package pods

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// A Start cut short by a kill -9 of auraed after conmon was started but
// before its pid was recorded leaves a container recorded as created with
// no monitor, while that conmon may still run `runc create`, which makes
// the container's cgroup and its init. Recovery ends such a container
// (exit 255, as a start cut short); reapOrphanMonitor kills what its start
// left running, and removeContainerCgroup, at the removal, what runc did
// not remove, so that nothing of it outlives its record.

// reapOrphanMonitor kills the conmon of container id that its bundle's
// conmon.pid names, if it is still that container's conmon, with all its
// descendants (runc create and its children).
func (s *Service) reapOrphanMonitor(id string) {
	pid, err := readPidFile(filepath.Join(s.bundleDir(id), "conmon.pid"))
	if err != nil || !isConmonOf(pid, id) {
		return
	}
	killed := killTree(pid)
	s.log.Info("killed the monitor of a start cut short", "container", id, "pid", pid, "processes", killed)
}

// isConmonOf reports whether pid runs conmon for container id ("-c <id>"
// among its arguments): a pid file may name a pid reused since.
func isConmonOf(pid int, id string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "conmon") {
		return false
	}
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-c" && args[i+1] == id {
			return true
		}
	}
	return false
}

// killTree SIGKILLs pid and then, round after round, every process whose
// parent was killed, until a round finds none; it returns how many it
// killed. A killed parent's children are found before they are
// reparented: each round stops the parents first (SIGSTOP), reads the
// children, then kills.
func killTree(pid int) int {
	n := 0
	frontier := []int{pid}
	for round := 0; len(frontier) > 0 && round < 16; round++ {
		for _, p := range frontier {
			_ = unix.Kill(p, unix.SIGSTOP)
		}
		var next []int
		for _, p := range frontier {
			next = append(next, childrenOf(p)...)
		}
		for _, p := range frontier {
			if unix.Kill(p, unix.SIGKILL) == nil {
				n++
			}
		}
		frontier = next
	}
	return n
}

// childrenOf lists the children of pid (from every thread's children
// file).
func childrenOf(pid int) []int {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// removeContainerCgroup kills what is left in a container's cgroup and
// removes it, under the cgroupfs driver (runc delete removes it, unless
// runc never recorded the container). Every hierarchy is looked at: a runc
// killed while it made them may have made some only. A systemd scope is
// systemd's.
func removeContainerCgroup(ctx context.Context, path string) error {
	if path == "" || strings.HasSuffix(path, ".scope") {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, dir := range cgroup.AllDirs(path) {
		for {
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				break // gone, or no cgroup
			}
			pids := strings.Fields(string(b))
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				if pid, err := strconv.Atoi(p); err == nil {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("cgroup %s still has processes: %w", dir, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return removeCgroupTree(path)
}
