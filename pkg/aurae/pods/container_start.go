package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

const (
	// createTimeout bounds conmon + runc create; startTimeout runc start.
	createTimeout      = 60 * time.Second
	runtimeCallTimeout = 30 * time.Second
	// infraCgroup is the leaf cgroup below a pod's where auraed's own
	// processes of the pod live: the pid namespace holder and the monitors
	// (ids never start with '.'). A leaf, because cgroup v2 allows no
	// process in a cgroup whose children have controllers.
	infraCgroup = ".infra"
)

func validContainer(podID string, c *podsv0.Container) error {
	if err := validID("pod", podID); err != nil {
		return err
	}
	if c == nil {
		return fmt.Errorf("container is missing: %w", errdefs.ErrInvalidArgument)
	}
	if err := validID("container", c.GetId()); err != nil {
		return err
	}
	if c.GetRootfsPath() != "" {
		if err := validPath("rootfs path", c.GetRootfsPath()); err != nil {
			return err
		}
	}
	if c.GetLogPath() != "" {
		if c.GetLogStream() {
			return fmt.Errorf("container %q: log_path and log_stream exclude each other: %w", c.GetId(), errdefs.ErrInvalidArgument)
		}
		if err := validPath("log path", c.GetLogPath()); err != nil {
			return err
		}
	}
	if d := c.GetRestoreImagePath(); d != "" {
		if err := validPath("restore image path", d); err != nil {
			return err
		}
		if c.GetTty() {
			return fmt.Errorf("container %q: restoring a container with a terminal is not supported: %w", c.GetId(), errdefs.ErrInvalidArgument)
		}
		if fi, err := os.Lstat(filepath.Join(d, "inventory.img")); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("container %q: restore image path %s holds no CRIU images: %w", c.GetId(), d, errdefs.ErrInvalidArgument)
		}
	}
	if len(c.GetOciSpec()) == 0 {
		return fmt.Errorf("container %q: OCI spec is missing: %w", c.GetId(), errdefs.ErrInvalidArgument)
	}
	return nil
}

func (s *Service) start(ctx context.Context, podID string, req *podsv0.Container) (_ *podsv0.StartResponse, retErr error) {
	if err := validContainer(podID, req); err != nil {
		return nil, err
	}
	id := req.GetId()
	steps := timing.Start()
	p, err := s.lookupPod(podID)
	if err != nil {
		return nil, err
	}
	spec, err := s.checkSpec(p, req)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	log := s.log.With("pod", podID, "container", id)
	steps.Done("check_spec")

	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() { steps.Log(ctx, log, "container start steps", "ok", retErr == nil) }()
	steps.Done("pod_lock")
	if p.freed {
		return nil, fmt.Errorf("pod %q: %w", podID, errdefs.ErrNotFound)
	}
	if p.holder.Pid != 0 && !linux.Alive(p.holder.Pid, p.holder.Start) {
		return nil, fmt.Errorf("pod %q: the init of its pid namespace is gone; free the pod: %w", podID, errdefs.ErrFailedPrecondition)
	}
	// Reserve the id before any side effect; a failure releases it.
	c := &container{id: id, podID: podID, res: true, done: make(chan struct{})}
	s.mu.Lock()
	if old, ok := s.ctrs[id]; ok {
		s.mu.Unlock()
		return s.finishStart(ctx, old, podID, spec)
	}
	s.ctrs[id] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.ctrs, id)
			s.mu.Unlock()
		}
	}()
	bundle := s.bundleDir(id)
	if _, err := os.Stat(bundle); err == nil {
		return nil, fmt.Errorf("container %q: bundle %s that auraed does not know exists: %w", id, bundle, errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	// A log the monitor made for a container that never started goes too.
	logExisted := true
	if lp := req.GetLogPath(); lp != "" {
		_, err := os.Lstat(lp)
		logExisted = err == nil
	}
	defer func() {
		if retErr != nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runtimeCallTimeout)
			defer cancel()
			if err := s.cleanupContainer(ctx, id, nil); err != nil {
				log.Warn("undo container start", "error", err)
			}
			if !logExisted {
				_ = os.Remove(req.GetLogPath())
			}
		}
	}()
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	steps.Done("bundle")
	ctrCgroup, _ := containerCgroup(p, id)
	rec := ctrRecord{
		ID: id, PodID: podID, LogPath: req.GetLogPath(), LogStream: req.GetLogStream(), CgroupPath: ctrCgroup,
		OwnPID: ownPIDNamespace(spec), Stdin: req.GetStdin(),
		State: stateCreated, CreatedAt: time.Now().UnixNano(),
	}
	if err := s.store.put(bucketContainers, id, rec); err != nil {
		return nil, fmt.Errorf("persist container %q: %w", id, err)
	}
	steps.Done("persist_created")
	mon, err := s.createWithConmon(ctx, p, req, steps)
	if err != nil {
		return nil, fmt.Errorf("create container %q: %w", id, err)
	}
	if s.afterMonitor != nil {
		s.afterMonitor(id)
	}
	// Its cgroup exists now; its process waits for the start.
	s.watchOOM(c, ctrCgroup)
	rec.Pid, rec.ConmonPid, rec.ConmonStart = mon.pid, mon.conmonPid, mon.conmonStart
	// Recorded before runc start, so that a restarted auraed finds the
	// monitor of a container it started just before it died.
	if err := s.store.put(bucketContainers, id, rec); err != nil {
		return nil, fmt.Errorf("persist container %q: %w", id, err)
	}
	steps.Done("persist_monitor")
	fd, ok := linux.OpenPidfd(mon.conmonPid, mon.conmonStart)
	if !ok {
		return nil, fmt.Errorf("create container %q: its monitor (pid %d) is gone", id, mon.conmonPid)
	}
	if req.GetRestoreImagePath() != "" {
		// runc restore ran under conmon: the container runs already.
		rec.State, rec.StartedAt = stateRunning, time.Now().UnixNano()
		if err := s.store.put(bucketContainers, id, rec); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("persist container %q: %w", id, err)
		}
	} else {
		if s.beforeRuntimeStart != nil {
			s.beforeRuntimeStart(id)
		}
		if rec, err = s.runStart(ctx, id, rec, steps); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	c.mu.Lock()
	c.rec, c.res = rec, false
	c.mu.Unlock()
	s.events.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED, statusOf(rec))
	s.watch(c, fd)
	log.Info("container started", "pid", rec.Pid, "cgroup", rec.CgroupPath, "restored_from", req.GetRestoreImagePath())
	return &podsv0.StartResponse{ContainerId: id, Pid: int32(rec.Pid), CgroupPath: rec.CgroupPath}, nil
}

