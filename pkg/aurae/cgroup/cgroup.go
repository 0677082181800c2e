// Package cgroup creates, fills, limits, empties and removes the control
// groups of Aurae cells on cgroup v1, v2 and hybrid hosts, through
// github.com/containerd/cgroups/v3. On hybrid hosts the limits live in the v1
// hierarchies (the unified one has no controllers there).
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Root is where the cgroup hierarchies are mounted.
const Root = "/sys/fs/cgroup"

// ErrNotExist is returned by Load for a cgroup that is gone.
var ErrNotExist = errors.New("cgroup does not exist")

// ErrParentHasProcesses is returned on cgroup v2 for a cgroup whose limits
// need controllers its parent cannot hand down: v2 lets no process live in
// a cgroup that gives controllers to its children (the kernel's EBUSY).
var ErrParentHasProcesses = errors.New("cgroup v2 gives no controllers to the children of a cgroup with processes in it")

// ErrUnsupported is returned for a limit the host's cgroup version lacks.
var ErrUnsupported = errors.New("not supported by this cgroup version")

// Limits are the resource limits of a cgroup; nil fields are left as the
// kernel's defaults.
type Limits struct {
	CPUWeight  *uint64 // 1..10000 (cgroup v2 cpu.weight)
	CPUMax     *int64  // quota in µs per period
	CPUPeriod  *uint64 // µs
	Cpus       *string
	Mems       *string
	MemoryMin  *int64
	MemoryLow  *int64
	MemoryHigh *int64
	MemoryMax  *int64
	// MemoryAccounting enables the v2 memory controller without a memory
	// limit, for the figures ReadUsage reads (v1 always accounts). Only for
	// a cgroup whose parent never holds processes: a v2 cgroup that hands
	// controllers to its children can hold none itself.
	MemoryAccounting bool
}

// Unified reports whether limits live in the unified (v2) hierarchy.
func Unified() bool { return cgroups.Mode() == cgroups.Unified }

// Check refuses limits the host's cgroup version cannot apply.
func (l Limits) Check() error {
	if Unified() {
		return nil
	}
	if l.MemoryMin != nil {
		return fmt.Errorf("memory min: %w (cgroup v1 has no memory.min)", ErrUnsupported)
	}
	if l.MemoryHigh != nil {
		return fmt.Errorf("memory high: %w (cgroup v1 has no memory.high)", ErrUnsupported)
	}
	return nil
}

// Cgroup is one control group, by path below the hierarchy roots
// ("aurae/web/db").
type Cgroup struct {
	path string
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
}

// Path is the cgroup's path below the hierarchy roots, without a leading slash.
func (c *Cgroup) Path() string { return c.path }

func abs(path string) string { return "/" + strings.Trim(path, "/") }

// Exists reports whether the cgroup directory is there.
func Exists(path string) bool {
	_, err := os.Stat(dir(path))
	return err == nil
}

// dir is the directory that tells whether the cgroup exists: the unified one
// on v2, the memory (or cpu) controller's on v1.
func dir(path string) string {
	if Unified() {
		return filepath.Join(Root, path)
	}
	return ControllerFile(path, "memory", "")
}

// ControllerFile is the path of a controller's interface file of the cgroup
// (on v2 the controller is ignored: every file is in the one directory).
func ControllerFile(path, controller, file string) string {
	if Unified() {
		return filepath.Join(Root, path, file)
	}
	return filepath.Join(Root, controller, path, file)
}

// New creates the cgroup with its limits. On failure nothing it created is
// left behind.
func New(path string, l Limits) (_ *Cgroup, retErr error) {
	if err := l.Check(); err != nil {
		return nil, err
	}
	if Exists(path) {
		return nil, fmt.Errorf("cgroup %s: %w", path, os.ErrExist)
	}
	defer func() {
		if retErr != nil {
			removeDirs(path)
		}
	}()
	if Unified() {
		m, err := cgroup2.NewManager(Root, abs(path), v2Resources(l))
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("create cgroup %s: %w (%w)", path, ErrParentHasProcesses, err)
		}
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", path, err)
		}
		return &Cgroup{path: path, v2: m}, nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(abs(path)), v1Resources(l), cgroup1.WithHierarchy(v1Hierarchy))
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", path, err)
	}
	return &Cgroup{path: path, v1: cg}, nil
}

