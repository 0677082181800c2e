package cells

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
)

// freeTimeout bounds the wait for a cell's processes to die.
const freeTimeout = 30 * time.Second

// free frees a cell and every cell nested in it, deepest first.
func (s *Service) free(ctx context.Context, name string) error {
	s.mu.RLock()
	var tree []*cell
	for n, c := range s.cells {
		if n == name || strings.HasPrefix(n, name+"/") {
			tree = append(tree, c)
		}
	}
	s.mu.RUnlock()
	if len(tree) == 0 {
		return fmt.Errorf("cell %q: %w", name, errNotFound)
	}
	sort.Slice(tree, func(i, j int) bool { return strings.Count(tree[i].name, "/") > strings.Count(tree[j].name, "/") })
	for _, c := range tree {
		c.mu.Lock()
		if c.cg == nil { // still being allocated
			c.mu.Unlock()
			return fmt.Errorf("cell %q is being allocated: %w", c.name, errPrecondition)
		}
		c.freeing = true
		c.mu.Unlock()
	}
	for _, c := range tree {
		if err := s.destroy(c); err != nil {
			c.mu.Lock()
			c.freeing = false
			c.mu.Unlock()
			return fmt.Errorf("free cell %q: %w", c.name, err)
		}
		if err := s.store.deleteCell(c.name); err != nil {
			return fmt.Errorf("free cell %q: %w", c.name, err)
		}
		s.hub.Forget(observe.Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: c.name})
		s.release(c.name)
		s.log.Info("cell freed", "cell", c.name)
	}
	return nil
}

// destroy kills every process of the cell (its init too, which ends its
// namespaces), waits until they are reaped, and removes the cgroup.
func (s *Service) destroy(c *cell) error {
	ctx, cancel := context.WithTimeout(context.Background(), freeTimeout)
	defer cancel()
	if err := c.cg.Kill(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	execs := sortedExecs(c.execs)
	c.mu.Unlock()
	for _, e := range execs {
		select {
		case <-e.done:
		case <-ctx.Done():
			return fmt.Errorf("executable %q did not end: %w", e.rec.Name, ctx.Err())
		}
	}
	if c.init != nil {
		select {
		case <-c.init.done:
		case <-ctx.Done():
			return errors.New("cell init did not end")
		}
	}
	return c.cg.Delete()
}
