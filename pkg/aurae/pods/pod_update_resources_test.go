package pods

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

func podResourcesJSON(t *testing.T, lr specs.LinuxResources) []byte {
	t.Helper()
	b, err := json.Marshal(lr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cgroupValue reads an interface file of a cgroup (the v1 controller's
// file, or the v2 one).
func cgroupValue(t *testing.T, path, controller, v1, v2 string) string {
	t.Helper()
	f := cgroup.ControllerFile(path, controller, v1)
	if cgroup.Unified() {
		f = cgroup.ControllerFile(path, controller, v2)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestUpdatePodResources(t *testing.T) {
	e := newEnv(t)
	paths := e.allocate(&podsv0.Pod{Id: "resized", Hostname: "resized"})
	e.start("resized", e.container("c", spec(t, nil, "sleep", "1000")))
	ctx := context.Background()
	cg := paths.GetCgroupPath()

	shares, quota, period, limit := uint64(512), int64(30000), uint64(60000), int64(48<<20)
	lr := specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &limit},
	}
	if _, err := e.svc.UpdatePodResources(ctx, &podsv0.UpdatePodResourcesRequest{PodId: "resized", LinuxResources: podResourcesJSON(t, lr)}); err != nil {
		t.Fatal(err)
	}
	if cgroup.Unified() {
		if got := cgroupValue(t, cg, "cpu", "", "cpu.max"); got != "30000 60000" {
			t.Errorf("cpu.max = %q", got)
		}
	} else {
		for file, want := range map[string]string{"cpu.shares": "512", "cpu.cfs_quota_us": "30000", "cpu.cfs_period_us": "60000"} {
			if got := cgroupValue(t, cg, "cpu", file, ""); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	}
	if got := cgroupValue(t, cg, "memory", "memory.limit_in_bytes", "memory.max"); got != "50331648" {
		t.Errorf("memory limit = %q, want 50331648", got)
	}
	// The container still runs under the pod's new limits.
	if out := e.mustExec("c", "echo", "alive"); out != "alive\n" {
		t.Errorf("exec after resize: %q", out)
	}

	// The whole set: what is not asked for any more is lifted.
	if _, err := e.svc.UpdatePodResources(ctx, &podsv0.UpdatePodResourcesRequest{PodId: "resized", LinuxResources: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	if !cgroup.Unified() {
		if got := cgroupValue(t, cg, "cpu", "cpu.cfs_quota_us", ""); got != "-1" {
			t.Errorf("quota after reset = %q, want -1", got)
		}
		if got := cgroupValue(t, cg, "memory", "memory.limit_in_bytes", ""); got == "50331648" {
			t.Errorf("memory limit not lifted: %q", got)
		}
	}

	bad := int64(-5)
	hugeShares := uint64(1 << 20)
	for name, tc := range map[string]struct {
		id   string
		raw  []byte
		code codes.Code
	}{
		"unknown pod":     {"nosuchpod", []byte("{}"), codes.NotFound},
		"empty id":        {"", []byte("{}"), codes.InvalidArgument},
		"not json":        {"resized", []byte("{"), codes.InvalidArgument},
		"negative memory": {"resized", podResourcesJSON(t, specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &bad}}), codes.InvalidArgument},
		"shares too high": {"resized", podResourcesJSON(t, specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &hugeShares}}), codes.InvalidArgument},
		"bad cpuset":      {"resized", podResourcesJSON(t, specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "3-1"}}), codes.InvalidArgument},
		"pids":            {"resized", podResourcesJSON(t, specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &bad}}), codes.InvalidArgument},
		"core file":       {"resized", podResourcesJSON(t, specs.LinuxResources{Unified: map[string]string{"cgroup.kill": "1"}}), codes.InvalidArgument},
	} {
		_, err := e.svc.UpdatePodResources(ctx, &podsv0.UpdatePodResourcesRequest{PodId: tc.id, LinuxResources: tc.raw})
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", name, err, tc.code)
		}
	}
	if !cgroup.Unified() {
		// What this host cannot apply is refused, not dropped.
		_, err := e.svc.UpdatePodResources(ctx, &podsv0.UpdatePodResourcesRequest{PodId: "resized",
			LinuxResources: podResourcesJSON(t, specs.LinuxResources{Unified: map[string]string{"memory.oom.group": "1"}})})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("unified keys on cgroup v1: %v, want FailedPrecondition", err)
		}
	}
}
