package cgroup

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// Resources are the limits Set puts on an existing cgroup, as a whole: a
// field left zero puts the kernel's default back (no limit, the default
// weight, the parent's cpuset), so that a cgroup ends with exactly these
// limits whatever it had before.
type Resources struct {
	// CPUShares are v1 cpu.shares (2..262144); on v2 they become
	// cpu.weight as runc converts them. 0: the default (1024, weight 100).
	CPUShares uint64
	// CPUQuota is µs per CPUPeriod; <= 0: no quota. CPUPeriod 0: 100000.
	CPUQuota  int64
	CPUPeriod uint64
	// Cpus and Mems are cpuset lists; "": the parent's.
	Cpus, Mems string
	// MemoryLimit in bytes; <= 0: no limit.
	MemoryLimit int64
	// MemorySwap is memory plus swap (OCI's memory.swap, v1 memsw), at
	// least MemoryLimit; <= 0: no bound of its own.
	MemorySwap int64
	// Hugepages are limits in bytes by page size ("2MB", "1GB"); a size not
	// named is left unlimited.
	Hugepages map[string]uint64
	// Unified are cgroup v2 interface files and their values, written
	// last (v2 only).
	Unified map[string]string
}

// defaultPeriod is the kernel's CFS period.
const defaultPeriod = 100000

// Set gives the cgroup exactly the limits r. It checks first what the
// host cannot apply (ErrUnsupported: unified keys off v2, a hugepage size
// or swap the host does not account): nothing is written then. A write the
// kernel refuses (a memory limit below the usage on v1, a cpuset that
// leaves a child's out) stops there, with the file named; the caller puts
// the previous limits back.
func (c *Cgroup) Set(r Resources) error {
	return setAt(Root, c.v2 != nil, c.path, r)
}

// setAt is Set below root, on the v2 layout when unified.
func setAt(root string, unified bool, path string, r Resources) error {
	w := writer{root: root, unified: unified, path: path}
	if err := w.check(r); err != nil {
		return err
	}
	if unified {
		return w.setV2(r)
	}
	return w.setV1(r)
}

type writer struct {
	root    string
	unified bool
	path    string
}

