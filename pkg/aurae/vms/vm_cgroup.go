package vms

import (
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// hypervisorOverheadMiB is what QEMU needs beside the guest's memory (its
// own heap, the TCG translation cache of 32 MiB, device state): an idle
// 256 MiB guest's QEMU has an RSS of ~190 MiB here.
const hypervisorOverheadMiB = 192

// vmCgroupLeaf is the leaf below a VM's cgroup_path where its hypervisor
// runs (pod cgroups' children are container ids, which never start with
// a dot).
const vmCgroupLeaf = ".vm"

// validCgroupPath checks a VM's cgroup_path: below the service's cgroup
// root, clean, and existing.
func (s *Service) validCgroupPath(p string) error {
	if p == "" {
		return nil
	}
	root := strings.Trim(s.cfg.CgroupRoot, "/")
	if s.cfg.CgroupRoot == "" || p != path.Clean(p) || strings.HasPrefix(p, "/") || !strings.HasPrefix(p, root+"/") {
		return fmt.Errorf("cgroup_path %q is not a cgroup below auraed's root %q: %w", p, root, errdefs.ErrInvalidArgument)
	}
	if !cgroup.Exists(p) {
		return fmt.Errorf("cgroup_path %q does not exist: %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// placeIn returns what puts a hypervisor and its helpers into a fresh
// ".vm" leaf of the VM's cgroup, limited to its guest's memory plus the
// overhead.
func placeIn(cgroupPath string, memMiB uint32) func(pids ...int) error {
	return func(pids ...int) error {
		leaf := cgroupPath + "/" + vmCgroupLeaf
		if err := removeVMCgroup(cgroupPath); err != nil {
			return err
		}
		return hypervisorCgroup(leaf, memMiB, pids)
	}
}

// hypervisorCgroup makes the cgroup path for a hypervisor of a guest of
// memMiB, limited to it plus the hypervisor's overhead, and moves pids
// into it.
func hypervisorCgroup(path string, memMiB uint32, pids []int) error {
	limit := int64(memMiB+hypervisorOverheadMiB) << 20
	cg, err := cgroup.New(path, cgroup.Limits{MemoryMax: &limit})
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := cg.AddProc(pid); err != nil {
			return err
		}
	}
	return nil
}

// removeVMCgroup removes the ".vm" leaf of a VM's cgroup, once its
// hypervisor is gone.
func removeVMCgroup(cgroupPath string) error {
	leaf := cgroupPath + "/" + vmCgroupLeaf
	if cgroupPath == "" || !cgroup.Exists(leaf) {
		return nil
	}
	cg, err := cgroup.Load(leaf)
	if err != nil {
		return err
	}
	return cg.Delete()
}
