package cells

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
)

// Wait waits until the executable name of cell has ended (or ctx ends)
// and returns how it ended. For the adapters of earlier API generations,
// which run a command to completion.
func (s *Service) Wait(ctx context.Context, cell, name string) (*cellsv0.ExecutableStatus, error) {
	c, err := s.lookup(cell)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	e, ok := c.execs[name]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("executable %q in cell %q: %w", name, cell, errdefs.ErrNotFound)
	}
	select {
	case <-e.done:
		return e.status(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
