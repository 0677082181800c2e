package vms

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// adoptTimeout bounds the control-socket check of one VM at recovery.
const adoptTimeout = 5 * time.Second

// recover rebuilds the VMs from the state file. A VM whose dir is gone is
// dropped. A VM recorded running is adopted when its hypervisor still runs
// (same pid and start time) and its control socket answers; a hypervisor of
// ours that does not answer is killed; either way what cannot be adopted is
// marked stopped.
func (s *Service) recover(ctx context.Context) error {
	recs, bad, err := s.store.load()
	if err != nil {
		return err
	}
	for id, err := range bad {
		s.log.Warn("dropping unreadable vm record", "vm", id, "error", err)
		_ = s.store.delete(id)
	}
	for id, r := range recs {
		if validID(id) != nil || r.Spec.GetId() != id {
			s.log.Warn("dropping vm record with a bad id", "vm", id)
			_ = s.store.delete(id)
			continue
		}
		v := &vm{id: id, spec: r.Spec, dir: s.vmDir(id), st: r.Status}
		if _, err := os.Stat(v.dir); err != nil {
			s.log.Warn("dropping vm whose dir is gone", "vm", id, "error", err)
			_ = s.store.delete(id)
			continue
		}
		s.vms[id] = v
		if r.Status.State != vmsv0.VmState_VM_STATE_RUNNING {
			// A hypervisor started (or a pooled VM taken) but not yet
			// recorded running when auraed was killed: not adopted.
			s.killStrayHypervisor(ctx, v.dir)
			s.log.Info("vm recovered", "vm", id, "state", r.Status.State.String())
			continue
		}
		if p := s.adopt(ctx, v, r.Status); p != nil {
			s.setRunning(v, p, r.Status.Warning, "", "")
			s.log.Info("vm adopted", "vm", id, "pid", p.Pid, "accel", p.Accel)
			continue
		}
		v.st.State = vmsv0.VmState_VM_STATE_STOPPED
		v.st.StoppedAt = time.Now().UTC()
		s.persist(v, v.st)
	}
	return nil
}

// adopt returns the running hypervisor of v, or nil.
func (s *Service) adopt(ctx context.Context, v *vm, st vmStatus) *hypervisor.Proc {
	actx, cancel := context.WithTimeout(ctx, adoptTimeout)
	defer cancel()
	p, err := s.hv.Adopt(actx, st.Pid, hypervisor.ControlSocketPath(v.dir))
	switch {
	case p != nil && p.StartTime != st.StartTime:
		// The pid was reused by another QEMU on the same socket path:
		// cannot happen unless the dir was reused; leave it alone.
		s.log.Warn("vm's pid now names another process; marking it stopped", "vm", v.id, "pid", st.Pid)
		return nil
	case err == nil:
		return p
	case p != nil && errors.Is(err, errdefs.ErrUnavailable):
		s.log.Warn("vm's hypervisor runs but does not answer; killing it", "vm", v.id, "pid", st.Pid, "error", err)
		if kerr := s.killHypervisor(ctx, p); kerr != nil {
			s.log.Warn("kill unresponsive hypervisor", "vm", v.id, "pid", st.Pid, "error", kerr)
		}
		return nil
	default:
		s.log.Info("vm's hypervisor is gone; marking it stopped", "vm", v.id, "pid", st.Pid, "error", err)
		return nil
	}
}
