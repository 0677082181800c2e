package cri

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// TestRecoverStartCutShort: a crash between the controller's start and its
// record leaves a container recorded CREATED. Recovery gives it the state
// the controller reports (running, or exited when the start failed), so
// that nobody starts it again (the controller would refuse, and the CRI
// would record a StartError over a running container); one the controller
// never started stays created.
func TestRecoverStartCutShort(t *testing.T) {
	f := newCrashFixture(t)
	podID := f.pod(t, f.rt, "p")
	create := func(name string) string {
		resp, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: appContainer(name)})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetContainerId()
		t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(id)) })
		return id
	}
	running, failed, created := create("running"), create("failed"), create("created")
	// The starts the crash cut: the controller ran them, the store does
	// not know.
	for _, id := range []string{running, failed} {
		if _, err := f.ctrl.StartContainer(t.Context(), podID, controller.Container{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	f.ctrl.exit(failed, 255, "Error")

	rt := f.restart(t, nil)
	want := map[string]runtimeapi.ContainerState{
		running: runtimeapi.ContainerState_CONTAINER_RUNNING,
		failed:  runtimeapi.ContainerState_CONTAINER_EXITED,
		created: runtimeapi.ContainerState_CONTAINER_CREATED,
	}
	for id, state := range want {
		resp, err := rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		st := resp.GetStatus()
		if st.GetState() != state {
			t.Errorf("%s after recovery: %v, want %v", st.GetMetadata().GetName(), st.GetState(), state)
		}
		switch id {
		case running:
			if st.GetStartedAt() == 0 {
				t.Errorf("running container without a start time: %v", st)
			}
		case failed:
			if st.GetExitCode() != 255 || st.GetReason() != "Error" {
				t.Errorf("failed start after recovery: %v", st)
			}
		}
	}
	if _, err := rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: created}); err != nil {
		t.Errorf("start of the container never started: %v", err)
	}
}

// TestStartFinishedAfterRecovery: the start a crash cut short was still in
// flight in the controller when the restarted CRI recovered, so the
// container stayed CREATED; the controller then finished it. The
// kubelet's retry of StartContainer succeeds with the container running
// (the controller refuses a second start with AlreadyExists), and one
// whose late start failed is reported exited with its own reason, not a
// StartError over it.
func TestStartFinishedAfterRecovery(t *testing.T) {
	f := newCrashFixture(t)
	podID := f.pod(t, f.rt, "p")
	var ids []string
	for _, name := range []string{"running", "failed"} {
		resp, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: appContainer(name)})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetContainerId()
		t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(id)) })
		ids = append(ids, id)
	}
	running, failed := ids[0], ids[1]
	rt := f.restart(t, nil)
	for _, id := range ids {
		if _, err := f.ctrl.StartContainer(t.Context(), podID, controller.Container{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Its exit event is lost (else the event itself records the exit,
	// and the retried start is refused as the container is no longer
	// created).
	f.ctrl.mu.Lock()
	f.ctrl.quiet = true
	f.ctrl.mu.Unlock()
	f.ctrl.exit(failed, 3, "Error")
	for _, id := range ids {
		if _, err := rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("retried start: %v", err)
		}
	}
	for id, want := range map[string]runtimeapi.ContainerState{running: runtimeapi.ContainerState_CONTAINER_RUNNING, failed: runtimeapi.ContainerState_CONTAINER_EXITED} {
		resp, err := rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		st := resp.GetStatus()
		if st.GetState() != want || st.GetStartedAt() == 0 || st.GetReason() == "StartError" {
			t.Errorf("%s after the retried start: %v", st.GetMetadata().GetName(), st)
		}
		if id == failed && st.GetExitCode() != 3 {
			t.Errorf("late start that failed: exit code %d, want 3", st.GetExitCode())
		}
	}
	// A second start of a running container is still refused.
	if _, err := rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: running}); err == nil {
		t.Error("start of a running container succeeded")
	}
}
