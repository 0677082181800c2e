package cri

import (
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
)

// RuntimeConfig answers the driver aurae-cri runs with (the kubelet 1.31+
// takes its own from it).
func TestRuntimeConfigAnswersTheDriver(t *testing.T) {
	for driver, want := range map[string]runtimeapi.CgroupDriver{
		"":         runtimeapi.CgroupDriver_CGROUPFS,
		"cgroupfs": runtimeapi.CgroupDriver_CGROUPFS,
		"systemd":  runtimeapi.CgroupDriver_SYSTEMD,
	} {
		f := newFixture(t, false)
		f.cgroupDriver = driver
		rt := f.runtime(t)
		resp, err := rt.RuntimeConfig(t.Context(), &runtimeapi.RuntimeConfigRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetLinux().GetCgroupDriver(); got != want {
			t.Errorf("driver %q: RuntimeConfig says %v, want %v", driver, got, want)
		}
	}
}

// Under the systemd driver a VM pod is refused before anything is made; a
// pod whose cgroups auraed made with another driver than aurae-cri's is
// refused and undone.
func TestSystemdDriverRefusals(t *testing.T) {
	f := newFixture(t, false)
	f.cgroupDriver = "systemd"
	f.rt = f.runtime(t)
	if err := f.rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("vm"), RuntimeHandler: vm.Handlers[0]})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("a VM pod under the systemd driver: %v, want FailedPrecondition", err)
	}
	f.ctrl.cgroupDriver = "cgroupfs"
	_, err = f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("mixed")})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("a pod made by the cgroupfs driver under aurae-cri's systemd: %v, want FailedPrecondition", err)
	}
	f.ctrl.mu.Lock()
	left := len(f.ctrl.pods)
	f.ctrl.mu.Unlock()
	if left != 0 {
		t.Errorf("%d pods left after the refusals", left)
	}
	f.ctrl.cgroupDriver = "systemd"
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("ok")}); err != nil {
		t.Errorf("a pod under the systemd driver: %v", err)
	}
}
