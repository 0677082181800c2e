// Package native is the controller of native pods (RuntimeClass handlers ""
// and "runc"): a client of an auraed's PodService, whose pods are cells
// with pinned namespaces on that auraed's machine. The VM controller uses
// it too, on the auraed inside each VM.
package native

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// Controller implements controller.Controller over a PodService.
type Controller struct {
	pods podsv0.PodServiceClient
	mu   sync.Mutex
	// known is what each pod's Allocate answered (and its spec), from
	// which a container's facts are made; filled again by ListPods after
	// a restart.
	known map[string]*podsv0.PodStatus
}

var _ controller.Controller = (*Controller)(nil)

// New returns the controller of the pods of the auraed at conn.
func New(conn grpc.ClientConnInterface) *Controller {
	return WithClient(podsv0.NewPodServiceClient(conn))
}

// WithClient returns the controller of the pods of a PodService client.
func WithClient(pods podsv0.PodServiceClient) *Controller {
	return &Controller{pods: pods, known: map[string]*podsv0.PodStatus{}}
}

// PodService is the client the controller calls, for the calls that are
// not the controller's (a VM pod's log stream).
func (c *Controller) PodService() podsv0.PodServiceClient { return c.pods }

// CreatePod allocates the pod: its cgroup and pinned namespaces.
func (c *Controller) CreatePod(ctx context.Context, spec controller.PodSpec) (controller.Pod, error) {
	pod := PodMessage(spec)
	alloc, err := c.pods.Allocate(ctx, &podsv0.AllocateRequest{Pod: pod})
	if err != nil {
		return controller.Pod{}, err
	}
	c.mu.Lock()
	c.known[spec.ID] = &podsv0.PodStatus{Pod: pod, Paths: alloc}
	c.mu.Unlock()
	out := controller.Pod{CgroupPath: alloc.GetCgroupPath(), CgroupDriver: alloc.GetCgroupDriver(), UserNamespacePath: alloc.GetUserNamespacePath()}
	if spec.Network != controller.NamespaceNode {
		out.NetNSPath = alloc.GetNetworkNamespacePath()
	}
	return out, nil
}

// PodMessage is spec as an Aurae pod.
func PodMessage(spec controller.PodSpec) *podsv0.Pod {
	pod := &podsv0.Pod{
		Id:           spec.ID,
		CgroupParent: spec.CgroupParent,
		Hostname:     spec.Hostname,
		Namespaces: &podsv0.NamespaceOptions{
			Network: podsv0.NamespaceMode(spec.Network),
			Pid:     podsv0.NamespaceMode(spec.PID),
			Ipc:     podsv0.NamespaceMode(spec.IPC),
		},
		Sysctls:        spec.Sysctls,
		Labels:         spec.Labels,
		Annotations:    spec.Annotations,
		RuntimeHandler: spec.RuntimeHandler,
	}
	if r := spec.Resources; r != (controller.Resources{}) {
		pod.Resources = &podsv0.PodResources{CpuPeriod: r.CPUPeriod, CpuQuota: r.CPUQuota, MemoryLimitBytes: r.MemoryLimitBytes}
	}
	if d := spec.DNS; len(d.Servers)+len(d.Searches)+len(d.Options) > 0 {
		pod.Dns = &podsv0.DNSConfig{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	if u := spec.UserNamespace; u != nil {
		pod.UserNamespace = &podsv0.UserNamespace{UidMappings: idMappings(u.UIDs), GidMappings: idMappings(u.GIDs)}
	}
	return pod
}

func idMappings(ms []specs.LinuxIDMapping) []*podsv0.IDMapping {
	out := make([]*podsv0.IDMapping, 0, len(ms))
	for _, m := range ms {
		out = append(out, &podsv0.IDMapping{ContainerId: m.ContainerID, HostId: m.HostID, Size: m.Size})
	}
	return out
}

func specIDMappings(ms []*podsv0.IDMapping) []specs.LinuxIDMapping {
	out := make([]specs.LinuxIDMapping, 0, len(ms))
	for _, m := range ms {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.GetContainerId(), HostID: m.GetHostId(), Size: m.GetSize()})
	}
	return out
}

// StartPod has nothing to do: a native pod's containers join the network
// namespace CNI set up.
func (c *Controller) StartPod(context.Context, string, *controller.Network) error { return nil }

// StopPod has nothing to do for a native pod: its namespaces stay pinned
// until RemovePod, as the CRI wants (a stopped pod may be inspected).
func (c *Controller) StopPod(context.Context, string) error { return nil }

