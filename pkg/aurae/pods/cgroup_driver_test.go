package pods

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// Where systemd is not PID 1 on a cgroup v2 host, a service asked for the
// systemd driver refuses to start (FailedPrecondition), before it opens
// anything.
func TestSystemdDriverRefusedWhereNotUsable(t *testing.T) {
	if h := cgroup.ThisHost(); h.Unified && h.SystemdInit {
		// The e2e suite in the cgroup v2 VM (hack/vm-cg2) drives it there.
		t.Skip("systemd is PID 1 on cgroup v2 here: the driver is usable")
	}
	_, err := NewService(t.Context(), Config{StateDir: t.TempDir(), CgroupDriver: cgroup.Systemd})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !errors.Is(err, cgroup.ErrDriver) {
		t.Fatalf("NewService with the systemd driver: %v, want FailedPrecondition", err)
	}
}

// The systemd driver's placement of a pod: below its parent slice, the
// kubelet's slice honoured, a cgroupfs path refused naming the driver.
func TestPlacePodSystemd(t *testing.T) {
	s := &Service{cfg: Config{CgroupDriver: cgroup.Systemd, CgroupRoot: "aurae/.pods"}}
	path, slice, err := s.placePod(podSpec("p1", "-.slice"))
	if err != nil || slice != "aurae_p1.slice" || path != "aurae_p1.slice" {
		t.Errorf("root slice parent: %q %q %v", path, slice, err)
	}
	path, slice, err = s.placePod(podSpec("p1", ""))
	if err != nil || slice != "aurae-pods-pods-aurae_p1.slice" || path != "aurae.slice/aurae-pods.slice/aurae-pods-pods.slice/aurae-pods-pods-aurae_p1.slice" {
		t.Errorf("default parent: %q %q %v", path, slice, err)
	}
	_, _, err = s.placePod(podSpec("p1", "/kubepods/burstable/pod1"))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !errors.Is(err, cgroup.ErrNotSlice) {
		t.Errorf("a cgroupfs parent under systemd: %v, want FailedPrecondition", err)
	}
	// The kubelet's pod slice must be there (it makes it before the pod).
	_, _, err = s.placePod(podSpec("p1", "kubepods-burstable-podnowhere.slice"))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("a missing parent slice: %v, want FailedPrecondition", err)
	}
	p := &pod{spec: podSpec("p1", "")}
	p.paths = sdPaths("aurae.slice/aurae-pods.slice/aurae-pods-aurae_p1.slice", "aurae-pods-aurae_p1.slice")
	if got, spec := containerCgroup(p, "c1"); got != "aurae.slice/aurae-pods.slice/aurae-pods-aurae_p1.slice/aurae-c1.scope" || spec != "aurae-pods-aurae_p1.slice:aurae:c1" {
		t.Errorf("container cgroup %q, spec %q", got, spec)
	}
	if args := s.runtimeGlobalArgs(); args[len(args)-1] != "--systemd-cgroup" {
		t.Errorf("runtime args %q lack --systemd-cgroup", args)
	}
}

func podSpec(id, parent string) *podsv0.Pod { return &podsv0.Pod{Id: id, CgroupParent: parent} }

func sdPaths(cg, slice string) *podsv0.AllocateResponse {
	return &podsv0.AllocateResponse{CgroupPath: cg, CgroupSlice: slice, CgroupDriver: "systemd"}
}
