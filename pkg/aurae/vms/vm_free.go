package vms

import (
	"context"
	"fmt"
	"os"
)

// free stops a VM and removes its dir and record. Freeing an unknown VM
// succeeds.
func (s *Service) free(ctx context.Context, id string) error {
	v, err := s.lookup(id)
	if err != nil {
		return nil
	}
	v.op.Lock()
	defer v.op.Unlock()
	v.mu.Lock()
	freed := v.freed
	v.mu.Unlock()
	if freed {
		return nil
	}
	if err := s.stopLocked(ctx, v); err != nil {
		return fmt.Errorf("free: %w", err)
	}
	if err := removeVMCgroup(v.spec.GetCgroupPath()); err != nil {
		return fmt.Errorf("free vm %q: %w", id, err)
	}
	if err := os.RemoveAll(v.dir); err != nil {
		return fmt.Errorf("free vm %q: %w", id, err)
	}
	if err := s.store.delete(id); err != nil {
		return fmt.Errorf("free vm %q: %w", id, err)
	}
	v.mu.Lock()
	v.freed = true
	v.mu.Unlock()
	s.mu.Lock()
	delete(s.vms, id)
	s.mu.Unlock()
	s.log.InfoContext(ctx, "vm freed", "vm", id)
	return nil
}
