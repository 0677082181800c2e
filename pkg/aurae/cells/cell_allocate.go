package cells

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/nsexec"
)

var (
	errNotFound      = errdefs.ErrNotFound
	errAlreadyExists = errdefs.ErrAlreadyExists
	errInvalid       = errdefs.ErrInvalidArgument
	errPrecondition  = errdefs.ErrFailedPrecondition
)

// initTimeout bounds the wait for a cell init to set up its namespaces.
const initTimeout = 10 * time.Second

func (s *Service) allocate(ctx context.Context, req *cellsv0.CellServiceAllocateRequest) (_ *cellsv0.CellServiceAllocateResponse, retErr error) {
	spec := req.GetCell()
	if spec == nil {
		return nil, fmt.Errorf("cell is missing: %w", errInvalid)
	}
	name := spec.GetName()
	if err := validCellName(name); err != nil {
		return nil, err
	}
	limits, err := limitsOf(spec)
	if err != nil {
		return nil, err
	}
	// A top-level cell's memory is accounted on v2 too (Stats reads it):
	// the cell root above it never holds processes. A nested cell gets
	// the memory controller only with a memory limit, as enabling it would
	// forbid processes in its parent cell.
	limits.MemoryAccounting = parentName(name) == ""
	spec = proto.Clone(spec).(*cellsv0.Cell)

	// Reserve the name before any side effect; a failure releases it.
	c := &cell{name: name, spec: spec, execs: map[string]*executable{}}
	var parent *cell
	s.mu.Lock()
	if _, ok := s.cells[name]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("cell %q: %w", name, errAlreadyExists)
	}
	if pn := parentName(name); pn != "" {
		if parent = s.cells[pn]; parent == nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("parent cell %q of %q: %w", pn, name, errNotFound)
		}
	}
	s.cells[name] = c
	s.mu.Unlock()
	// The parent must not be freed while its child is being made.
	if parent != nil {
		parent.mu.Lock()
		defer parent.mu.Unlock()
		if parent.freeing {
			s.release(name)
			return nil, fmt.Errorf("parent cell %q is being freed: %w", parent.name, errPrecondition)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.release(name)
		}
	}()

	cg, err := cgroup.New(s.cgroupPath(name), limits)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("cell %q: a cgroup %s that auraed does not know exists: %w", name, s.cgroupPath(name), errAlreadyExists)
		}
		if errors.Is(err, cgroup.ErrParentHasProcesses) {
			return nil, fmt.Errorf("cell %q: its limits need controllers that its parent cell %q cannot hand down while processes run in it (its init or executables): %w: %w", name, parentName(name), err, errPrecondition)
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ERANGE) {
			return nil, fmt.Errorf("cell %q: the kernel refused its limits: %w: %w", name, err, errInvalid)
		}
		return nil, err
	}
	c.cg = cg
	defer func() {
		if retErr != nil {
			if err := s.destroy(c); err != nil {
				s.log.Error("roll back cell", "cell", name, "error", err)
			}
		}
	}()
	if c.needsInit() {
		ns, err := s.namespacesOf(parent)
		if err != nil {
			return nil, err
		}
		if c.init, err = s.startInit(ctx, c, ns); err != nil {
			return nil, err
		}
	}
	if err := s.persistCell(c); err != nil {
		return nil, err
	}
	s.log.Info("cell allocated", "cell", name, "cgroup", cg.Path(), "isolate_process", spec.GetIsolateProcess(), "isolate_network", spec.GetIsolateNetwork())
	return &cellsv0.CellServiceAllocateResponse{CellName: name, CgroupV2: cgroup.Unified()}, nil
}

func (s *Service) persistCell(c *cell) error {
	b, err := protojson.Marshal(c.spec)
	if err != nil {
		return err
	}
	r := cellRecord{Spec: b, CreatedAt: time.Now()}
	if c.init != nil {
		r.InitPid, r.InitStart = c.init.pid, c.init.start
	}
	if err := s.store.putCell(c.name, r); err != nil {
		return fmt.Errorf("persist cell %q: %w", c.name, err)
	}
	return nil
}