// file is a controller's interface file of the cgroup.
func (w writer) file(controller, name string) string {
	if w.unified {
		return filepath.Join(w.root, w.path, name)
	}
	return filepath.Join(w.root, controller, w.path, name)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// hugetlbFile is the limit file of a page size.
func (w writer) hugetlbFile(size string) string {
	if w.unified {
		return w.file("hugetlb", "hugetlb."+size+".max")
	}
	return w.file("hugetlb", "hugetlb."+size+".limit_in_bytes")
}

func (w writer) check(r Resources) error {
	if len(r.Unified) > 0 && !w.unified {
		return fmt.Errorf("unified keys: %w (this host's limits are in cgroup v1 hierarchies)", ErrUnsupported)
	}
	for k := range r.Unified {
		if err := ValidUnifiedKey(k); err != nil {
			return err
		}
		if !exists(filepath.Join(w.root, w.path, k)) {
			return fmt.Errorf("unified key %q: no such file in the cgroup (its controller is not enabled here): %w", k, ErrUnsupported)
		}
	}
	if len(r.Hugepages) > 0 {
		if !w.unified && !exists(filepath.Join(w.root, "hugetlb")) {
			return fmt.Errorf("hugepage limits: %w (no hugetlb hierarchy is mounted)", ErrUnsupported)
		}
		for _, size := range slices.Sorted(maps.Keys(r.Hugepages)) {
			if !linux.ValidPageSize(size) {
				return fmt.Errorf("hugepage size %q is not a size such as 2MB or 1GB: %w", size, ErrUnsupported)
			}
			if w.unified && !exists(w.hugetlbFile(size)) {
				return fmt.Errorf("hugepage size %s: %w (no %s: the hugetlb controller is not enabled for the cgroup, or the host has no such pages)", size, ErrUnsupported, filepath.Base(w.hugetlbFile(size)))
			}
			if !w.unified && !exists(filepath.Join(w.root, "hugetlb", "hugetlb."+size+".limit_in_bytes")) {
				return fmt.Errorf("hugepage size %s: %w (the host has no such pages)", size, ErrUnsupported)
			}
		}
	}
	if r.MemorySwap > 0 {
		if r.MemoryLimit <= 0 || r.MemorySwap < r.MemoryLimit {
			return fmt.Errorf("memory+swap %d is below the memory limit %d: %w", r.MemorySwap, r.MemoryLimit, ErrUnsupported)
		}
		f := w.file("memory", "memory.memsw.limit_in_bytes")
		if w.unified {
			f = w.file("memory", "memory.swap.max")
		}
		if !exists(f) {
			return fmt.Errorf("a swap limit: %w (the host does not account swap: no %s)", ErrUnsupported, filepath.Base(f))
		}
	}
	return nil
}

// ValidUnifiedKey accepts the name of a controller's interface file
// ("memory.oom.group"): a plain name in the cgroup's directory, not a
// cgroup.* core file (those move processes, kill or change the tree).
func ValidUnifiedKey(k string) error {
	ctrl, rest, ok := strings.Cut(k, ".")
	if !ok || ctrl == "" || rest == "" || strings.ContainsAny(k, "/\x00") || strings.Contains(k, "..") {
		return fmt.Errorf("unified key %q is not a cgroup interface file name: %w", k, ErrUnsupported)
	}
	if ctrl == "cgroup" {
		return fmt.Errorf("unified key %q is a core cgroup file, which no resource update may write: %w", k, ErrUnsupported)
	}
	for _, c := range ctrl {
		if (c < 'a' || c > 'z') && c != '_' {
			return fmt.Errorf("unified key %q is not a cgroup interface file name: %w", k, ErrUnsupported)
		}
	}
	return nil
}

func (w writer) setV1(r Resources) error {
	shares := r.CPUShares
	if shares == 0 {
		shares = 1024
	}
	period := r.CPUPeriod
	if period == 0 {
		period = defaultPeriod
	}
	// The quota is lifted before the period changes and set after: the
	// kernel checks each write against the parent's and children's quota.
	steps := []step{
		{w.file("cpu", "cpu.shares"), strconv.FormatUint(shares, 10)},
		{w.file("cpu", "cpu.cfs_quota_us"), "-1"},
		{w.file("cpu", "cpu.cfs_period_us"), strconv.FormatUint(period, 10)},
	}
	if r.CPUQuota > 0 {
		steps = append(steps, step{w.file("cpu", "cpu.cfs_quota_us"), strconv.FormatInt(r.CPUQuota, 10)})
	}
	cpus, mems, err := w.cpusetV1(r)
	if err != nil {
		return err
	}
	steps = append(steps, step{w.file("cpuset", "cpuset.mems"), mems}, step{w.file("cpuset", "cpuset.cpus"), cpus})
	// memsw is at least the memory limit at every step: lifted first, set
	// again last.
	memsw := w.file("memory", "memory.memsw.limit_in_bytes")
	hasMemsw := exists(memsw)
	if hasMemsw {
		steps = append(steps, step{memsw, "-1"})
	}
	steps = append(steps, step{w.file("memory", "memory.limit_in_bytes"), limitV1(r.MemoryLimit)})
	if hasMemsw && r.MemorySwap > 0 {
		steps = append(steps, step{memsw, strconv.FormatInt(r.MemorySwap, 10)})
	}
	if err := run(steps); err != nil {
		return err
	}
	return w.setHugetlb(r)
}

// cpusetV1 are the cpus and mems to write on v1, where an empty cpuset
// means none (the parent's are copied instead).
func (w writer) cpusetV1(r Resources) (string, string, error) {
	cpus, mems := r.Cpus, r.Mems
	parent := filepath.Dir(w.file("cpuset", "cpuset.cpus"))
	parent = filepath.Dir(parent)
	var err error
	if cpus == "" {
		if cpus, err = readTrim(filepath.Join(parent, "cpuset.cpus")); err != nil {
			return "", "", err
		}
	}
	if mems == "" {
		if mems, err = readTrim(filepath.Join(parent, "cpuset.mems")); err != nil {
			return "", "", err
		}
	}
	return cpus, mems, nil
}

func readTrim(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func limitV1(v int64) string {
	if v <= 0 {
		return "-1"
	}
	return strconv.FormatInt(v, 10)
}

func limitV2(v int64) string {
	if v <= 0 {
		return "max"
	}
	return strconv.FormatInt(v, 10)
}

// WeightFromShares converts v1 cpu.shares to a v2 cpu.weight, as runc
// does (2 → 1, 1024 → 39, 262144 → 10000).
func WeightFromShares(shares uint64) uint64 {
	if shares == 0 {
		return 100
	}
	shares = min(max(shares, 2), 262144)
	return 1 + ((shares-2)*9999)/262142
}

func (w writer) setV2(r Resources) error {
	period := r.CPUPeriod
	if period == 0 {
		period = defaultPeriod
	}
	quota := "max"
	if r.CPUQuota > 0 {
		quota = strconv.FormatInt(r.CPUQuota, 10)
	}
	steps := []step{
		{w.file("cpu", "cpu.weight"), strconv.FormatUint(WeightFromShares(r.CPUShares), 10)},
		{w.file("cpu", "cpu.max"), quota + " " + strconv.FormatUint(period, 10)},
	}
	// An empty cpuset is the parent's on v2; the files are only there when
	// the parent enables cpuset.
	for _, f := range []struct{ name, v string }{{"cpuset.mems", r.Mems}, {"cpuset.cpus", r.Cpus}} {
		p := w.file("cpuset", f.name)
		if !exists(p) {
			if f.v != "" {
				return fmt.Errorf("%s: %w (the cpuset controller is not enabled for the cgroup)", f.name, ErrUnsupported)
			}
			continue
		}
		steps = append(steps, step{p, f.v + "\n"})
	}
	steps = append(steps, step{w.file("memory", "memory.max"), limitV2(r.MemoryLimit)})
	if sw := w.file("memory", "memory.swap.max"); exists(sw) {
		v := "max"
		if r.MemorySwap > 0 {
			v = strconv.FormatInt(r.MemorySwap-r.MemoryLimit, 10)
		}
		steps = append(steps, step{sw, v})
	}
	if err := run(steps); err != nil {
		return err
	}
	if err := w.setHugetlb(r); err != nil {
		return err
	}
	var unified []step
	for _, k := range slices.Sorted(maps.Keys(r.Unified)) {
		unified = append(unified, step{filepath.Join(w.root, w.path, k), r.Unified[k]})
	}
	return run(unified)
}

// setHugetlb writes the limit of every page size the host has: the sizes
// r names get theirs, the others none. On v1 the cgroup's directory in the
// hugetlb hierarchy is made when absent (the pod's removal takes it away
// with the rest of its tree).
func (w writer) setHugetlb(r Resources) error {
	base := filepath.Join(w.root, "hugetlb")
	if w.unified {
		base = filepath.Join(w.root, w.path)
	}
	if !exists(base) {
		return nil
	}
	if !w.unified {
		if len(r.Hugepages) == 0 && !exists(filepath.Join(base, w.path)) {
			return nil // no limit asked, none there to lift
		}
		if err := os.Mkdir(filepath.Join(base, w.path), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("hugetlb cgroup %s: %w", w.path, err)
		}
	}
	sizes, err := pageSizes(filepath.Dir(w.hugetlbFile("X")), w.unified)
	if err != nil {
		return err
	}
	var steps []step
	for _, size := range sizes {
		v := limitV1(-1)
		if w.unified {
			v = "max"
		}
		if l, ok := r.Hugepages[size]; ok {
			v = strconv.FormatUint(l, 10)
		}
		steps = append(steps, step{w.hugetlbFile(size), v})
	}
	return run(steps)
}

// pageSizes are the page sizes with a limit file in dir.
func pageSizes(dir string, unified bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	suffix := ".limit_in_bytes"
	if unified {
		suffix = ".max"
	}
	var out []string
	for _, e := range ents {
		mid, ok := strings.CutPrefix(e.Name(), "hugetlb.")
		if !ok {
			continue
		}
		if size, ok := strings.CutSuffix(mid, suffix); ok && !strings.Contains(size, ".") {
			out = append(out, size)
		}
	}
	return out, nil
}

type step struct{ file, value string }

func run(steps []step) error {
	for _, s := range steps {
		if err := writeFile(s.file, s.value); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes an existing interface file, never following a symlink
// nor creating one.
func writeFile(p, v string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(v)); err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(v), p, err)
	}
	return nil
}