// Load opens an existing cgroup.
func Load(path string) (*Cgroup, error) {
	if !Exists(path) {
		return nil, fmt.Errorf("cgroup %s: %w", path, ErrNotExist)
	}
	if Unified() {
		m, err := cgroup2.Load(abs(path))
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", path, err)
		}
		return &Cgroup{path: path, v2: m}, nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(abs(path)), cgroup1.WithHierarchy(v1Hierarchy))
	if err != nil {
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil, fmt.Errorf("cgroup %s: %w", path, ErrNotExist)
		}
		return nil, fmt.Errorf("load cgroup %s: %w", path, err)
	}
	return &Cgroup{path: path, v1: cg}, nil
}

// v1Hierarchy limits the v1 controllers to the ones cells use, so that a cell
// costs a few mkdirs and not one per mounted controller.
func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		switch s.Name() {
		case cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Cpuset, cgroup1.Memory, cgroup1.Pids, cgroup1.Freezer:
			out = append(out, s)
		}
	}
	return out, nil
}

// v1Controllers are the directories New may create on v1, for rollback.
var v1Controllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"}

// dirs are the cgroup's directories: one per v1 hierarchy, or the unified one.
func dirs(path string) []string {
	if Unified() {
		return []string{filepath.Join(Root, path)}
	}
	return v1Dirs(path)
}

func v1Dirs(path string) []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range v1Controllers {
		// cpu and cpuacct are often one mount behind two names.
		if r, err := filepath.EvalSymlinks(filepath.Join(Root, c)); err == nil {
			if seen[r] {
				continue
			}
			seen[r] = true
		}
		out = append(out, filepath.Join(Root, c, path))
	}
	return out
}

// AllDirs are the directories of the cgroup path: on v1 those that exist
// in any hierarchy mounted under Root (also those New does not make: what
// runc, or a process killed half way, may have made), on v2 the unified
// one.
func AllDirs(path string) []string {
	if Unified() {
		return []string{filepath.Join(Root, path)}
	}
	return dirsUnder(Root, path)
}

// dirsUnder are the directories path names in the hierarchies mounted
// under root.
func dirsUnder(root, path string) []string {
	// Not filepath.Glob(Root/*/path): it reads every directory on the
	// way (each hierarchy's root, the pods' parent), and a readdir of a
	// cgroup directory waits on the kernel's locks behind every cgroup
	// being made or removed, 2-10 ms per call under critest's load. A
	// lookup of the path in each hierarchy does not.
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue // files, and the symlinks to a hierarchy (cpu -> cpu,cpuacct)
		}
		d := filepath.Join(root, e.Name(), path)
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			out = append(out, d)
		}
	}
	return out
}

func removeDirs(path string) {
	for _, d := range dirs(path) {
		_ = unix.Rmdir(d)
	}
}

// AddProc moves a process into the cgroup (all its controllers).
func (c *Cgroup) AddProc(pid int) error {
	if c.v2 != nil {
		return c.v2.AddProc(uint64(pid))
	}
	return c.v1.AddProc(uint64(pid))
}

// Procs lists the pids in the cgroup and, recursively, its children. It
// reads cgroup.procs files only (the library's walk stats every interface
// file, which costs more than the rest of a cell's life).
func (c *Cgroup) Procs() ([]int, error) {
	d := filepath.Join(Root, c.path)
	if c.v2 == nil {
		d = ControllerFile(c.path, "freezer", "")
	}
	var out []int
	err := readProcs(d, &out)
	return out, err
}

func readProcs(dir string, out *[]int) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			*out = append(*out, pid)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			// A child removed meanwhile (ENODEV: a systemd scope whose last
			// process just exited) has no processes.
			if err := readProcs(filepath.Join(dir, e.Name()), out); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENODEV) {
				return err
			}
		}
	}
	return nil
}