func (c *Controller) RemovePod(ctx context.Context, podID string) error {
	if _, err := c.pods.Free(ctx, &podsv0.FreeRequest{PodId: podID}); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.known, podID)
	c.mu.Unlock()
	return nil
}

func (c *Controller) ListPods(ctx context.Context) ([]controller.PodState, error) {
	pods, err := c.listPods(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]controller.PodState, 0, len(pods))
	for _, p := range pods {
		st := controller.PodState{ID: p.GetPod().GetId()}
		for _, cs := range p.GetContainers() {
			st.Containers = append(st.Containers, containerState(cs))
		}
		out = append(out, st)
	}
	return out, nil
}

// maxListPages bounds the pages of one listing, against a server whose
// page token never ends.
const maxListPages = 10000

// listPods lists the pods, a page at a time, and remembers them.
func (c *Controller) listPods(ctx context.Context) ([]*podsv0.PodStatus, error) {
	var pods []*podsv0.PodStatus
	token := ""
	for range maxListPages {
		resp, err := c.pods.ListPods(ctx, &podsv0.ListPodsRequest{PageToken: token})
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		for _, p := range resp.GetPods() {
			c.known[p.GetPod().GetId()] = &podsv0.PodStatus{Pod: p.GetPod(), Paths: p.GetPaths()}
		}
		c.mu.Unlock()
		pods = append(pods, resp.GetPods()...)
		next := resp.GetNextPageToken()
		if next == "" {
			return pods, nil
		}
		if next == token {
			return nil, fmt.Errorf("list pods: page token %q repeats", token)
		}
		token = next
	}
	return nil, fmt.Errorf("list pods: more than %d pages", maxListPages)
}

// pod is what auraed said of a pod, asked again when this process does
// not know it (it was made before a restart).
func (c *Controller) pod(ctx context.Context, podID string) (*podsv0.PodStatus, error) {
	c.mu.Lock()
	p := c.known[podID]
	c.mu.Unlock()
	if p != nil {
		return p, nil
	}
	if _, err := c.listPods(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	p = c.known[podID]
	c.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("pod %s: %w", podID, errdefs.ErrNotFound)
	}
	return p, nil
}

// PrepareContainer answers the pod's facts: its pinned namespaces, cgroup,
// files and auraed's OOM floor; the container's rootfs and mounts are
// where the host has them.
func (c *Controller) PrepareContainer(ctx context.Context, podID string, files controller.ContainerFiles) (ocispec.PodFacts, error) {
	p, err := c.pod(ctx, podID)
	if err != nil {
		return ocispec.PodFacts{}, err
	}
	facts := Facts(p.GetPod(), p.GetPaths())
	facts.RootfsPath = files.Rootfs
	if files.PIDTarget != "" {
		if facts.PIDTarget, err = c.pidNamespaceOf(ctx, podID, files.PIDTarget); err != nil {
			return ocispec.PodFacts{}, err
		}
	}
	return facts, nil
}

// Facts are what an Aurae pod's allocation says for its containers' specs.
func Facts(pod *podsv0.Pod, paths *podsv0.AllocateResponse) ocispec.PodFacts {
	node := podsv0.NamespaceMode_NAMESPACE_MODE_NODE
	ns := func(mode podsv0.NamespaceMode, path string) ocispec.Namespace {
		if mode == node {
			return ocispec.Namespace{Node: true}
		}
		return ocispec.Namespace{Path: path}
	}
	nso := pod.GetNamespaces()
	f := ocispec.PodFacts{
		Network:        ns(nso.GetNetwork(), paths.GetNetworkNamespacePath()),
		UTS:            ns(nso.GetNetwork(), paths.GetUtsNamespacePath()),
		IPC:            ns(nso.GetIpc(), paths.GetIpcNamespacePath()),
		PID:            ns(nso.GetPid(), paths.GetPidNamespacePath()),
		Hostname:       pod.GetHostname(),
		CgroupParent:   "/" + paths.GetCgroupPath(),
		SystemdSlice:   paths.GetCgroupSlice(),
		OOMScoreAdjMin: int(paths.GetOomScoreAdjMin()),
		ResolvConfPath: paths.GetResolvConfPath(),
		HostsPath:      paths.GetHostsPath(),
		HostnamePath:   paths.GetHostnamePath(),
		OCIVersion:     paths.GetOciVersion(),
	}
	if u := pod.GetUserNamespace(); u != nil {
		f.UserNamespace = paths.GetUserNamespacePath()
		f.UIDMappings, f.GIDMappings = specIDMappings(u.GetUidMappings()), specIDMappings(u.GetGidMappings())
	}
	return f
}

