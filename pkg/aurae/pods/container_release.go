package pods

import (
	"context"
	"time"
)

// release deletes the runtime's container of an exited container in the
// background, as containerd's shim deletes a task once it has exited: runc
// kills what is left in its cgroup and removes the cgroup and its state.
// RemoveContainer then has only auraed's own files and record left to
// remove. Whatever deletes the runtime's container later (remove, restart,
// a failed start's undo) waits for the release first, and deletes again
// unless the release deleted a container runc knew: one cut short by a
// restart of auraed, one that failed, and one that found no container
// (runc's delete of a container it does not know fails with "does not
// exist", and a `runc create` left running by a killed auraed may still
// make it). Called with c.mu held, once.
func (s *Service) release(c *container) {
	if s.closed.Load() {
		return
	}
	ch := make(chan struct{})
	c.released = ch
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(ch)
		ctx, cancel := context.WithTimeout(context.Background(), runtimeCallTimeout)
		defer cancel()
		t0 := time.Now()
		out, err := s.deleteRuntime(ctx, c.id)
		if err != nil {
			// Not there (yet): a start cut short by a crash of auraed
			// may have left a `runc create` that finishes after this;
			// the removal deletes again, as it does after a failure.
			if !notExist(out) {
				s.log.Warn("delete the runtime's container of an exited container (the removal tries again)", "pod", c.podID, "container", c.id, "error", err)
			}
			return
		}
		c.mu.Lock()
		c.runtimeGone = true
		c.mu.Unlock()
		s.log.Debug("runtime's container of an exited container deleted", "pod", c.podID, "container", c.id, "ms", float64(time.Since(t0).Microseconds())/1000)
	}()
}

// awaitRelease waits for the release of c (if one was started) and reports
// whether the runtime's container is known to be deleted.
func (s *Service) awaitRelease(ctx context.Context, c *container) (bool, error) {
	if c == nil {
		return false, nil
	}
	c.mu.Lock()
	ch := c.released
	c.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runtimeGone, nil
}
