package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// cgroupDriverEnv, when set (systemd or cgroupfs), is the --cgroup-driver
// every daemon of the run is given: the cgroup v2 VM (hack/vm-cg2) runs its
// tests once per driver. Unset, the daemons choose (systemd where PID 1 is
// systemd on cgroup v2, else cgroupfs).
const cgroupDriverEnv = "AURAE_E2E_CGROUP_DRIVER"

func cgroupDriverArgs() []string {
	if d := os.Getenv(cgroupDriverEnv); d != "" {
		return []string{"--cgroup-driver", d}
	}
	return nil
}

// stopSystemdRoot stops the slice a daemon with cgroup root root made its
// pods below under the systemd driver (slices stay until stopped); a no-op
// where systemd is not PID 1 or the slice was never made.
func stopSystemdRoot(t testing.TB, root string) {
	t.Helper()
	if !cgroup.SystemdIsInit() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := (cgroup.Units{}).StopUnit(ctx, cgroup.RootSlice(root)); err != nil {
		t.Errorf("stop slice %s: %v", cgroup.RootSlice(root), err)
	}
}

// systemdLeftovers are this run's slices left in the unified hierarchy.
func systemdLeftovers() []string {
	prefix := strings.ReplaceAll(cgroupRootPrefix(), "-", "_")
	out, _ := filepath.Glob(filepath.Join(cgroup.Root, prefix+"*"))
	return out
}

func requireSystemdHost(t *testing.T) {
	t.Helper()
	if h := cgroup.ThisHost(); !h.Unified || !h.SystemdInit {
		t.Skip("the systemd cgroup driver needs systemd as PID 1 on cgroup v2: this test runs in make test-cgroup2")
	}
}

// TestCRISystemdDriver drives the systemd cgroup driver through the CRI as
// the kubelet with cgroupDriver: systemd does: RuntimeConfig says systemd;
// a pod below the kubelet's pod slice is a transient slice there, its
// container a scope runc made, with the memory limit a unit property;
// UpdateContainerResources changes both; a cgroupfs parent is refused;
// kill -9 of aurae-cri keeps the units, and the pod's removal stops them.
func TestCRISystemdDriver(t *testing.T) {
	requireRoot(t)
	requireSystemdHost(t)
	ctx := t.Context()
	units := cgroup.Units{}

	// The kubelet's pod slice (it makes it before RunPodSandbox), under a
	// top slice of this run's own.
	top := strings.ReplaceAll(cgroupRootPrefix(), "-", "_") + "kube.slice"
	parent := strings.TrimSuffix(top, ".slice") + "-burstable-pod" + randomHex(t, 4) + ".slice"
	t.Cleanup(func() { // runs after the CRI's own cleanup
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := units.StopUnit(sctx, top); err != nil {
			t.Errorf("stop %s: %v", top, err)
		}
	})
	parentDir, err := units.StartSlice(ctx, parent, "e2e kubelet pod slice")
	if err != nil {
		t.Fatal(err)
	}

	c := startCRI(t, "--cgroup-driver", "systemd")
	rc, err := c.Runtime.RuntimeConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := rc.GetLinux().GetCgroupDriver(); got != runtimeapi.CgroupDriver_SYSTEMD {
		t.Fatalf("RuntimeConfig says %v, want SYSTEMD", got)
	}

	// A cgroupfs parent is refused, naming the driver.
	bad := c.podConfig(t, "cgroupfs-parent")
	bad.Linux.CgroupParent = "/kubepods/burstable/pod" + randomHex(t, 4)
	if _, err := c.Runtime.RunPodSandbox(ctx, bad, ""); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "systemd") {
		t.Fatalf("a cgroupfs parent under the systemd driver: %v, want FailedPrecondition naming the driver", err)
	}

	image := c.pushBusybox(t, "e2e/busybox:sd", testimage.Options{})
	pod := c.podConfig(t, "sd")
	pod.Linux.CgroupParent = parent
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	podSlice := strings.TrimSuffix(parent, ".slice") + "-aurae_" + podID + ".slice"
	podDir := filepath.Join(cgroup.Root, parentDir, podSlice)
	if st := unitState(t, units, podSlice); st != "active" {
		t.Fatalf("pod slice %s is %s", podSlice, st)
	}
	cfg := containerConfig("sd", image, "sleep", "600")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}
	ctrID := runContainer(t, c, podID, pod, cfg)
	waitContainerState(t, c, ctrID, runtimeapi.ContainerState_CONTAINER_RUNNING)
	scope := cgroup.ContainerScope(ctrID)
	scopeDir := filepath.Join(podDir, scope)
	if st := unitState(t, units, scope); st != "active" {
		t.Fatalf("container scope %s is %s", scope, st)
	}
	if procs := readTrim(t, filepath.Join(scopeDir, "cgroup.procs")); procs == "" {
		t.Fatalf("no process in %s", scopeDir)
	}
	checkMemoryMax(t, units, scope, scopeDir, 64<<20)

	if err := c.Runtime.UpdateContainerResources(ctx, ctrID, &runtimeapi.ContainerResources{Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 128 << 20}}); err != nil {
		t.Fatal(err)
	}
	checkMemoryMax(t, units, scope, scopeDir, 128<<20)
	stats, err := c.Runtime.ContainerStats(ctx, ctrID)
	if err != nil || stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 {
		t.Fatalf("stats of a container in a systemd scope: %v, %v", stats, err)
	}

	// kill -9: the units outlive aurae-cri, which adopts the pod again.
	c.Kill9()
	if st := unitState(t, units, scope); st != "active" {
		t.Fatalf("container scope %s is %s after aurae-cri's kill -9", scope, st)
	}
	c.start(t)
	waitContainerState(t, c, ctrID, runtimeapi.ContainerState_CONTAINER_RUNNING)
	if out, _, err := c.Runtime.ExecSync(ctx, ctrID, []string{"echo", "adopted"}, 30*time.Second); err != nil || string(out) != "adopted\n" {
		t.Fatalf("exec after the restart: %q, %v", out, err)
	}

	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{scope, podSlice, cgroup.InfraScope(podID)} {
		if st := unitState(t, units, u); st != "inactive" {
			t.Errorf("unit %s is %s after the pod's removal", u, st)
		}
	}
	if _, err := os.Stat(podDir); !os.IsNotExist(err) {
		t.Errorf("pod cgroup %s left: %v", podDir, err)
	}
	if st := unitState(t, units, parent); st != "active" {
		t.Errorf("the kubelet's pod slice is %s after the pod's removal: it is the kubelet's", st)
	}
}

