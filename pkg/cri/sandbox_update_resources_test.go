package cri

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// resizeRequest is what the kubelet sends for a pod of 1.5 CPUs and
// 256 MiB with an overhead of 0.25 CPU and 64 MiB.
func resizeRequest(id string) *runtimeapi.UpdatePodSandboxResourcesRequest {
	return &runtimeapi.UpdatePodSandboxResourcesRequest{
		PodSandboxId: id,
		Overhead:     &runtimeapi.LinuxContainerResources{CpuShares: 256, CpuQuota: 25000, CpuPeriod: 100000, MemoryLimitInBytes: 64 << 20},
		Resources:    &runtimeapi.LinuxContainerResources{CpuShares: 1536, CpuQuota: 150000, CpuPeriod: 100000, MemoryLimitInBytes: 256 << 20},
	}
}

func runPod(t *testing.T, rt *Runtime, name string) string {
	t.Helper()
	resp, err := rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig(name)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetPodSandboxId()
}

func TestUpdatePodSandboxResources(t *testing.T) {
	f := newFixture(t, true)
	id := runPod(t, f.rt, "resize")
	req := resizeRequest(id)
	if _, err := f.rt.UpdatePodSandboxResources(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	got := f.ctrl.resizes(id)
	want := controller.PodResources{
		Overhead:  controller.LinuxResources{CPUShares: 256, CPUQuota: 25000, CPUPeriod: 100000, MemoryLimitBytes: 64 << 20},
		Resources: controller.LinuxResources{CPUShares: 1536, CPUQuota: 150000, CPUPeriod: 100000, MemoryLimitBytes: 256 << 20},
	}
	if len(got) != 1 || got[0].Overhead.CPUQuota != want.Overhead.CPUQuota || got[0].Resources.MemoryLimitBytes != want.Resources.MemoryLimitBytes ||
		got[0].Resources.CPUShares != want.Resources.CPUShares || got[0].Overhead.MemoryLimitBytes != want.Overhead.MemoryLimitBytes {
		t.Fatalf("controller got %+v, want %+v", got, want)
	}
	sb, err := f.store.Sandbox(id)
	if err != nil {
		t.Fatal(err)
	}
	if !sb.Status.ResourcesApplied || !proto.Equal(sb.Config.GetLinux().GetResources(), req.GetResources()) ||
		!proto.Equal(sb.Config.GetLinux().GetOverhead(), req.GetOverhead()) {
		t.Errorf("store: applied %v, linux %v", sb.Status.ResourcesApplied, sb.Config.GetLinux())
	}
	if in := f.store.Intents(); len(in) != 0 {
		t.Errorf("intents left: %+v", in)
	}
	st, err := f.rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		PodResources struct {
			Resources struct {
				MemoryLimitInBytes int64 `json:"memory_limit_in_bytes"`
			} `json:"resources"`
		} `json:"podResources"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if info.PodResources.Resources.MemoryLimitInBytes != 256<<20 {
		t.Errorf("verbose status: %s", st.GetInfo()["info"])
	}
}

func TestUpdatePodSandboxResourcesRefuses(t *testing.T) {
	f := newFixture(t, true)
	id := runPod(t, f.rt, "refuse")
	stopped := runPod(t, f.rt, "stopped")
	if _, err := f.rt.StopPodSandbox(t.Context(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: stopped}); err != nil {
		t.Fatal(err)
	}
	res := func(mod func(*runtimeapi.LinuxContainerResources)) *runtimeapi.UpdatePodSandboxResourcesRequest {
		req := resizeRequest(id)
		mod(req.Resources)
		return req
	}
	for name, tc := range map[string]struct {
		req  *runtimeapi.UpdatePodSandboxResourcesRequest
		kind func(error) bool
	}{
		"empty id":          {&runtimeapi.UpdatePodSandboxResourcesRequest{}, errdefs.IsInvalidArgument},
		"unknown pod":       {resizeRequest("nosuchpod"), errdefs.IsNotFound},
		"stopped pod":       {resizeRequest(stopped), errdefs.IsFailedPrecondition},
		"negative memory":   {res(func(r *runtimeapi.LinuxContainerResources) { r.MemoryLimitInBytes = -1 }), errdefs.IsInvalidArgument},
		"negative shares":   {res(func(r *runtimeapi.LinuxContainerResources) { r.CpuShares = -2 }), errdefs.IsInvalidArgument},
		"shares too high":   {res(func(r *runtimeapi.LinuxContainerResources) { r.CpuShares = 1 << 20 }), errdefs.IsInvalidArgument},
		"period too long":   {res(func(r *runtimeapi.LinuxContainerResources) { r.CpuPeriod = 10_000_000 }), errdefs.IsInvalidArgument},
		"quota too small":   {res(func(r *runtimeapi.LinuxContainerResources) { r.CpuQuota = 10 }), errdefs.IsInvalidArgument},
		"quota below -1":    {res(func(r *runtimeapi.LinuxContainerResources) { r.CpuQuota = -5 }), errdefs.IsInvalidArgument},
		"swap below memory": {res(func(r *runtimeapi.LinuxContainerResources) { r.MemorySwapLimitInBytes = 1 << 20 }), errdefs.IsInvalidArgument},
		"oom score":         {res(func(r *runtimeapi.LinuxContainerResources) { r.OomScoreAdj = 100 }), errdefs.IsInvalidArgument},
		"bad cpuset":        {res(func(r *runtimeapi.LinuxContainerResources) { r.CpusetCpus = "1-0" }), errdefs.IsInvalidArgument},
		"bad page size": {res(func(r *runtimeapi.LinuxContainerResources) {
			r.HugepageLimits = []*runtimeapi.HugepageLimit{{PageSize: "../2MB"}}
		}), errdefs.IsInvalidArgument},
		"core cgroup file": {res(func(r *runtimeapi.LinuxContainerResources) { r.Unified = map[string]string{"cgroup.kill": "1"} }), errdefs.IsInvalidArgument},
		"bad overhead": {&runtimeapi.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
			Overhead: &runtimeapi.LinuxContainerResources{CpuPeriod: -1}}, errdefs.IsInvalidArgument},
	} {
		_, err := f.rt.UpdatePodSandboxResources(t.Context(), tc.req)
		if !tc.kind(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := f.ctrl.resizes(id); len(got) != 0 {
		t.Errorf("refused resizes reached the controller: %+v", got)
	}
	if in := f.store.Intents(); len(in) != 0 {
		t.Errorf("intents left: %+v", in)
	}
}

// TestUpdatePodSandboxResourcesFailure: a resize the controller refuses
// is undone (the pod gets back what was applied before) and not recorded.
func TestUpdatePodSandboxResourcesFailure(t *testing.T) {
	f := newFixture(t, true)
	id := runPod(t, f.rt, "fail")
	first := resizeRequest(id)
	if _, err := f.rt.UpdatePodSandboxResources(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	f.ctrl.mu.Lock()
	f.ctrl.resizeErr, f.ctrl.resizeFailures = errors.Join(errors.New("the VM cannot grow"), errdefs.ErrFailedPrecondition), 1
	f.ctrl.mu.Unlock()
	second := resizeRequest(id)
	second.Resources.MemoryLimitInBytes = 4 << 30
	if _, err := f.rt.UpdatePodSandboxResources(t.Context(), second); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("refused resize: %v", err)
	}
	got := f.ctrl.resizes(id)
	if len(got) != 2 || got[1].Resources.MemoryLimitBytes != 256<<20 {
		t.Fatalf("the undo did not put the first resize back: %+v", got)
	}
	sb, _ := f.store.Sandbox(id)
	if !proto.Equal(sb.Config.GetLinux().GetResources(), first.GetResources()) {
		t.Errorf("the store records %v, want the first resize", sb.Config.GetLinux().GetResources())
	}
	if in := f.store.Intents(); len(in) != 0 {
		t.Errorf("intents left: %+v", in)
	}
}

// TestRecoverFinishesResize: a crash after the intent, before or after the
// controller applied it, is finished at the next start.
func TestRecoverFinishesResize(t *testing.T) {
	for _, point := range []string{FaultPodResizeRecorded, FaultPodResized} {
		t.Run(point, func(t *testing.T) {
			f := newCrashFixture(t)
			id := runPod(t, f.rt, "crash")
			rt, died := f.crashAt(t, point)
			req := resizeRequest(id)
			go func() { _, _ = rt.UpdatePodSandboxResources(t.Context(), req) }()
			waitDied(t, died, point)
			if in := f.onlyIntent(t); in.Kind != sandbox.IntentResize || in.ID != id {
				t.Fatalf("intent %+v", in)
			}
			before := len(f.ctrl.resizes(id))
			f.restart(t, nil)
			got := f.ctrl.resizes(id)
			if len(got) != before+1 || got[len(got)-1].Resources.MemoryLimitBytes != 256<<20 {
				t.Fatalf("recovery did not apply the resize: %+v", got)
			}
			sb, _ := f.store.Sandbox(id)
			if !sb.Status.ResourcesApplied || !proto.Equal(sb.Config.GetLinux().GetResources(), req.GetResources()) {
				t.Errorf("recovery did not record the resize: %v", sb.Config.GetLinux())
			}
			if in := f.store.Intents(); len(in) != 0 {
				t.Errorf("intents after recovery: %+v", in)
			}
		})
	}
}

// TestRecoverUndoesResizeItCannotFinish: a resize cut short that the
// controller refuses at recovery is undone.
func TestRecoverUndoesResizeItCannotFinish(t *testing.T) {
	f := newCrashFixture(t)
	id := runPod(t, f.rt, "crash")
	rt, died := f.crashAt(t, FaultPodResizeRecorded)
	go func() { _, _ = rt.UpdatePodSandboxResources(t.Context(), resizeRequest(id)) }()
	waitDied(t, died, FaultPodResizeRecorded)
	f.ctrl.mu.Lock()
	f.ctrl.resizeErr, f.ctrl.resizeFailures = errdefs.ErrFailedPrecondition, 1
	f.ctrl.mu.Unlock()
	f.restart(t, nil)
	got := f.ctrl.resizes(id)
	if len(got) != 1 || !reflect.DeepEqual(got[0], controller.PodResources{}) {
		t.Fatalf("recovery did not put back the pod's (no) resources: %+v", got)
	}
	sb, _ := f.store.Sandbox(id)
	if sb.Status.ResourcesApplied {
		t.Error("a resize that was undone is recorded as applied")
	}
	if in := f.store.Intents(); len(in) != 0 {
		t.Errorf("intents after recovery: %+v", in)
	}
}