// pidNamespaceOf is the pid namespace of a running container of the pod,
// as its runtime sees it (/proc/<pid>/ns/pid).
func (c *Controller) pidNamespaceOf(ctx context.Context, podID, target string) (string, error) {
	st, err := c.ContainerStatus(ctx, target)
	if err != nil {
		return "", fmt.Errorf("pid namespace target %s: %w", target, err)
	}
	if st.PodID != podID {
		return "", fmt.Errorf("pid namespace target %s is not in pod %s: %w", target, podID, errdefs.ErrInvalidArgument)
	}
	if st.State != controller.StateRunning || st.Pid <= 0 {
		return "", fmt.Errorf("pid namespace target %s is not running: %w", target, errdefs.ErrFailedPrecondition)
	}
	return "/proc/" + strconv.Itoa(st.Pid) + "/ns/pid", nil
}

func (c *Controller) StartContainer(ctx context.Context, podID string, ctr controller.Container) (controller.Started, error) {
	msg := &podsv0.Container{Id: ctr.ID, OciSpec: ctr.Spec, LogPath: ctr.LogPath, Tty: ctr.Tty, Stdin: ctr.Stdin, RestoreImagePath: ctr.RestoreFrom}
	if ctr.LogStream {
		msg.LogPath, msg.LogStream = "", true
	}
	resp, err := c.pods.Start(ctx, &podsv0.StartRequest{PodId: podID, Container: msg})
	if err != nil {
		return controller.Started{}, err
	}
	return controller.Started{Pid: int(resp.GetPid())}, nil
}

func (c *Controller) StopContainer(ctx context.Context, id string, timeout time.Duration, signal string) error {
	_, err := c.pods.Stop(ctx, &podsv0.StopRequest{ContainerId: id, TimeoutSeconds: int64(timeout / time.Second), Signal: signal})
	return err
}

// RootfsFreeAtExit implements controller.RootfsFreeAtExit: runc runs a
// container in a mount namespace of its own, so its exit frees the host
// mount of its rootfs.
func (c *Controller) RootfsFreeAtExit() bool { return true }

// RemoveContainer removes the container; nothing was prepared for it.
func (c *Controller) RemoveContainer(ctx context.Context, _, id string) error {
	_, err := c.pods.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: id})
	return err
}

func (c *Controller) ContainerStatus(ctx context.Context, id string) (controller.ContainerState, error) {
	resp, err := c.pods.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return controller.ContainerState{}, err
	}
	return containerState(resp.GetStatus()), nil
}

func containerState(s *podsv0.ContainerStatus) controller.ContainerState {
	st := controller.ContainerState{
		ID: s.GetId(), PodID: s.GetPodId(), Pid: int(s.GetPid()), ExitCode: s.GetExitCode(),
		Reason: s.GetReason(), Message: s.GetMessage(),
	}
	switch s.GetState() {
	case podsv0.ContainerState_CONTAINER_STATE_CREATED:
		st.State = controller.StateCreated
	case podsv0.ContainerState_CONTAINER_STATE_RUNNING:
		st.State = controller.StateRunning
	case podsv0.ContainerState_CONTAINER_STATE_EXITED:
		st.State = controller.StateExited
	}
	if t := s.GetStartedAt(); t > 0 {
		st.StartedAt = time.Unix(0, t)
	}
	if f := s.GetFinishedAt(); f > 0 {
		st.FinishedAt = time.Unix(0, f)
	}
	return st
}

func (c *Controller) ExecSync(ctx context.Context, id string, argv []string, timeout time.Duration) (controller.ExecResult, error) {
	resp, err := c.pods.ExecSync(ctx, &podsv0.ExecSyncRequest{ContainerId: id, Argv: argv, TimeoutSeconds: int64(timeout / time.Second)})
	if err != nil {
		return controller.ExecResult{}, err
	}
	return controller.ExecResult{Stdout: resp.GetStdout(), Stderr: resp.GetStderr(), ExitCode: resp.GetExitCode()}, nil
}

