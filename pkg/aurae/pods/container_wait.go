package pods

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// watch waits for a container's monitor to exit (fd is a pidfd of conmon,
// which it closes) and then records the exit. It gives up when the service
// closes: a new service re-adopts the container.
func (s *Service) watch(c *container, fd int) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer unix.Close(fd)
		if waitExitOrClose(fd, s.closing) {
			s.finish(c)
		}
	}()
}

// finish records the exit of a container whose monitor is gone: the exit
// code and time from conmon's exit file, and the reason.
func (s *Service) finish(c *container) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if isDone(c.done) {
		return
	}
	r := c.rec
	code, at, err := readExitFile(s.exitFile(c.id))
	switch {
	case err == nil:
		r.ExitCode, r.FinishedAt = code, at.UnixNano()
		switch {
		case code == 0:
			r.Reason = "Completed"
		case code == 128+int32(unix.SIGKILL) && s.killedByOOM(c, r.CgroupPath):
			r.Reason = "OOMKilled"
		default:
			r.Reason = "Error"
		}
	case errors.Is(err, os.ErrNotExist):
		// As CRI-O does when conmon left no exit code.
		r.ExitCode, r.FinishedAt = 255, time.Now().UnixNano()
		r.Reason, r.Message = "Error", "the container's monitor exited without an exit file"
	default:
		r.ExitCode, r.FinishedAt = 255, time.Now().UnixNano()
		r.Reason, r.Message = "Error", err.Error()
	}
	// The exit file's mtime has the file system's (coarse) granularity.
	if r.FinishedAt < r.StartedAt {
		r.FinishedAt = r.StartedAt
	}
	r.State = stateExited
	c.rec = r
	close(c.done)
	s.release(c)
	s.events.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED, statusOf(r))
	if !s.closed.Load() {
		if err := s.store.put(bucketContainers, c.id, r); err != nil {
			s.log.Warn("persist container exit", "container", c.id, "error", err)
		}
	}
	s.log.Info("container exited", "pod", c.podID, "container", c.id, "exit_code", r.ExitCode, "reason", r.Reason)
}

// conmonSawOOM reports whether conmon recorded an OOM kill of the container
// (the file "oom" in the bundle, which CRI-O reads too): under the systemd
// cgroup driver the container's scope, and its memory.events, go with its
// last process, before the exit is read.
func (s *Service) conmonSawOOM(id string) bool {
	_, err := os.Stat(filepath.Join(s.bundleDir(id), "oom"))
	return err == nil
}

// oomKilled reports whether the OOM killer killed a process of the cgroup
// (which runc keeps until the container is deleted under cgroupfs).
func oomKilled(path string) bool {
	if cgroup.Unified() {
		return oomKillsIn(cgroup.ControllerFile(path, "", "memory.events"))
	}
	return oomKillsIn(cgroup.ControllerFile(path, "memory", "memory.oom_control"))
}

// killedByOOM reports whether anything saw the OOM killer in a container
// that died of SIGKILL, and logs at debug what each source said.
func (s *Service) killedByOOM(c *container, cgroupPath string) bool {
	watch, counter, conmon := c.oomSeen.Load(), oomKilled(cgroupPath), s.conmonSawOOM(c.id)
	scope := s.scopeOOMKilled(cgroupPath)
	s.log.Debug("container killed by SIGKILL", "pod", c.podID, "container", c.id, "cgroup", cgroupPath,
		"oom_watch", watch, "oom_counter", counter, "conmon_oom", conmon, "scope_oom", scope)
	return watch || counter || conmon || scope
}
