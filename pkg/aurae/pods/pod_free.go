package pods

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// free stops and removes every container of a pod, kills what is left in
// its cgroup (the pid namespace holder, monitors), unpins its namespaces and
// removes its cgroup, files and record. An unknown pod is already freed.
func (s *Service) free(ctx context.Context, id string) error {
	s.mu.RLock()
	p, ok := s.pods[id]
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freed {
		return nil
	}
	s.mu.RLock()
	var ids []string
	for cid, c := range s.ctrs {
		if c.podID == id {
			ids = append(ids, cid)
		}
	}
	s.mu.RUnlock()
	for _, cid := range ids {
		if err := s.removeContainer(ctx, cid); err != nil {
			return fmt.Errorf("free pod %q: %w", id, err)
		}
	}
	if err := s.teardownPod(ctx, p); err != nil {
		return fmt.Errorf("free pod %q: %w", id, err)
	}
	if err := s.store.delete(bucketPods, id); err != nil {
		return fmt.Errorf("free pod %q: %w", id, err)
	}
	p.freed = true
	s.mu.Lock()
	if s.pods[id] == p {
		delete(s.pods, id)
	}
	s.mu.Unlock()
	s.log.Info("pod freed", "pod", id)
	return nil
}

// teardownTimeout bounds the wait for a pod's last processes to die.
const teardownTimeout = 30 * time.Second

// teardownPod undoes what allocate did; every step tolerates a missing
// resource, so that it can be retried and used to roll back.
func (s *Service) teardownPod(ctx context.Context, p *pod) error {
	ctx, cancel := context.WithTimeout(ctx, teardownTimeout)
	defer cancel()
	cgPath := p.paths.GetCgroupPath()
	if err := killCgroup(ctx, cgPath); err != nil {
		return err
	}
	if p.holderW != nil {
		select {
		case <-p.holderW:
		case <-ctx.Done():
			return fmt.Errorf("namespace holder of pod %q: %w", p.spec.GetId(), ctx.Err())
		}
	}
	dir := s.podDir(p.spec.GetId())
	for _, kind := range namespaceKinds {
		if err := unpin(filepath.Join(dir, "ns", kind)); err != nil {
			return err
		}
	}
	if err := s.removePodCgroup(ctx, p); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return nil
}
