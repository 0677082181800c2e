package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// The cgroup driver's part of a pod's life: where its cgroups are, who
// makes and removes them. Under cgroupfs auraed makes directories; under
// systemd the pod is a transient slice (below its parent slice, the
// kubelet's kubepods-<qos>-pod<uid>.slice), its own processes (holder,
// monitors) a delegated scope in it, and each container a scope runc makes
// (runc --systemd-cgroup, linux.cgroupsPath "<slice>:aurae:<id>").

// systemd reports whether the pod's cgroups are systemd units.
func systemdPod(p *pod) bool { return p.paths.GetCgroupSlice() != "" }

// placePod says where the pod's cgroup is: its path, and under the systemd
// driver its slice. A parent the driver cannot use is refused with
// FailedPrecondition naming the driver.
func (s *Service) placePod(spec *podsv0.Pod) (path, slice string, err error) {
	if s.cfg.CgroupDriver != cgroup.Systemd {
		return s.podCgroup(spec), "", nil
	}
	parent, err := cgroup.SystemdParent(cgroup.RootSlice(s.cfg.CgroupRoot), spec.GetCgroupParent())
	if err != nil {
		return "", "", fmt.Errorf("pod %q: cgroup driver systemd: %w: %w", spec.GetId(), err, errdefs.ErrFailedPrecondition)
	}
	if slice, err = cgroup.PodSlice(parent, spec.GetId()); err != nil {
		return "", "", fmt.Errorf("pod %q: cgroup driver systemd: %w: %w", spec.GetId(), err, errdefs.ErrInvalidArgument)
	}
	if path, err = cgroup.ExpandSlice(slice); err != nil {
		return "", "", fmt.Errorf("pod %q: cgroup driver systemd: %w: %w", spec.GetId(), err, errdefs.ErrInvalidArgument)
	}
	if spec.GetCgroupParent() != "" && strings.HasSuffix(spec.GetCgroupParent(), ".slice") && spec.GetCgroupParent() != "-.slice" {
		// The kubelet makes its pod slice before the pod; systemd would
		// make a missing one implicitly, and nobody would remove it.
		dir, _ := cgroup.ExpandSlice(parent)
		if !cgroup.Exists(dir) {
			return "", "", fmt.Errorf("pod %q: cgroup driver systemd: parent slice %s does not exist: %w", spec.GetId(), parent, errdefs.ErrFailedPrecondition)
		}
	}
	return path, slice, nil
}

// makePodCgroup makes the pod's cgroup (a slice under systemd).
func (s *Service) makePodCgroup(ctx context.Context, p *pod) error {
	if !systemdPod(p) {
		_, err := cgroup.New(p.paths.GetCgroupPath(), cgroup.Limits{})
		return err
	}
	_, err := s.units.StartSlice(ctx, p.paths.GetCgroupSlice(), "aurae pod "+p.spec.GetId())
	return err
}

// removePodCgroup removes the pod's cgroup tree, once it has no process:
// under systemd by stopping its slice (which stops the scopes in it), then
// whatever directory is left.
func (s *Service) removePodCgroup(ctx context.Context, p *pod) error {
	var errs []error
	if systemdPod(p) {
		if err := s.units.StopUnit(ctx, p.paths.GetCgroupSlice()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroupTree(p.paths.GetCgroupPath()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// infraPlacer returns what moves one of the pod's own processes (holder,
// monitor) into its infra cgroup: a leaf cgroup under cgroupfs, the pod's
// delegated infra scope under systemd.
func (s *Service) infraPlacer(p *pod) (func(pid int) error, error) {
	if !systemdPod(p) {
		cg, err := s.infraCgroupOf(p)
		if err != nil {
			return nil, err
		}
		return cg.AddProc, nil
	}
	scope := cgroup.InfraScope(p.spec.GetId())
	dir := p.paths.GetCgroupPath() + "/" + scope
	return func(pid int) error {
		return s.units.JoinScope(context.Background(), scope, p.paths.GetCgroupSlice(), dir, pid)
	}, nil
}

// containerCgroup is a container's cgroup path (below the hierarchy root)
// and the linux.cgroupsPath its spec must say.
func containerCgroup(p *pod, id string) (path, specPath string) {
	if systemdPod(p) {
		return p.paths.GetCgroupPath() + "/" + cgroup.ContainerScope(id), cgroup.SystemdCgroupsPath(p.paths.GetCgroupSlice(), id)
	}
	return p.paths.GetCgroupPath() + "/" + id, "/" + p.paths.GetCgroupPath() + "/" + id
}

// runtimeGlobalArgs are the OCI runtime's global flags: auraed's state root
// and, under the systemd driver, --systemd-cgroup.
func (s *Service) runtimeGlobalArgs() []string {
	if s.cfg.CgroupDriver == cgroup.Systemd {
		return []string{"--root", s.runcRoot(), "--systemd-cgroup"}
	}
	return []string{"--root", s.runcRoot()}
}

// existsErr tells an existing pod cgroup apart.
func existsErr(id string, err error) error {
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("pod %q: %w: %w", id, err, errdefs.ErrAlreadyExists)
	}
	return fmt.Errorf("pod %q: %w", id, err)
}

// syncUnitLimits gives a systemd pod's slice the limits just written to its
// cgroup as unit properties too (as runc's systemd driver does), so that
// systemd, which owns the slice, keeps them across a reload.
func (s *Service) syncUnitLimits(p *pod, r cgroup.Resources) error {
	if !systemdPod(p) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), runtimeCallTimeout)
	defer cancel()
	mem, quota, period := r.MemoryLimit, r.CPUQuota, r.CPUPeriod
	l := cgroup.Limits{MemoryMax: &mem, CPUMax: &quota, CPUPeriod: &period}
	if r.CPUShares != 0 {
		w := cgroup.WeightFromShares(r.CPUShares)
		l.CPUWeight = &w
	}
	return s.units.SetLimits(ctx, p.paths.GetCgroupSlice(), l)
}

// scopeOOMKilled reports whether systemd ended a container's scope for an
// OOM kill (its Result, kept while the scope is failed, until runc delete
// resets it); false under cgroupfs.
func (s *Service) scopeOOMKilled(cgroupPath string) bool {
	if s.cfg.CgroupDriver != cgroup.Systemd || !strings.HasSuffix(cgroupPath, ".scope") {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := s.units.Property(ctx, path.Base(cgroupPath), "Result")
	return err == nil && v == "oom-kill"
}
