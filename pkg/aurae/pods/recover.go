package pods

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// recover rebuilds pods and containers from the state file. A pod whose
// cgroup is gone is dropped with what is left of it; containers whose monitor is
// alive are watched again; those whose monitor exited meanwhile get the exit
// code and time from conmon's exit file. Containers of a dropped pod are
// removed.
func (s *Service) recover(ctx context.Context) error {
	pods, ctrs, err := s.store.load()
	if err != nil {
		return err
	}
	for id, r := range pods {
		spec, paths := &podsv0.Pod{}, &podsv0.AllocateResponse{}
		if err := protojson.Unmarshal(r.Spec, spec); err != nil {
			s.log.Warn("dropping unreadable pod record", "pod", id, "error", err)
			_ = s.store.delete(bucketPods, id)
			continue
		}
		if err := protojson.Unmarshal(r.Paths, paths); err != nil {
			s.log.Warn("dropping unreadable pod record", "pod", id, "error", err)
			_ = s.store.delete(bucketPods, id)
			continue
		}
		paths.OomScoreAdjMin = s.oomFloor // auraed's own now, which containers started from here on get
		paths.OciVersion = s.specVersion  // the runtime's now, likewise
		p := &pod{spec: spec, paths: paths, createdAt: r.CreatedAt, holder: r.Holder}
		if r.Allocating || !cgroup.Exists(paths.GetCgroupPath()) {
			// An Allocate cut short, or a pod whose cgroup went (after a
			// reboot, or someone removed it): the pod is dead. What is
			// left of it (holder, pins, files) goes; its containers below.
			s.log.Info("dropping a pod half allocated or whose cgroup is gone", "pod", id, "allocating", r.Allocating)
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := s.teardownPod(tctx, p)
			cancel()
			if err != nil {
				s.log.Warn("remove what is left of a dead pod", "pod", id, "error", err)
			}
			_ = s.store.delete(bucketPods, id)
			continue
		}
		if r.Holder.Pid != 0 && !linux.Alive(r.Holder.Pid, r.Holder.Start) {
			s.log.Warn("the init of the pod's pid namespace is gone; the pod can only be freed", "pod", id, "pid", r.Holder.Pid)
		}
		s.pods[id] = p
		s.log.Info("pod recovered", "pod", id)
	}
	for id, r := range ctrs {
		if _, ok := s.pods[r.PodID]; !ok {
			s.log.Info("removing container of a pod that is gone", "pod", r.PodID, "container", id)
			if err := s.cleanupContainer(ctx, id, nil); err != nil {
				s.log.Warn("remove container", "container", id, "error", err)
			}
			continue
		}
		if s.removalCutShort(ctx, id, r) {
			delete(ctrs, id)
			continue
		}
		c := &container{id: id, podID: r.PodID, rec: r, done: make(chan struct{})}
		s.ctrs[id] = c
		switch r.State {
		case stateRunning, stateCreated:
			if fd, ok := linux.OpenPidfd(r.ConmonPid, r.ConmonStart); ok {
				if r.State == stateCreated {
					s.fixCreated(ctx, c)
				}
				s.watchOOM(c, r.CgroupPath)
				s.watch(c, fd)
			} else {
				if r.State == stateCreated && r.ConmonPid == 0 {
					s.reapOrphanMonitor(id)
				}
				s.finish(c)
			}
		default:
			close(c.done)
		}
		s.log.Info("container recovered", "pod", r.PodID, "container", id, "state", podsv0.ContainerState(c.record().State).String())
	}
	s.removeStrayContainerFiles(ctrs)
	s.emptyTrashLeft()
	return nil
}

// removalCutShort finishes the removal of a container whose record
// outlived its bundle: the bundle is made before the record and goes to
// the trash before the record's deletion, which commits off the removal's
// path (cleanupContainer), so a crash between them leaves such a record.
// Its monitor is dead by then (a live one means someone else removed the
// bundle: the container is left as it is). It reports whether the record
// was of such a removal.
func (s *Service) removalCutShort(ctx context.Context, id string, r ctrRecord) bool {
	if _, err := os.Lstat(s.bundleDir(id)); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	if r.ConmonPid != 0 && linux.Alive(r.ConmonPid, r.ConmonStart) {
		return false
	}
	s.log.Info("finishing the removal of a container whose bundle is gone", "pod", r.PodID, "container", id)
	if err := removeContainerCgroup(ctx, r.CgroupPath); err != nil {
		s.log.Warn("remove container cgroup", "container", id, "error", err)
	}
	if err := s.store.delete(bucketContainers, id); err != nil {
		s.log.Warn("delete the record of a removed container", "container", id, "error", err)
	}
	return true
}

// emptyTrashLeft removes what removals moved to the trash and a stop or a
// crash left there.
func (s *Service) emptyTrashLeft() {
	ents, err := os.ReadDir(s.trashDir())
	if err != nil {
		return
	}
	paths := make([]string, 0, len(ents))
	for _, e := range ents {
		paths = append(paths, filepath.Join(s.trashDir(), e.Name()))
	}
	s.removeTrashed(paths)
}

// removeStrayContainerFiles removes the bundles, exit files and attach
// dirs of containers auraed has no record of: a Start cut short between
// making its bundle and recording the container (nothing of the runtime
// ran yet: the record comes first), so that its retry is not refused as
// AlreadyExists. The record is deleted last on removal, so a removal cut
// short leaves a record and is finished by the next one.
func (s *Service) removeStrayContainerFiles(known map[string]ctrRecord) {
	for _, dir := range []string{filepath.Dir(s.bundleDir("x")), filepath.Dir(s.exitFile("x")), filepath.Dir(s.attachDir("x"))} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if ofKnownContainer(e.Name(), known) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				s.log.Warn("remove the files of a container auraed has no record of", "container", e.Name(), "error", err)
				continue
			}
			s.log.Info("removed the files of a container auraed has no record of", "container", e.Name(), "path", filepath.Join(dir, e.Name()))
		}
	}
}

// ofKnownContainer tells whether name is a known container's id, or
// "<id>.<suffix>" of one: conmon writes the exit file as such a temp file
// and renames it, maybe at this very moment. (Ids may hold dots: a
// RunCell container's is "<cell>.<name>".)
func ofKnownContainer(name string, known map[string]ctrRecord) bool {
	for i := len(name); i > 0; i = strings.LastIndexByte(name[:i], '.') {
		if _, ok := known[name[:i]]; ok {
			return true
		}
	}
	return false
}

// fixCreated asks the runtime about a container auraed recorded as created:
// auraed may have died between `runc start` and recording it as running.
func (s *Service) fixCreated(ctx context.Context, c *container) {
	out, err := s.runRuntime(ctx, "state", c.id)
	if err != nil {
		return
	}
	var st struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(out, &st) != nil || st.Status != "running" {
		return
	}
	c.mu.Lock()
	c.rec.State = stateRunning
	// The exact start is lost; now is no earlier than it.
	c.rec.StartedAt = time.Now().UnixNano()
	r := c.rec
	c.mu.Unlock()
	if err := s.store.put(bucketContainers, c.id, r); err != nil {
		s.log.Warn("persist container", "container", c.id, "error", err)
	}
}