// finishStart answers a Start of a container auraed already has. One that
// a restart of auraed found created but never started (auraed died between
// the runtime's create and start) and that is asked for with the same spec
// is started now: the retry of the Start that the crash cut short. Any
// other is AlreadyExists. The caller holds the pod's lock.
func (s *Service) finishStart(ctx context.Context, c *container, podID string, spec *specs.Spec) (*podsv0.StartResponse, error) {
	exists := fmt.Errorf("container %q: %w", c.id, errdefs.ErrAlreadyExists)
	want, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.res || c.podID != podID || c.rec.State != stateCreated || isDone(c.done) {
		c.mu.Unlock()
		return nil, exists
	}
	c.res = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.res = false
		c.mu.Unlock()
	}()
	if have, err := os.ReadFile(filepath.Join(s.bundleDir(c.id), "config.json")); err != nil || string(have) != string(want) {
		return nil, exists
	}
	rec, err := s.runStart(ctx, c.id, c.record(), nil)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.rec = rec
	c.mu.Unlock()
	s.events.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED, statusOf(rec))
	s.log.Info("container started (its start was cut short by a restart)", "pod", podID, "container", c.id, "pid", rec.Pid)
	return &podsv0.StartResponse{ContainerId: c.id, Pid: int32(rec.Pid), CgroupPath: rec.CgroupPath}, nil
}

// runStart starts a created container (as `runc start` does, or by
// running the runtime's start) and records it running.
func (s *Service) runStart(ctx context.Context, id string, rec ctrRecord, steps *timing.Steps) (ctrRecord, error) {
	startedAt := time.Now().UnixNano()
	err := errNoFifo
	if s.fifoStart {
		err = s.startFromFifo(ctx, id, rec.Pid)
	}
	if errors.Is(err, errNoFifo) {
		if _, err = s.runRuntime(ctx, "start", id); err != nil {
			err = fmt.Errorf("start container %q: %w", id, err)
		}
	}
	if err != nil {
		return rec, err
	}
	steps.Done("runtime_start")
	rec.State, rec.StartedAt = stateRunning, startedAt
	if err := s.store.put(bucketContainers, id, rec); err != nil {
		return rec, fmt.Errorf("persist container %q: %w", id, err)
	}
	steps.Done("persist_running")
	return rec, nil
}

