package pods

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// Restart stops a container (SIGTERM, SIGKILL after grace) and starts it
// again from its bundle: the same spec, the same log file (the monitor
// appends to it), a new process under a new monitor. An exited container
// is started again. NotFound for an unknown container. The node service's
// Restart; the CRI has no such call.
func (s *Service) Restart(ctx context.Context, id string, grace time.Duration) (*podsv0.ContainerStatus, error) {
	if err := validID("container", id); err != nil {
		return nil, err
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return nil, err
	}
	p, err := s.lookupPod(c.podID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.mu.RLock()
	current := s.ctrs[id]
	s.mu.RUnlock()
	if p.freed || current != c {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	if err := s.stop(ctx, id, int64(grace/time.Second), syscall.SIGTERM); err != nil {
		return nil, fmt.Errorf("restart container %q: %w", id, err)
	}
	b, err := os.ReadFile(filepath.Join(s.bundleDir(id), "config.json"))
	if err != nil {
		return nil, fmt.Errorf("restart container %q: %w", id, err)
	}
	var sp specs.Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		return nil, fmt.Errorf("restart container %q: bundle spec: %w", id, err)
	}
	// What the last run left: the runtime's container, the exit file, the
	// attach socket, the pid files. The bundle and the log stay.
	gone, err := s.awaitRelease(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("restart container %q: %w", id, err)
	}
	if !gone {
		if out, err := s.deleteRuntime(ctx, id); err != nil && !notExist(out) {
			return nil, fmt.Errorf("restart container %q: %w", id, err)
		}
	}
	for _, f := range []string{s.exitFile(id), s.attachDir(id), filepath.Join(s.bundleDir(id), "pidfile"), filepath.Join(s.bundleDir(id), "conmon.pid")} {
		if err := os.RemoveAll(f); err != nil {
			return nil, fmt.Errorf("restart container %q: %w", id, err)
		}
	}
	rec := c.record()
	mon, err := s.createWithConmon(ctx, p, &podsv0.Container{Id: id, LogPath: rec.LogPath, LogStream: rec.LogStream, Tty: sp.Process != nil && sp.Process.Terminal, Stdin: rec.Stdin}, nil)
	if err != nil {
		return nil, fmt.Errorf("restart container %q: create: %w", id, err)
	}
	undo := func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeCallTimeout)
		defer cancel()
		_, _ = s.runRuntime(ctx, "delete", "--force", id)
	}
	rec.State, rec.Pid, rec.ConmonPid, rec.ConmonStart = stateCreated, mon.pid, mon.conmonPid, mon.conmonStart
	rec.ExitCode, rec.StartedAt, rec.FinishedAt, rec.Reason, rec.Message = 0, 0, 0, "", ""
	if err := s.store.put(bucketContainers, id, rec); err != nil {
		undo()
		return nil, fmt.Errorf("persist container %q: %w", id, err)
	}
	fd, ok := linux.OpenPidfd(mon.conmonPid, mon.conmonStart)
	if !ok {
		undo()
		return nil, fmt.Errorf("restart container %q: its monitor (pid %d) is gone", id, mon.conmonPid)
	}
	rec.StartedAt = time.Now().UnixNano()
	if _, err := s.runRuntime(ctx, "start", id); err != nil {
		unix.Close(fd)
		undo()
		return nil, fmt.Errorf("restart container %q: %w", id, err)
	}
	rec.State = stateRunning
	if err := s.store.put(bucketContainers, id, rec); err != nil {
		s.log.Warn("persist restarted container", "container", id, "error", err)
	}
	nc := &container{id: id, podID: c.podID, rec: rec, done: make(chan struct{})}
	s.mu.Lock()
	s.ctrs[id] = nc
	s.mu.Unlock()
	s.events.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED, statusOf(rec))
	s.watch(nc, fd)
	s.log.Info("container restarted", "pod", c.podID, "container", id, "pid", rec.Pid)
	return statusOf(rec), nil
}
