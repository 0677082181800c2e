package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// The VM pool (Config.PoolSize; Kata's VM cache): clones of the template
// last started from, restored and running with no NIC and no share, whose
// guest auraed answers, and in which nothing ever ran. A VM whose machine
// has that template's key takes one instead of restoring a clone: its dir
// is exchanged with the pooled VM's, its virtiofsds are started, QEMU and
// they are moved into the VM's cgroup, its taps are made and handed over
// QMP, its devices are hot-plugged, and its guest is configured (clock,
// entropy, hostname, PCI rescan, shares, NICs) as a clone's is; then the
// pool is filled again in the background, one VM at a time.
//
// Under the state dir, vms/.pool-<n>/ is a pooled VM's dir (VM ids never
// start with a dot), and its QEMU runs as a hypervisor user of its own in
// the cgroup <cgroup root>/.vm-pool/<n>. Pooled VMs are not recorded: at
// start auraed kills every pooled VM a kill -9 left, and removes its dir
// and cgroup; Close kills them too.
//
// Memory charges never move with a process (cgroup v2; on v1 too since
// Linux 6.x refuses memory.move_charge_at_immigrate): what a pooled VM's
// QEMU allocated before it was taken (its heap, the guest pages dirtied by
// the restore and the guest auraed's start: ~50 MiB here) stays charged to
// .vm-pool, not to the pod; what the guest touches afterwards is the
// pod's.

// attacher is what a hypervisor with a pool offers (QEMU).
type attacher interface {
	Attach(ctx context.Context, p *hypervisor.Proc, cfg hypervisor.VMConfig) error
}

const (
	poolDirPrefix = ".pool-"
	poolCgroup    = ".vm-pool"
	// maxPoolSize bounds Config.PoolSize: each pooled VM holds its guest's
	// memory.
	maxPoolSize = 16
	// poolFillTimeout bounds the start of one pooled VM.
	poolFillTimeout = 2 * time.Minute
)

// pooled is one idle VM of the pool.
type pooled struct {
	name string // .pool-<n>
	dir  string
	uid  uint32
	proc *hypervisor.Proc
	// cgroup is its cgroup ("" without a cgroup root).
	cgroup string
}

// vmPool holds the pooled VMs of one template key at a time.
type vmPool struct {
	size int

	mu   sync.Mutex
	key  string
	base hypervisor.VMConfig // the clones' machine, no devices
	idle []*pooled
	// users: the hypervisor users of pooled VMs, starting or idle.
	users map[uint32]bool
	// filling: a filler goroutine runs.
	filling bool
	next    int
	closed  bool
}

// poolCgroupOf is the cgroup of a pooled VM called name.
func (s *Service) poolCgroupOf(name string) string {
	if s.cfg.CgroupRoot == "" {
		return ""
	}
	return strings.Trim(s.cfg.CgroupRoot, "/") + "/" + poolCgroup + "/" + strings.TrimPrefix(name, ".")
}

// poolTake returns an idle pooled VM of key whose QEMU still runs, or nil.
func (s *Service) poolTake(key string) *pooled {
	if s.pool == nil {
		return nil
	}
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	for s.pool.key == key && len(s.pool.idle) > 0 {
		pv := s.pool.idle[0]
		s.pool.idle = s.pool.idle[1:]
		if pv.proc.Alive() {
			return pv
		}
		s.discardLater(pv, "its hypervisor exited")
	}
	return nil
}

// poolWant makes the pool hold VMs of key (cfg: a clone's machine of it),
// dropping those of another key, and fills it in the background.
func (s *Service) poolWant(key string, cfg hypervisor.VMConfig) {
	if s.pool == nil {
		return
	}
	p := s.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	if p.key != key {
		for _, pv := range p.idle {
			s.discardLater(pv, "the pool now holds another template's VMs")
		}
		p.idle = nil
		p.key = key
		p.base = cfg
		p.base.NICs, p.base.Shares, p.base.Drives = nil, nil, nil
		p.base.NetNSPath, p.base.Place, p.base.Booted = "", nil, nil
	}
	if p.filling || len(p.idle) >= p.size {
		return
	}
	p.filling = true
	s.wg.Add(1)
	go s.fillPool()
}

