package pods

import (
	"context"
	"os"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"google.golang.org/protobuf/encoding/protojson"
)

// recover rebuilds pods and containers from the state file. A pod whose
// cgroup and directory are both gone is dropped; containers whose monitor is
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
		if _, err := os.Stat(s.podDir(id)); err != nil && !cgroup.Exists(paths.GetCgroupPath()) {
			s.log.Info("dropping pod whose cgroup and directory are gone", "pod", id)
			_ = s.store.delete(bucketPods, id)
			continue
		}
		p := &pod{spec: spec, paths: paths, createdAt: r.CreatedAt, holder: r.Holder}
		if r.Holder.Pid != 0 && !alive(r.Holder.Pid, r.Holder.Start) {
			s.log.Warn("the init of the pod's pid namespace is gone; the pod can only be freed", "pod", id, "pid", r.Holder.Pid)
		}
		s.pods[id] = p
		s.log.Info("pod recovered", "pod", id)
	}
	for id, r := range ctrs {
		if _, ok := s.pods[r.PodID]; !ok {
			s.log.Info("removing container of a pod that is gone", "pod", r.PodID, "container", id)
			if err := s.cleanupContainer(ctx, id); err != nil {
				s.log.Warn("remove container", "container", id, "error", err)
			}
			continue
		}
		c := &container{id: id, podID: r.PodID, rec: r, done: make(chan struct{})}
		s.ctrs[id] = c
		switch r.State {
		case stateRunning, stateCreated:
			if fd, ok := openPidfd(r.ConmonPid, r.ConmonStart); ok {
				s.watch(c, fd)
			} else {
				s.finish(c)
			}
		default:
			close(c.done)
		}
		s.log.Info("container recovered", "pod", r.PodID, "container", id, "state", podsv0.ContainerState(c.record().State).String())
	}
	return nil
}
