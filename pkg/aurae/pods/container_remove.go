package pods

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/timing"
)

// removeContainer kills the container if it runs, deletes it from the
// runtime and removes its bundle and record. Its log stays (the kubelet owns
// it). Removing an unknown container succeeds.
func (s *Service) removeContainer(ctx context.Context, id string) (retErr error) {
	steps := timing.Start()
	s.mu.RLock()
	c, ok := s.ctrs[id]
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	defer func() {
		steps.Log(ctx, s.log, "container remove steps", "pod", c.podID, "container", id, "ok", retErr == nil)
	}()
	if c.reserved() {
		return fmt.Errorf("container %q is being started: %w", id, errdefs.ErrFailedPrecondition)
	}
	if !isDone(c.done) {
		if err := s.kill(ctx, c); err != nil {
			return fmt.Errorf("remove container %q: %w", id, err)
		}
		steps.Done("kill")
	}
	if err := s.cleanupContainer(ctx, id, steps); err != nil {
		return fmt.Errorf("remove container %q: %w", id, err)
	}
	s.mu.Lock()
	if s.ctrs[id] == c {
		delete(s.ctrs, id)
	}
	s.mu.Unlock()
	s.events.publish(podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED, c.status())
	s.log.Info("container removed", "pod", c.podID, "container", id)
	return nil
}
