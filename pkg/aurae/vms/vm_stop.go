package vms

import (
	"context"
	"fmt"
	"time"
)

// stop powers a VM off: the ACPI power button, StopTimeout for the guest to
// power down, then the hypervisor's quit, then SIGKILL. Stopping an unknown
// or stopped VM succeeds.
func (s *Service) stop(ctx context.Context, id string) error {
	v, err := s.lookup(id)
	if err != nil {
		return nil
	}
	v.op.Lock()
	defer v.op.Unlock()
	return s.stopLocked(ctx, v)
}

// stopLocked stops v; the caller holds v.op.
func (s *Service) stopLocked(ctx context.Context, v *vm) error {
	p := v.running()
	if p == nil {
		return nil
	}
	sctx, cancel := bounded(ctx, s.cfg.StopTimeout+time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := s.hv.Stop(sctx, p, s.cfg.StopTimeout); err != nil {
		return fmt.Errorf("stop vm %q: %w", v.id, err)
	}
	if p.Alive() {
		return fmt.Errorf("stop vm %q: hypervisor pid %d still runs", v.id, p.Pid)
	}
	s.setStopped(v, p)
	s.log.InfoContext(ctx, "vm powered off", "vm", v.id, "took", time.Since(t0).Round(time.Millisecond).String())
	return nil
}
