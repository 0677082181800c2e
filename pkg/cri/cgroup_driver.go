package cri

import (
	"fmt"
	"slices"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
)

// The cgroup driver: pods' cgroups are made by auraed (cgroupfs) or as
// systemd units (systemd); RuntimeConfig tells the kubelet which, so that
// its pod cgroups (kubepods-<qos>-pod<uid>.slice under systemd) are the
// parents it passes.

const driverSystemd = "systemd"

func (r *Runtime) systemdDriver() bool { return r.cfg.CgroupDriver == driverSystemd }

func (r *Runtime) cgroupDriver() string {
	if r.cfg.CgroupDriver == "" {
		return "cgroupfs"
	}
	return r.cfg.CgroupDriver
}

// checkCgroupDriver refuses what the driver cannot place: VM pods under
// systemd (QEMU and its helpers go into a cgroup that auraed makes below
// the pod's, which would be a directory in a slice that systemd owns).
func (r *Runtime) checkCgroupDriver(handler string) error {
	if r.systemdDriver() && slices.Contains(vm.Handlers, handler) {
		return fmt.Errorf("runtime handler %q: VM pods are not offered with the systemd cgroup driver; run aurae-cri with --cgroup-driver cgroupfs to run them: %w", handler, errPrecondition)
	}
	return nil
}

// checkPodCgroupDriver refuses a pod whose cgroups another driver made than
// the one the kubelet was told of (an external auraed configured apart).
func (r *Runtime) checkPodCgroupDriver(pod controller.Pod) error {
	if d := pod.CgroupDriver; d != "" && d != r.cgroupDriver() {
		return fmt.Errorf("auraed made the pod's cgroups with the %s cgroup driver, but aurae-cri runs with --cgroup-driver %s (RuntimeConfig answers it to the kubelet): give auraed the same --cgroup-driver: %w", d, r.cgroupDriver(), errPrecondition)
	}
	return nil
}