func (c *Controller) ContainerStats(ctx context.Context, id string) (controller.Stats, error) {
	resp, err := c.pods.ContainerStats(ctx, &podsv0.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		return controller.Stats{}, err
	}
	st := controller.Stats{
		CPUUsageNanos: resp.GetCpuUsageNanos(), MemoryWorkingSetBytes: resp.GetMemoryWorkingSetBytes(),
		CPUUserNanos: resp.GetCpuUserNanos(), CPUSystemNanos: resp.GetCpuSystemNanos(),
		CPUPeriods: resp.GetCpuPeriods(), CPUThrottledPeriods: resp.GetCpuThrottledPeriods(), CPUThrottledNanos: resp.GetCpuThrottledNanos(),
		MemoryUsageBytes: resp.GetMemoryUsageBytes(), MemoryMaxUsageBytes: resp.GetMemoryMaxUsageBytes(), MemoryCacheBytes: resp.GetMemoryCacheBytes(),
		MemoryRSSBytes: resp.GetMemoryRssBytes(), MemorySwapBytes: resp.GetMemorySwapBytes(), MemoryMappedFileBytes: resp.GetMemoryMappedFileBytes(),
		MemoryKernelBytes: resp.GetMemoryKernelBytes(), MemoryFailcnt: resp.GetMemoryFailcnt(),
		MemoryPgfault: resp.GetMemoryPgfault(), MemoryPgmajfault: resp.GetMemoryPgmajfault(), OOMEvents: resp.GetOomEvents(),
		Processes: resp.GetProcesses(), Threads: resp.GetThreads(), ThreadsMax: resp.GetThreadsMax(),
		FileDescriptors: resp.GetFileDescriptors(), Sockets: resp.GetSockets(),
	}
	for _, i := range resp.GetInterfaces() {
		st.Interfaces = append(st.Interfaces, controller.InterfaceStats{
			Name: i.GetName(), RxBytes: i.GetRxBytes(), RxPackets: i.GetRxPackets(), RxErrors: i.GetRxErrors(), RxDropped: i.GetRxDropped(),
			TxBytes: i.GetTxBytes(), TxPackets: i.GetTxPackets(), TxErrors: i.GetTxErrors(), TxDropped: i.GetTxDropped(),
		})
	}
	if ts := resp.GetTimestamp(); ts > 0 {
		st.Timestamp = time.Unix(0, ts)
	}
	return st, nil
}

func (c *Controller) CheckpointContainer(ctx context.Context, id, imageDir string, leaveRunning bool) error {
	_, err := c.pods.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: id, ImagePath: imageDir, LeaveRunning: leaveRunning})
	return err
}

func (c *Controller) ReopenContainerLog(ctx context.Context, id string) error {
	_, err := c.pods.ReopenContainerLog(ctx, &podsv0.ReopenContainerLogRequest{ContainerId: id})
	return err
}

func (c *Controller) UpdateContainerResources(ctx context.Context, id string, res *specs.LinuxResources) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = c.pods.UpdateContainerResources(ctx, &podsv0.UpdateContainerResourcesRequest{ContainerId: id, LinuxResources: b})
	return err
}

// UpdatePodResources gives the pod's cgroup, which holds the whole pod,
// its resources plus its overhead.
func (c *Controller) UpdatePodResources(ctx context.Context, podID string, res controller.PodResources) error {
	total, err := res.Total()
	if err != nil {
		return err
	}
	return c.SetPodResources(ctx, podID, total.OCI())
}

// SetPodResources sets the limits of the pod's cgroup, as a whole.
func (c *Controller) SetPodResources(ctx context.Context, podID string, res *specs.LinuxResources) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = c.pods.UpdatePodResources(ctx, &podsv0.UpdatePodResourcesRequest{PodId: podID, LinuxResources: b})
	return err
}

// Events follows PodService.ContainerEvents. It returns once auraed has
// the subscription in place (the stream's header), so that nothing that
// happens afterwards is missed.
func (c *Controller) Events(ctx context.Context) (<-chan controller.ContainerEvent, error) {
	st, err := c.pods.ContainerEvents(ctx, &podsv0.ContainerEventsRequest{})
	if err != nil {
		return nil, err
	}
	if _, err := st.Header(); err != nil {
		return nil, err
	}
	ch := make(chan controller.ContainerEvent, 64)
	go func() {
		defer close(ch)
		for {
			m, err := st.Recv()
			if err != nil {
				return
			}
			ev := controller.ContainerEvent{Container: containerState(m.GetStatus())}
			switch m.GetType() {
			case podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_STARTED:
				ev.Type = controller.EventStarted
			case podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_EXITED:
				ev.Type = controller.EventExited
			case podsv0.ContainerEventType_CONTAINER_EVENT_TYPE_REMOVED:
				ev.Type = controller.EventRemoved
			default:
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}