func unitState(t *testing.T, u cgroup.Units, unit string) string {
	t.Helper()
	v, err := u.Property(t.Context(), unit, "ActiveState")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := v.(string)
	return s
}

// checkMemoryMax checks a scope's memory limit in its cgroup and in its
// unit's MemoryMax (runc sets both).
func checkMemoryMax(t *testing.T, u cgroup.Units, scope, dir string, want uint64) {
	t.Helper()
	if got := readTrim(t, filepath.Join(dir, "memory.max")); got != strconv.FormatUint(want, 10) {
		t.Errorf("%s/memory.max = %s, want %d", dir, got, want)
	}
	v, err := u.Property(t.Context(), scope, "MemoryMax")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := v.(uint64); got != want {
		t.Errorf("unit %s MemoryMax = %v, want %d", scope, v, want)
	}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestCgroupDriverSystemdRefusedAtStart: where systemd is not PID 1 on
// cgroup v2 (the CI hosts: cgroup v1 hybrid, no systemd), both daemons
// refuse --cgroup-driver systemd at start with a message naming it.
func TestCgroupDriverSystemdRefusedAtStart(t *testing.T) {
	requireRoot(t)
	if h := cgroup.ThisHost(); h.Unified && h.SystemdInit {
		t.Skip("systemd is PID 1 on cgroup v2 here: the driver is usable (TestCRISystemdDriver)")
	}
	dir := t.TempDir()
	for _, bin := range []string{"auraed", "aurae-cri"} {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		cmd := exec.CommandContext(ctx, binaries[bin], "--cgroup-driver", "systemd",
			"--socket", filepath.Join(dir, bin+".sock"), "--state-dir", filepath.Join(dir, bin))
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err()
		cancel()
		if err == nil || timedOut != nil {
			t.Errorf("%s --cgroup-driver systemd: %v (context %v), want a refusal; output:\n%s", bin, err, timedOut, out)
			continue
		}
		if !strings.Contains(string(out), "cgroup driver systemd") || !strings.Contains(string(out), "cgroupfs") {
			t.Errorf("%s's refusal does not name the driver and the way out:\n%s", bin, out)
		}
		if _, err := os.Stat(filepath.Join(dir, bin+".sock")); err == nil {
			t.Errorf("%s made its socket before refusing", bin)
		}
	}
}

// specCgroupDir is the cgroup path (below the hierarchy root) of a
// container's linux.cgroupsPath: a cgroupfs path as it is, runc's systemd
// form "slice:prefix:name" as the scope runc makes for it.
func specCgroupDir(t *testing.T, cgroupsPath string) string {
	t.Helper()
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 {
		return cgroupsPath
	}
	dir, err := cgroup.ExpandSlice(parts[0])
	if err != nil {
		t.Fatalf("cgroupsPath %q: %v", cgroupsPath, err)
	}
	return filepath.Join(dir, parts[1]+"-"+parts[2]+".scope")
}
