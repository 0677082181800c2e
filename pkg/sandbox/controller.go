package sandbox

import (
	"context"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// Controller runs the pods and containers of one kind of runtime handler:
// native pods on the host's auraed, VM pods on the auraed inside their VM.
// The CRI layer picks one by runtime handler and never asks which it got.
type Controller interface {
	// RunPod makes the pod's cell and namespaces and returns their paths.
	RunPod(ctx context.Context, pod *podsv0.Pod) (*podsv0.AllocateResponse, error)
	// StopPod stops what keeps the pod alive beyond its containers (a VM).
	StopPod(ctx context.Context, podID string) error
	// RemovePod frees everything of the pod; unknown pods are not an error.
	RemovePod(ctx context.Context, podID string) error
	StartContainer(ctx context.Context, podID string, c *podsv0.Container) (*podsv0.StartResponse, error)
	StopContainer(ctx context.Context, containerID string, timeout time.Duration) error
	// RemoveContainer deletes a stopped container; unknown ids are not an error.
	RemoveContainer(ctx context.Context, containerID string) error
	ContainerStatus(ctx context.Context, containerID string) (*podsv0.ContainerStatus, error)
	ExecSync(ctx context.Context, containerID string, argv []string, timeout time.Duration) (*podsv0.ExecSyncResponse, error)
	ContainerStats(ctx context.Context, containerID string) (*podsv0.ContainerStatsResponse, error)
	// ListPods is what the controller runs, for reconciliation at start.
	ListPods(ctx context.Context) ([]*podsv0.PodStatus, error)
	// UpdateContainerResources changes a running container's limits;
	// resources is an OCI LinuxResources as JSON.
	UpdateContainerResources(ctx context.Context, containerID string, resources []byte) error
	// ReopenContainerLog makes the container's monitor reopen its log file.
	ReopenContainerLog(ctx context.Context, containerID string) error
	// Streamer runs exec and attach sessions.
	Streamer
}

// NetworkAttacher is implemented by controllers whose pods need more than
// CNI's setup of their network namespace (a VM pod bridges it into its VM).
// RunPodSandbox calls it right after that setup, for every controller that
// implements it; RemovePod undoes it.
type NetworkAttacher interface {
	AttachNetwork(ctx context.Context, podID, netnsPath string, ips []string) error
}

// AuraeController is the native controller: an Aurae PodService client.
type AuraeController struct {
	Pods podsv0.PodServiceClient
}

var _ Controller = AuraeController{}

func (a AuraeController) RunPod(ctx context.Context, pod *podsv0.Pod) (*podsv0.AllocateResponse, error) {
	return a.Pods.Allocate(ctx, &podsv0.AllocateRequest{Pod: pod})
}

// StopPod has nothing to do for a native pod: its namespaces stay pinned
// until RemovePod, as the CRI wants (a stopped pod may be inspected).
func (a AuraeController) StopPod(context.Context, string) error { return nil }

func (a AuraeController) RemovePod(ctx context.Context, podID string) error {
	_, err := a.Pods.Free(ctx, &podsv0.FreeRequest{PodId: podID})
	return err
}

func (a AuraeController) StartContainer(ctx context.Context, podID string, c *podsv0.Container) (*podsv0.StartResponse, error) {
	return a.Pods.Start(ctx, &podsv0.StartRequest{PodId: podID, Container: c})
}

func (a AuraeController) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	_, err := a.Pods.Stop(ctx, &podsv0.StopRequest{ContainerId: id, TimeoutSeconds: int64(timeout / time.Second)})
	return err
}

func (a AuraeController) RemoveContainer(ctx context.Context, id string) error {
	_, err := a.Pods.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: id})
	return err
}

func (a AuraeController) ContainerStatus(ctx context.Context, id string) (*podsv0.ContainerStatus, error) {
	resp, err := a.Pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: id})
	return resp.GetStatus(), err
}

func (a AuraeController) ExecSync(ctx context.Context, id string, argv []string, timeout time.Duration) (*podsv0.ExecSyncResponse, error) {
	return a.Pods.ExecSync(ctx, &podsv0.ExecSyncRequest{ContainerId: id, Argv: argv, TimeoutSeconds: int64(timeout / time.Second)})
}

func (a AuraeController) ContainerStats(ctx context.Context, id string) (*podsv0.ContainerStatsResponse, error) {
	return a.Pods.ContainerStats(ctx, &podsv0.ContainerStatsRequest{ContainerId: id})
}

func (a AuraeController) ListPods(ctx context.Context) ([]*podsv0.PodStatus, error) {
	resp, err := a.Pods.ListPods(ctx, &podsv0.ListPodsRequest{})
	return resp.GetPods(), err
}

func (a AuraeController) UpdateContainerResources(ctx context.Context, id string, resources []byte) error {
	_, err := a.Pods.UpdateContainerResources(ctx, &podsv0.UpdateContainerResourcesRequest{ContainerId: id, LinuxResources: resources})
	return err
}

func (a AuraeController) ReopenContainerLog(ctx context.Context, id string) error {
	_, err := a.Pods.ReopenContainerLog(ctx, &podsv0.ReopenContainerLogRequest{ContainerId: id})
	return err
}
