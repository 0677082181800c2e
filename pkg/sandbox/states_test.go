package sandbox

import (
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestLifeCycles(t *testing.T) {
	const (
		created = runtimeapi.ContainerState_CONTAINER_CREATED
		running = runtimeapi.ContainerState_CONTAINER_RUNNING
		exited  = runtimeapi.ContainerState_CONTAINER_EXITED
		unknown = runtimeapi.ContainerState_CONTAINER_UNKNOWN
	)
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	if err := st.AddSandbox(&Sandbox{ID: "pod", Name: "pod", Config: &runtimeapi.PodSandboxConfig{}, CreatedAt: time.Now(),
		Status: SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		path   []ContainerStatus
		refuse bool // the last step
	}{
		{"created, running, exited", []ContainerStatus{{State: created}, {State: running}, {State: exited}}, false},
		{"a failed start", []ContainerStatus{{State: created}, {State: exited}}, false},
		{"unknown and back", []ContainerStatus{{State: created}, {State: running}, {State: unknown}, {State: running}, {State: unknown}, {State: exited}}, false},
		{"start of an exited container", []ContainerStatus{{State: created}, {State: running}, {State: exited}, {State: running}}, true},
		{"exited back to created", []ContainerStatus{{State: created}, {State: exited}, {State: created}}, true},
		{"running after removing", []ContainerStatus{{State: created}, {State: created, Removing: true}, {State: running, Removing: true}}, true},
		{"removing undone", []ContainerStatus{{State: created}, {State: exited, Removing: true}, {State: exited}}, true},
	} {
		id := "c-" + tc.name
		if err := st.AddContainer(&Container{ID: id, SandboxID: "pod", Name: id, Config: &runtimeapi.ContainerConfig{}, CreatedAt: time.Now(), Status: tc.path[0]}); err != nil {
			t.Fatal(err)
		}
		for i, next := range tc.path[1:] {
			_, err := st.UpdateContainer(id, func(ContainerStatus) (ContainerStatus, error) { return next, nil })
			last := i == len(tc.path)-2
			switch {
			case last && tc.refuse && !errdefs.IsFailedPrecondition(err):
				t.Errorf("%s: %v, want FailedPrecondition", tc.name, err)
			case (!last || !tc.refuse) && err != nil:
				t.Errorf("%s: step %d: %v", tc.name, i+1, err)
			}
		}
		if tc.refuse {
			if c, _ := st.Container(id); c.Status != tc.path[len(tc.path)-2] {
				t.Errorf("%s: a refused change was kept: %+v", tc.name, c.Status)
			}
		}
	}

	notReady := func(s SandboxStatus) (SandboxStatus, error) {
		s.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		return s, nil
	}
	if _, err := st.UpdateSandbox("pod", notReady); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateSandbox("pod", func(s SandboxStatus) (SandboxStatus, error) {
		s.State = runtimeapi.PodSandboxState_SANDBOX_READY
		return s, nil
	}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("NOTREADY → READY: %v, want FailedPrecondition", err)
	}
	if _, err := st.UpdateSandbox("pod", func(s SandboxStatus) (SandboxStatus, error) { s.Removing = true; return s, nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateSandbox("pod", func(s SandboxStatus) (SandboxStatus, error) { s.Removing = false; return s, nil }); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("removing undone: %v, want FailedPrecondition", err)
	}
}