// fillPool starts pooled VMs one at a time until the pool is full, its key
// changes in a way that makes a start fail, or the service closes.
func (s *Service) fillPool() {
	defer s.wg.Done()
	p := s.pool
	failures := 0
	for {
		p.mu.Lock()
		if p.closed || len(p.idle) >= p.size || failures >= 3 {
			p.filling = false
			p.mu.Unlock()
			return
		}
		key, base := p.key, p.base
		p.next++
		name := poolDirPrefix + strconv.Itoa(p.next)
		p.mu.Unlock()

		ctx, cancel := context.WithTimeout(s.watchCtx, poolFillTimeout)
		t0 := time.Now()
		pv, err := s.startPooled(ctx, key, base, name)
		cancel()
		if err != nil {
			failures++
			if s.watchCtx.Err() == nil {
				s.log.Warn("vm pool: start a pooled vm", "key", key, "error", err)
			}
			continue
		}
		p.mu.Lock()
		keep := !p.closed && p.key == key
		if keep {
			p.idle = append(p.idle, pv)
		}
		n := len(p.idle)
		p.mu.Unlock()
		if !keep {
			s.discardPooled(context.Background(), pv, "not wanted any more")
			continue
		}
		failures = 0
		s.log.Info("vm pool: vm ready", "key", key, "pooled", pv.name, "pid", pv.proc.Pid, "idle", n,
			"took", time.Since(t0).Round(time.Millisecond).String())
	}
}

// startPooled restores a clone of the template key with no devices, in a
// dir and cgroup of its own, and waits for its guest auraed to answer.
func (s *Service) startPooled(ctx context.Context, key string, base hypervisor.VMConfig, name string) (_ *pooled, retErr error) {
	uid, err := s.freeUser()
	if err != nil {
		return nil, err
	}
	pv := &pooled{name: name, dir: s.vmDir(name), uid: uid, cgroup: s.poolCgroupOf(name)}
	defer func() {
		if retErr != nil {
			s.removePooled(pv)
		}
	}()
	if err := os.RemoveAll(pv.dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(pv.dir, 0o700); err != nil {
		return nil, err
	}
	cfg := base
	cfg.ID, cfg.Dir = name, pv.dir
	cfg.UID, cfg.GID = uid, uid
	if pv.cgroup != "" {
		cfg.Place = placeInPool(pv.cgroup, cfg.MemMiB)
	}
	state, err := s.tpl.get(ctx, key, cfg)
	if err != nil {
		return nil, err
	}
	defer state.Close()
	proc, err := s.tpl.hv.StartFromTemplate(ctx, cfg, state)
	if err != nil {
		return nil, err
	}
	c, err := dialRestoredGuest(ctx, pv.dir)
	if err != nil {
		return nil, errors.Join(err, s.killHypervisor(ctx, proc))
	}
	_ = c.Close()
	pv.proc = proc
	return pv, nil
}

// takePooled makes the pooled VM pv the VM v (cfg: v's clone machine, with
// its devices): see the package's pool comment. On failure pv's QEMU is
// killed and v's dir holds only what a boot removes.
func (s *Service) takePooled(ctx context.Context, v *vm, cfg hypervisor.VMConfig, plan guestPlan, pv *pooled) (_ *hypervisor.Proc, retErr error) {
	at, ok := s.hv.(attacher)
	if !ok {
		return nil, errors.New("the hypervisor cannot attach devices to a running vm")
	}
	p := *pv.proc
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, s.killHypervisor(ctx, &p))
			s.removePooled(pv)
		}
	}()
	// One rename exchanges the two dirs: QEMU's descriptor of its dir
	// follows it, so its sockets are v's from here on; v's config.json is
	// moved back, and the pooled VM's name is left empty.
	if err := unix.Renameat2(unix.AT_FDCWD, pv.dir, unix.AT_FDCWD, v.dir, unix.RENAME_EXCHANGE); err != nil {
		return nil, fmt.Errorf("take pooled vm %s: %w", pv.name, err)
	}
	p.ControlSocket = hypervisor.ControlSocketPath(v.dir)
	if err := os.Rename(filepath.Join(pv.dir, "config.json"), filepath.Join(v.dir, "config.json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("take pooled vm %s: %w", pv.name, err)
	}
	if err := os.RemoveAll(pv.dir); err != nil {
		return nil, fmt.Errorf("take pooled vm %s: %w", pv.name, err)
	}
	cfg.UID, cfg.GID = pv.uid, pv.uid
	if err := at.Attach(ctx, &p, cfg); err != nil {
		return nil, fmt.Errorf("attach pooled vm %s: %w", pv.name, err)
	}
	removePoolCgroup(pv.cgroup)
	if err := s.configureGuest(ctx, v, plan, true, len(cfg.NICs)); err != nil {
		return nil, fmt.Errorf("configure the guest of pooled vm %s: %w", pv.name, err)
	}
	return &p, nil
}