// release forgets a reserved or freed cell name.
func (s *Service) release(name string) {
	s.mu.Lock()
	delete(s.cells, name)
	s.mu.Unlock()
}

// namespacesOf returns the namespaces a process of cell c (or, for a new
// child, of its parent c) joins. nil c means the host's.
func (s *Service) namespacesOf(c *cell) (namespaces, error) {
	var ns namespaces
	var proc, net, cgns *cell
	for x := c; x != nil; x = s.parentOf(x) {
		if proc == nil && x.ownsProcessNS() {
			proc = x
		}
		if net == nil && x.ownsNetworkNS() {
			net = x
		}
		if cgns == nil && x.ownsCgroupNS() {
			cgns = x
		}
	}
	for _, owner := range []*cell{proc, net, cgns} {
		if owner != nil && (owner.init == nil || isDone(owner.init.done)) {
			return ns, fmt.Errorf("%w: %w", errInitLost(owner.name), errPrecondition)
		}
	}
	if proc != nil {
		for _, k := range []string{"ipc", "uts"} {
			ns.join = append(ns.join, nsPath(proc.init.pid, k))
		}
	}
	if net != nil {
		ns.join = append(ns.join, nsPath(net.init.pid, "net"))
	}
	if cgns != nil {
		ns.join = append(ns.join, nsPath(cgns.init.pid, "cgroup"))
	}
	// The mount namespace last: once joined, /proc is the cell's.
	if proc != nil {
		ns.join = append(ns.join, nsPath(proc.init.pid, "mnt"))
		ns.pid = nsPath(proc.init.pid, "pid")
	}
	return ns, nil
}

func (s *Service) parentOf(c *cell) *cell {
	pn := parentName(c.name)
	if pn == "" {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cells[pn]
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// startInit starts the init that creates and holds the cell's namespaces,
// nested in those of its parent (ns).
func (s *Service) startInit(ctx context.Context, c *cell, ns namespaces) (*initProc, error) {
	var flags []string
	var unshare uintptr
	if c.ownsProcessNS() {
		flags = append(flags, "process")
		unshare |= unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC
	}
	if c.ownsNetworkNS() {
		flags = append(flags, "network")
		unshare |= unix.CLONE_NEWNET
	}
	if c.ownsCgroupNS() {
		// Unshared after nsexec placed the init in the cell's cgroup:
		// that cgroup is the namespace's root.
		unshare |= unix.CLONE_NEWCGROUP
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	proc, err := nsexec.Start(nsexec.Spec{
		Path:       "/proc/self/exe",
		Args:       []string{"aurae-cell-init", c.name},
		Env:        []string{InitEnv + "=" + join(flags), envCellHostname + "=" + path.Base(c.name)},
		Join:       ns.join,
		JoinPid:    ns.pid,
		Unshare:    unshare,
		NewPid:     c.ownsProcessNS(),
		ExtraFiles: []*os.File{readyW},
		Place:      c.cg.AddProc,
	})
	readyW.Close()
	if err != nil {
		return nil, fmt.Errorf("start init of cell %q: %w", c.name, err)
	}
	ip := &initProc{pid: proc.Pid, pidfd: -1, done: make(chan struct{})}
	fail := func(err error) (*initProc, error) {
		_ = proc.Kill()
		_, _ = proc.Wait()
		return nil, fmt.Errorf("init of cell %q: %w", c.name, err)
	}
	if err := linux.WaitReady(ctx, readyR, initTimeout); err != nil {
		return fail(err)
	}
	if ip.start, err = linux.StartTime(ip.pid); err != nil {
		return fail(err)
	}
	go func() {
		_, _ = proc.Wait()
		close(ip.done)
	}()
	return ip, nil
}

func join(xs []string) string {
	out := ""
	for i, x := range xs {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}
