package pods

import (
	"context"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/signals"
)

// killWait bounds the wait for a container to die after SIGKILL.
const killWait = 30 * time.Second

// stop sends the stop signal sig (SIGTERM unless the container has
// another), waits up to timeout seconds, then SIGKILL, and waits for the
// exit to be recorded. Stopping an unknown or exited container succeeds.
func (s *Service) stop(ctx context.Context, id string, timeout int64, sig syscall.Signal) error {
	c, err := s.lookupContainer(id)
	if err != nil {
		return nil
	}
	// As containerd's StopContainer returns once the shim has deleted the
	// exited task: the runtime's container is released (or its release
	// failed: the removal deletes again) when Stop answers, so that
	// RemoveContainer has only auraed's files and record left.
	defer func() { _, _ = s.awaitRelease(ctx, c) }()
	if isDone(c.done) {
		return nil
	}
	log := s.log.With("pod", c.podID, "container", id)
	if timeout > 0 {
		// Errors are ignored: the container may have exited meanwhile.
		// runc kill takes the number: it knows no real-time signal names.
		_, _ = s.runRuntime(ctx, "kill", id, strconv.Itoa(int(sig)))
		t := time.NewTimer(time.Duration(timeout) * time.Second)
		defer t.Stop()
		select {
		case <-c.done:
			log.Info("container stopped", "signal", signals.Name(sig))
			return nil
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("stop container %q: %w", id, ctx.Err())
		}
	}
	if err := s.kill(ctx, c); err != nil {
		return fmt.Errorf("stop container %q: %w", id, err)
	}
	log.Info("container stopped", "signal", "KILL")
	return nil
}

// kill sends SIGKILL to the container (every process of it when it shares
// the pod's pid namespace) and waits for its exit.
func (s *Service) kill(ctx context.Context, c *container) error {
	args := []string{"kill", c.id, "KILL"}
	if !c.record().OwnPID {
		args = []string{"kill", "--all", c.id, "KILL"}
	}
	_, err := s.runRuntime(ctx, args...)
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
		return fmt.Errorf("still running %s after SIGKILL (kill: %w)", killWait, err)
	case <-ctx.Done():
		return ctx.Err()
	}
}