// runRuntime runs the OCI runtime with auraed's --root, bounded.
func (s *Service) runRuntime(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, runtimeCallTimeout)
	defer cancel()
	out, err := runCmd(ctx, s.runtime, append(s.runtimeGlobalArgs(), args...)...)
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(s.runtime), args[0], err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// deleteRuntime deletes the runtime's container. A stopped container is
// deleted without --force: runc then kills what is left in its cgroup (a
// container without a PID namespace of its own may leave processes) and
// removes it, while --force always waits 100 ms after its SIGKILL, even
// for a container that is long gone. A container that still runs (or was
// never started) is deleted with --force.
func (s *Service) deleteRuntime(ctx context.Context, id string) ([]byte, error) {
	out, err := s.runRuntime(ctx, "delete", id)
	if err == nil || notExist(out) {
		return out, err
	}
	return s.runRuntime(ctx, "delete", "--force", id)
}

// notExist reports whether runtime output says the container is unknown.
func notExist(out []byte) bool {
	o := string(out)
	return strings.Contains(o, "does not exist") || strings.Contains(o, "not found")
}

// cleanupContainer removes what Start made of a container: the runtime's
// container, the bundle, exit file, attach dir and record. It tolerates
// missing pieces.
func (s *Service) cleanupContainer(ctx context.Context, id string, steps *timing.Steps) error {
	var errs []error
	s.mu.RLock()
	c := s.ctrs[id]
	s.mu.RUnlock()
	gone, err := s.awaitRelease(ctx, c)
	if err != nil {
		return err
	}
	steps.Done("await_release")
	if !gone {
		if out, err := s.deleteRuntime(ctx, id); err != nil && !notExist(out) {
			errs = append(errs, err)
		}
		steps.Done("runtime_delete")
	}
	if c != nil {
		if err := removeContainerCgroup(ctx, c.record().CgroupPath); err != nil {
			errs = append(errs, err)
		}
	}
	steps.Done("cgroup")
	var trashed []string
	for _, p := range []string{s.bundleDir(id), s.exitFile(id), s.attachDir(id)} {
		t, err := s.toTrash(p)
		if err != nil {
			errs = append(errs, err)
		} else if t != "" {
			trashed = append(trashed, t)
		}
	}
	steps.Done("files")
	// The record goes last, off the call's path: a crash before its
	// deletion commits leaves a record without a bundle, whose removal
	// recovery finishes.
	s.store.deleteSoon(bucketContainers, id, func(err error) {
		s.log.Warn("delete the record of a removed container", "container", id, "error", err)
	})
	s.emptyTrash(trashed)
	return errors.Join(errs...)
}

// toTrash moves p (a container's bundle, exit file or attach dir) into the
// trash dir under a name of its own and returns that name ("" when p does
// not exist): a rename, where removing the bundle's files cost a removal
// a few milliseconds. What cannot be moved is removed in place.
func (s *Service) toTrash(p string) (string, error) {
	t := filepath.Join(s.trashDir(), fmt.Sprintf("%s.%s.%d", filepath.Base(p), filepath.Base(filepath.Dir(p)), trashSeq.Add(1)))
	err := os.Rename(p, t)
	switch {
	case err == nil:
		return t, nil
	case errors.Is(err, os.ErrNotExist):
		return "", nil
	}
	return "", os.RemoveAll(p)
}

// trashSeq numbers what goes to the trash, so that no two moves meet.
var trashSeq atomic.Uint64

// emptyTrash removes what toTrash moved, off the caller's path (Close
// waits for it); what a crash leaves there goes at the next start
// (recover).
func (s *Service) emptyTrash(paths []string) {
	if len(paths) == 0 {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.removeTrashed(paths)
	}()
}

// removeTrashed removes paths of the trash dir.
func (s *Service) removeTrashed(paths []string) {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			s.log.Warn("remove a removed container's files", "path", p, "error", err)
		}
	}
}

// infraCgroupOf returns the pod's infra cgroup, making it on first use.
func (s *Service) infraCgroupOf(p *pod) (*cgroup.Cgroup, error) {
	path := p.paths.GetCgroupPath() + "/" + infraCgroup
	if cgroup.Exists(path) {
		return cgroup.Load(path)
	}
	return cgroup.New(path, cgroup.Limits{})
}
