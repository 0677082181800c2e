package cri

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeController is an in-memory sandbox.Controller.
type fakeController struct {
	mu         sync.Mutex
	pods       map[string]*podsv0.Pod
	containers map[string]*podsv0.ContainerStatus
	removed    []string
	runErr     error
}

var _ sandbox.Controller = (*fakeController)(nil)

func newFakeController() *fakeController {
	return &fakeController{pods: map[string]*podsv0.Pod{}, containers: map[string]*podsv0.ContainerStatus{}}
}

func (f *fakeController) RunPod(_ context.Context, pod *podsv0.Pod) (*podsv0.AllocateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runErr != nil {
		return nil, f.runErr
	}
	f.pods[pod.GetId()] = pod
	return &podsv0.AllocateResponse{PodId: pod.GetId(), NetworkNamespacePath: "/run/fake/netns/" + pod.GetId(), CgroupPath: "aurae/pods/" + pod.GetId()}, nil
}

func (f *fakeController) StopPod(context.Context, string) error { return nil }

func (f *fakeController) RemovePod(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, id)
	f.removed = append(f.removed, id)
	return nil
}

func (f *fakeController) StartContainer(_ context.Context, podID string, c *podsv0.Container) (*podsv0.StartResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers[c.GetId()] = &podsv0.ContainerStatus{Id: c.GetId(), PodId: podID, State: podsv0.ContainerState_CONTAINER_STATE_RUNNING, Pid: 42}
	return &podsv0.StartResponse{ContainerId: c.GetId(), Pid: 42}, nil
}

func (f *fakeController) StopContainer(_ context.Context, id string, _ time.Duration) error {
	f.exit(id, 137, "")
	return nil
}

// exit makes a container exit with code.
func (f *fakeController) exit(id string, code int32, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[id]; ok {
		c.State, c.ExitCode, c.Reason, c.FinishedAt = podsv0.ContainerState_CONTAINER_STATE_EXITED, code, reason, time.Now().UnixNano()
	}
}

func (f *fakeController) RemoveContainer(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
	return nil
}

func (f *fakeController) ContainerStatus(_ context.Context, id string) (*podsv0.ContainerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return proto.Clone(c).(*podsv0.ContainerStatus), nil
}

func (f *fakeController) ExecSync(context.Context, string, []string, time.Duration) (*podsv0.ExecSyncResponse, error) {
	return &podsv0.ExecSyncResponse{Stdout: []byte("ok\n")}, nil
}

func (f *fakeController) ContainerStats(_ context.Context, id string) (*podsv0.ContainerStatsResponse, error) {
	return &podsv0.ContainerStatsResponse{ContainerId: id, CpuUsageNanos: 1, MemoryWorkingSetBytes: 2}, nil
}

func (f *fakeController) ListPods(context.Context) ([]*podsv0.PodStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*podsv0.PodStatus
	for _, p := range f.pods {
		out = append(out, &podsv0.PodStatus{Pod: p})
	}
	return out, nil
}

func (f *fakeController) UpdateContainerResources(context.Context, string, []byte) error { return nil }
func (f *fakeController) ReopenContainerLog(context.Context, string) error               { return nil }

// fakeNetwork counts setups and teardowns per pod.
type fakeNetwork struct {
	mu        sync.Mutex
	setups    map[string]int
	teardowns map[string]int
	setupErr  error
	notReady  error
}

func newFakeNetwork() *fakeNetwork {
	return &fakeNetwork{setups: map[string]int{}, teardowns: map[string]int{}}
}

func (n *fakeNetwork) Ready() error { return n.notReady }

func (n *fakeNetwork) Setup(_ context.Context, podID, _ string, _ *runtimeapi.PodSandboxConfig) ([]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.setupErr != nil {
		return nil, n.setupErr
	}
	n.setups[podID]++
	return []string{"10.0.0.2"}, nil
}

func (n *fakeNetwork) Teardown(_ context.Context, podID, _ string, _ *runtimeapi.PodSandboxConfig) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.teardowns[podID]++
	return nil
}

func (n *fakeNetwork) count(m map[string]int, id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return m[id]
}

var errFake = errors.New("fake failure")
