package vms

import (
	"context"
	"fmt"
)

// WaitStopped waits until the VM's hypervisor has exited (at once when it
// does not run) or ctx ends. For runtime.Core's Spawn, whose VMs are
// removed when they exit.
func (s *Service) WaitStopped(ctx context.Context, id string) error {
	v, err := s.lookup(id)
	if err != nil {
		return fmt.Errorf("wait for vm: %w", err)
	}
	if p := v.running(); p != nil {
		return p.Wait(ctx)
	}
	return nil
}