// Kill sends SIGKILL to every process of the cgroup and its children and
// waits until they are gone (their parents must reap them) or ctx ends.
func (c *Cgroup) Kill(ctx context.Context) error {
	for {
		if c.v2 != nil {
			if err := c.v2.Kill(); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("kill cgroup %s: %w", c.path, err)
			}
		} else if err := c.killV1(); err != nil {
			return err
		}
		procs, err := c.Procs()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s still has %d processes: %w", c.path, len(procs), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// killV1 sends SIGKILL to every process of the cgroup. It does not freeze
// the cgroup first: on v1 a freeze can stay FREEZING for good while a
// process is inside execve (seen with runc init); Kill's loop catches
// processes forked meanwhile instead.
func (c *Cgroup) killV1() error {
	procs, err := c.Procs()
	if err != nil {
		return nil
	}
	for _, p := range procs {
		_ = unix.Kill(p, unix.SIGKILL)
	}
	return nil
}

// Delete removes the cgroup, which must be empty and have no children.
// The kernel may report a cgroup whose last process was just reaped as busy
// for a moment; that is retried.
func (c *Cgroup) Delete() error {
	var dirs []string
	if c.v2 != nil {
		dirs = []string{filepath.Join(Root, c.path)}
	} else {
		dirs = v1Dirs(c.path)
	}
	for _, d := range dirs {
		delay := 500 * time.Microsecond
		for try := 0; ; try++ {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || try == 10 {
				return fmt.Errorf("delete cgroup %s: %w", d, err)
			}
			time.Sleep(delay)
			delay *= 2
		}
	}
	return nil
}

// CPUUsage is the CPU time used by the cgroup's processes so far.
func (c *Cgroup) CPUUsage() (time.Duration, error) { return cpuUsage(c.path, c.v2 != nil) }

// SharesFromWeight converts a cgroup v2 cpu.weight to v1 cpu.shares, the
// inverse of the conversion runc and the kernel documentation use.
func SharesFromWeight(w uint64) uint64 {
	return 2 + ((w-1)*262142)/9999
}

func v1Resources(l Limits) *specs.LinuxResources {
	r := &specs.LinuxResources{}
	if l.CPUWeight != nil || l.CPUMax != nil || l.CPUPeriod != nil || l.Cpus != nil || l.Mems != nil {
		r.CPU = &specs.LinuxCPU{Quota: l.CPUMax, Period: l.CPUPeriod}
		if l.CPUMax != nil && l.CPUPeriod == nil {
			p := uint64(100000)
			r.CPU.Period = &p
		}
		if l.CPUWeight != nil {
			s := SharesFromWeight(*l.CPUWeight)
			r.CPU.Shares = &s
		}
		if l.Cpus != nil {
			r.CPU.Cpus = *l.Cpus
		}
		if l.Mems != nil {
			r.CPU.Mems = *l.Mems
		}
	}
	if l.MemoryMax != nil || l.MemoryLow != nil {
		r.Memory = &specs.LinuxMemory{Limit: l.MemoryMax, Reservation: l.MemoryLow}
	}
	return r
}

func v2Resources(l Limits) *cgroup2.Resources {
	r := &cgroup2.Resources{}
	if l.CPUWeight != nil || l.CPUMax != nil || l.CPUPeriod != nil || l.Cpus != nil || l.Mems != nil {
		r.CPU = &cgroup2.CPU{Weight: l.CPUWeight}
		if l.CPUMax != nil || l.CPUPeriod != nil {
			r.CPU.Max = cgroup2.NewCPUMax(l.CPUMax, l.CPUPeriod)
		}
		if l.Cpus != nil {
			r.CPU.Cpus = *l.Cpus
		}
		if l.Mems != nil {
			r.CPU.Mems = *l.Mems
		}
	}
	if l.MemoryMin != nil || l.MemoryLow != nil || l.MemoryHigh != nil || l.MemoryMax != nil || l.MemoryAccounting {
		r.Memory = &cgroup2.Memory{Min: l.MemoryMin, Low: l.MemoryLow, High: l.MemoryHigh, Max: l.MemoryMax}
	}
	return r
}