// discardLater discards pv in the background; the caller holds the pool's
// lock, and the pool is not closed (see closePool).
func (s *Service) discardLater(pv *pooled, why string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.discardPooled(context.Background(), pv, why)
	}()
}

// discardPooled kills a pooled VM and removes its dir and cgroup.
func (s *Service) discardPooled(ctx context.Context, pv *pooled, why string) {
	if err := s.killHypervisor(ctx, pv.proc); err != nil {
		s.log.Warn("vm pool: kill a pooled vm", "pooled", pv.name, "pid", pv.proc.Pid, "error", err)
	}
	s.removePooled(pv)
	s.log.Info("vm pool: vm discarded", "pooled", pv.name, "reason", why)
}

// removePooled removes a pooled VM's dir and cgroup and gives back its
// user, once its hypervisor is dead (or, after a take, v's).
func (s *Service) removePooled(pv *pooled) {
	_ = os.RemoveAll(pv.dir)
	removePoolCgroup(pv.cgroup)
	s.releaseUser(pv.uid)
}

// closePool closes the pool: no filler starts after it (poolWant adds to
// s.wg under the pool's lock, so before Close waits on it), and a running
// filler discards what it makes. It returns the idle pooled VMs, for the
// caller to discard.
func (s *Service) closePool() []*pooled {
	if s.pool == nil {
		return nil
	}
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	s.pool.closed = true
	idle := s.pool.idle
	s.pool.idle = nil
	return idle
}

// cleanupPool removes what a killed auraed left of its pool: each pooled
// VM's QEMU (found by its pid file, checked against its control socket),
// its dir and its cgroup.
func (s *Service) cleanupPool(ctx context.Context) {
	ents, _ := os.ReadDir(filepath.Join(s.cfg.StateDir, "vms"))
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), poolDirPrefix) {
			continue
		}
		dir := filepath.Join(s.cfg.StateDir, "vms", e.Name())
		s.killStrayHypervisor(ctx, dir)
		_ = os.RemoveAll(dir)
		removePoolCgroup(s.poolCgroupOf(e.Name()))
		s.log.Info("vm pool: removed a pooled vm left by an earlier auraed", "pooled", e.Name())
	}
	if s.cfg.CgroupRoot != "" {
		for _, d := range cgroup.AllDirs(strings.Trim(s.cfg.CgroupRoot, "/") + "/" + poolCgroup) {
			subs, _ := os.ReadDir(d)
			for _, sub := range subs {
				if sub.IsDir() {
					removePoolCgroup(s.poolCgroupOf(poolDirPrefix + sub.Name()))
				}
			}
		}
	}
}

// placeInPool puts a pooled VM's QEMU into its own cgroup, limited as a
// VM's is.
func placeInPool(path string, memMiB uint32) func(pids ...int) error {
	return func(pids ...int) error {
		removePoolCgroup(path)
		return hypervisorCgroup(path, memMiB, pids)
	}
}

// removePoolCgroup removes a pooled VM's cgroup (empty by then: its QEMU
// moved or died).
func removePoolCgroup(path string) {
	if path == "" || !cgroup.Exists(path) {
		return
	}
	if cg, err := cgroup.Load(path); err == nil {
		_ = cg.Delete()
	}
}
