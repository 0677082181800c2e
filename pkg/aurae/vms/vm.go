package vms

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// A VM's states:
//
//	Create ──▶ CREATED ──Start──▶ RUNNING ──Stop, or the hypervisor exits──▶ STOPPED
//	                                 ▲                                          │
//	                                 └──────────────────Start───────────────────┘
//
// Free removes a VM in any state (stopping it first). The hypervisor is the
// truth: a watcher marks a VM STOPPED as soon as its process exits (guest
// power-off, panic, kill), and recovery marks STOPPED what it cannot adopt.

// vm is one VM: its spec is immutable; its status changes under mu, and
// Start, Stop and Free of one VM are serialized by op.
type vm struct {
	id   string
	spec *vmsv0.VirtualMachine
	dir  string
	// reserved: being created, invisible to every other call.
	reserved bool

	op sync.Mutex

	mu sync.Mutex
	st vmStatus
	// freed: removed while a caller waited for op.
	freed bool
	// proc is the running hypervisor (nil unless RUNNING).
	proc *hypervisor.Proc
}

// status is what changes about a VM, persisted in its record.
type vmStatus struct {
	State     vmsv0.VmState `json:"state"`
	Pid       int           `json:"pid,omitempty"`
	StartTime uint64        `json:"start_time,omitempty"`
	Accel     string        `json:"accel,omitempty"`
	Warning   string        `json:"warning,omitempty"`
	// UID is the user (and group) its hypervisor runs as, kept for its
	// life.
	UID uint32 `json:"uid,omitempty"`
	// Boot says how it was last started: "cold" or "template"; BootNote
	// why a VM that could have been cloned was booted cold.
	Boot      string    `json:"boot,omitempty"`
	BootNote  string    `json:"boot_note,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
}

func (v *vm) status() vmStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st
}

func (v *vm) running() *hypervisor.Proc {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.State != vmsv0.VmState_VM_STATE_RUNNING {
		return nil
	}
	return v.proc
}

// setRunning records a started or adopted hypervisor.
func (s *Service) setRunning(v *vm, p *hypervisor.Proc, warning, boot, note string) {
	v.mu.Lock()
	if boot != "" {
		v.st.Boot, v.st.BootNote = boot, note
	}
	v.proc = p
	v.st.State = vmsv0.VmState_VM_STATE_RUNNING
	v.st.Pid, v.st.StartTime = p.Pid, p.StartTime
	v.st.Accel, v.st.Warning = string(p.Accel), warning
	if v.st.StartedAt.IsZero() || v.st.StoppedAt.After(v.st.StartedAt) {
		v.st.StartedAt = time.Now().UTC()
	}
	st := v.st
	v.mu.Unlock()
	s.persist(v, st)
	s.watch(v, p)
}

// setStopped marks v stopped if p is still its hypervisor (nil: any).
func (s *Service) setStopped(v *vm, p *hypervisor.Proc) {
	v.mu.Lock()
	if v.freed || v.st.State != vmsv0.VmState_VM_STATE_RUNNING || (p != nil && v.proc != p) {
		v.mu.Unlock()
		return
	}
	v.proc = nil
	v.st.State = vmsv0.VmState_VM_STATE_STOPPED
	v.st.StoppedAt = time.Now().UTC()
	st := v.st
	v.mu.Unlock()
	s.persist(v, st)
	s.log.Info("vm stopped", "vm", v.id)
}

func (s *Service) persist(v *vm, st vmStatus) {
	if s.closed.Load() {
		return
	}
	if err := s.store.put(v.id, record{Spec: v.spec, Status: st}); err != nil {
		s.log.Warn("persist vm state", "vm", v.id, "error", err)
	}
}

// watch marks v stopped when its hypervisor exits.
func (s *Service) watch(v *vm, p *hypervisor.Proc) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := p.Wait(s.watchCtx); err != nil {
			return // the service closed
		}
		s.setStopped(v, p)
	}()
}

// summary is v as List shows it.
func (s *Service) summary(v *vm) *vmsv0.VmSummary {
	st := v.status()
	sum := &vmsv0.VmSummary{
		Id:            v.id,
		Machine:       v.spec,
		State:         st.State,
		Accelerator:   st.Accel,
		Warning:       st.Warning,
		AuraedAddress: auraedAddress(v.dir),
		Boot:          st.Boot,
		BootNote:      st.BootNote,
	}
	if st.State == vmsv0.VmState_VM_STATE_RUNNING {
		sum.HypervisorPid = int32(st.Pid)
	}
	return sum
}

func auraedAddress(dir string) string { return "unix://" + hypervisor.AuraeSocket(dir) }

// killHypervisor kills p, bounded by a time of its own even when ctx has
// ended (a failed or cancelled start must not leave it running).
func (s *Service) killHypervisor(ctx context.Context, p *hypervisor.Proc) error {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	return s.hv.Kill(kctx, p)
}

// bounded is ctx with a deadline of d when it has none.
func bounded(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// hypervisorUser gives v a user of its own for its hypervisor, once: the
// lowest of the range no other VM and no pooled VM has.
func (s *Service) hypervisorUser(v *vm) (uint32, error) {
	v.mu.Lock()
	uid := v.st.UID
	v.mu.Unlock()
	if uid != 0 {
		return uid, nil
	}
	uid, err := s.takeUser(v)
	if err != nil {
		return 0, err
	}
	s.setUser(v, uid)
	return uid, nil
}

// freeUser reserves a hypervisor user for a pooled VM (released by
// releaseUser).
func (s *Service) freeUser() (uint32, error) { return s.takeUser(nil) }

// takeUser picks the lowest user of the range that no VM and no pooled VM
// has, and gives it to v (nil: reserves it in the pool), under s.mu so
// that two starts never pick the same.
func (s *Service) takeUser(v *vm) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	used := map[uint32]bool{}
	for _, o := range s.vms {
		if o != v {
			used[o.status().UID] = true
		}
	}
	if s.pool != nil {
		s.pool.mu.Lock()
		defer s.pool.mu.Unlock()
		for uid := range s.pool.users {
			used[uid] = true
		}
	}
	// The last one is the template makers' (see Config.Templates).
	for n := range s.cfg.UIDCount - 1 {
		uid := s.cfg.UIDBase + n
		if used[uid] {
			continue
		}
		if v == nil {
			s.pool.users[uid] = true
		} else {
			v.mu.Lock()
			v.st.UID = uid
			v.mu.Unlock()
		}
		return uid, nil
	}
	return 0, fmt.Errorf("all %d hypervisor users are taken: %w", s.cfg.UIDCount-1, errdefs.ErrResourceExhausted)
}

// releaseUser gives back a pooled VM's user.
func (s *Service) releaseUser(uid uint32) {
	if s.pool == nil {
		return
	}
	s.pool.mu.Lock()
	delete(s.pool.users, uid)
	s.pool.mu.Unlock()
}

// setUser records uid as v's hypervisor user, and releases it from the
// pool if it was a pooled VM's (the one v took).
func (s *Service) setUser(v *vm, uid uint32) {
	v.mu.Lock()
	v.st.UID = uid
	st := v.st
	v.mu.Unlock()
	s.persist(v, st)
	s.releaseUser(uid)
}
