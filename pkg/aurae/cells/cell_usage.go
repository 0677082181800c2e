package cells

import (
	"context"
	"errors"
	"fmt"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// Usage is the CPU time and memory working set of the cell's cgroup, which
// its executables share; the cgroup's figures include the cells nested in
// it. NotFound for a cell that is unknown, still being allocated or gone.
func (s *Service) Usage(_ context.Context, name string) (cgroup.Usage, error) {
	if err := validCellName(name); err != nil {
		return cgroup.Usage{}, err
	}
	c, err := s.lookup(name)
	if err != nil {
		return cgroup.Usage{}, err
	}
	c.mu.Lock()
	cg := c.cg
	c.mu.Unlock()
	if cg == nil {
		return cgroup.Usage{}, fmt.Errorf("cell %q is being allocated: %w", name, errNotFound)
	}
	u, err := cgroup.ReadUsage(cg.Path())
	if errors.Is(err, cgroup.ErrNotExist) {
		return cgroup.Usage{}, fmt.Errorf("cell %q: %w: %w", name, err, errNotFound)
	}
	if err != nil {
		return cgroup.Usage{}, fmt.Errorf("cell %q: %w", name, err)
	}
	return u, nil
}
