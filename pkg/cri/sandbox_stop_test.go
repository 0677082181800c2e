package cri

import (
	"encoding/json"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A pod whose cleanup fails is NOTREADY with the error in its verbose
// status, and is stopped and removed once the cleanup works.
func TestCleanupFailureNotReady(t *testing.T) {
	f := newFixture(t, true)
	resp, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("cleanup")})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetPodSandboxId()
	f.net.teardownErr = errFake
	if _, err := f.rt.StopPodSandbox(t.Context(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err == nil {
		t.Fatal("stop with a failing network teardown succeeded")
	}
	st, err := f.rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("state %s after a failed cleanup, want NOTREADY", st.GetStatus().GetState())
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil {
		t.Fatal(err)
	}
	if info["cleanupError"] == nil {
		t.Errorf("no cleanupError in the verbose status: %v", info)
	}
	f.net.teardownErr = nil
	if _, err := f.rt.RemovePodSandbox(t.Context(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	if n := f.net.count(f.net.teardowns, id); n != 1 {
		t.Errorf("network torn down %d times, want 1", n)
	}
	if len(f.store.Sandboxes()) != 0 {
		t.Errorf("pod left: %v", f.store.Sandboxes())
	}
}
