package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// fakeController is an in-memory controller.Controller.
type fakeController struct {
	mu         sync.Mutex
	pods       map[string]controller.PodSpec
	started    map[string]*controller.Network
	containers map[string]*controller.ContainerState
	prepared   map[string]controller.ContainerFiles
	removed    []string
	// stopSignals are the signals StopContainer was given, in order.
	stopSignals []string
	runErr      error
	startErr    error
	forwarded   []int32
	subs        []chan controller.ContainerEvent
	// quiet: exits publish no event (a lost event stream).
	quiet bool
	// eventsErr fails Events (no stream at all: no resync either).
	eventsErr error
	// wedged containers: their status and stats calls block until the
	// channel is closed or the call's context ends (a SIGSTOPped monitor, a
	// stopped VM guest).
	wedged map[string]chan struct{}
	// listErr fails ListPods.
	listErr error
	// cgroupDriver is the driver CreatePod says made the pod's cgroups.
	cgroupDriver string
	// afterStart, when set, runs once StartContainer has the container
	// running, before it returns (a container that ends at once).
	afterStart func(id string)
	// removeGate, when set, holds RemoveContainer until it is closed;
	// removeFails fails that many RemoveContainer calls first.
	removeGate  chan struct{}
	removeFails int
	// statsCalls counts ContainerStats calls per container.
	statsCalls map[string]int
	// held containers: their status calls block until the test releases
	// them, whatever the call's context (a call that nothing ends).
	held map[string]*heldStatus
	// resized are the pod resources each pod was given, in order;
	// resizeErr fails the next resizeFailures resizes (every one when 0).
	resized        map[string][]controller.PodResources
	resizeErr      error
	resizeFailures int
}

// heldStatus is a held container's status calls: entered is signalled
// at each call's start; pending and most count the calls in flight, now
// and at most at once.
type heldStatus struct {
	release       chan struct{}
	entered       chan struct{}
	calls         int
	pending, most int
}

var _ controller.Controller = (*fakeController)(nil)

func newFakeController() *fakeController {
	return &fakeController{
		pods: map[string]controller.PodSpec{}, started: map[string]*controller.Network{},
		containers: map[string]*controller.ContainerState{}, prepared: map[string]controller.ContainerFiles{},
		wedged: map[string]chan struct{}{}, statsCalls: map[string]int{},
		held: map[string]*heldStatus{},
	}
}

// hold makes a container's status calls block until the returned release
// is called; they ignore their context.
func (f *fakeController) hold(id string) (h *heldStatus, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h = &heldStatus{release: make(chan struct{}), entered: make(chan struct{}, 16)}
	f.held[id] = h
	return h, sync.OnceFunc(func() {
		f.mu.Lock()
		delete(f.held, id)
		f.mu.Unlock()
		close(h.release)
	})
}

// holding reports a held container's status calls: in all, in flight,
// and most in flight at once.
func (f *fakeController) holding(h *heldStatus) (calls, pending, most int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return h.calls, h.pending, h.most
}

// waitHeld blocks while id is held, counting the call.
func (f *fakeController) waitHeld(id string) {
	f.mu.Lock()
	h := f.held[id]
	if h == nil {
		f.mu.Unlock()
		return
	}
	h.calls++
	h.pending++
	h.most = max(h.most, h.pending)
	f.mu.Unlock()
	select {
	case h.entered <- struct{}{}:
	default:
	}
	<-h.release
	f.mu.Lock()
	h.pending--
	f.mu.Unlock()
}

// wedge makes a container's status and stats calls block until unwedge.
func (f *fakeController) wedge(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wedged[id] = make(chan struct{})
}

func (f *fakeController) unwedge(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.wedged[id]; ok {
		close(ch)
		delete(f.wedged, id)
	}
}

// block waits while id is wedged; the error is the context's, as the real
// client returns it at a deadline.
func (f *fakeController) block(ctx context.Context, id string) error {
	f.mu.Lock()
	ch := f.wedged[id]
	f.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("container %s: %w", id, ctx.Err())
	}
}

func (f *fakeController) CreatePod(_ context.Context, spec controller.PodSpec) (controller.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runErr != nil {
		return controller.Pod{}, f.runErr
	}
	f.pods[spec.ID] = spec
	return controller.Pod{NetNSPath: "/run/fake/netns/" + spec.ID, CgroupPath: "aurae/pods/" + spec.ID, CgroupDriver: f.cgroupDriver}, nil
}

func (f *fakeController) StartPod(_ context.Context, id string, net *controller.Network) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.startErr != nil {
		return f.startErr
	}
	f.started[id] = net
	return nil
}

func (f *fakeController) StopPod(context.Context, string) error { return nil }

func (f *fakeController) RemovePod(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, id)
	f.removed = append(f.removed, id)
	return nil
}

// PrepareContainer answers facts as a native pod's would be.
func (f *fakeController) PrepareContainer(_ context.Context, podID string, files controller.ContainerFiles) (ocispec.PodFacts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pods[podID]; !ok {
		return ocispec.PodFacts{}, fmt.Errorf("pod %s: %w", podID, errdefs.ErrNotFound)
	}
	f.prepared[files.ID] = files
	facts := ocispec.PodFacts{
		Network: ocispec.Namespace{Path: "/run/fake/netns/" + podID}, IPC: ocispec.Namespace{Path: "/run/fake/ipc/" + podID},
		UTS: ocispec.Namespace{Path: "/run/fake/uts/" + podID}, CgroupParent: "/aurae/pods/" + podID, RootfsPath: files.Rootfs,
	}
	if files.PIDTarget != "" {
		t, ok := f.containers[files.PIDTarget]
		if !ok || t.State != controller.StateRunning {
			return ocispec.PodFacts{}, fmt.Errorf("target %s: %w", files.PIDTarget, errdefs.ErrFailedPrecondition)
		}
		facts.PIDTarget = fmt.Sprintf("/proc/%d/ns/pid", t.Pid)
	}
	return facts, nil
}

func (f *fakeController) StartContainer(_ context.Context, podID string, c controller.Container) (controller.Started, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[c.ID]; ok {
		return controller.Started{}, fmt.Errorf("container %q: %w", c.ID, errdefs.ErrAlreadyExists)
	}
	f.containers[c.ID] = &controller.ContainerState{ID: c.ID, PodID: podID, State: controller.StateRunning, Pid: 42, StartedAt: time.Now()}
	if hook := f.afterStart; hook != nil {
		f.mu.Unlock()
		hook(c.ID)
		f.mu.Lock()
	}
	return controller.Started{Pid: 42}, nil
}

func (f *fakeController) StopContainer(_ context.Context, id string, _ time.Duration, signal string) error {
	f.mu.Lock()
	f.stopSignals = append(f.stopSignals, signal)
	f.mu.Unlock()
	f.exit(id, 137, "")
	return nil
}

// exit makes a container exit with code, and tells the subscribers.
func (f *fakeController) exit(id string, code int32, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return
	}
	c.State, c.ExitCode, c.Reason, c.FinishedAt = controller.StateExited, code, reason, time.Now()
	if f.quiet {
		return
	}
	for _, ch := range f.subs {
		select {
		case ch <- controller.ContainerEvent{Type: controller.EventExited, Container: *c}:
		default:
		}
	}
}

// Events of the fake are its exits.
func (f *fakeController) Events(ctx context.Context) (<-chan controller.ContainerEvent, error) {
	ch := make(chan controller.ContainerEvent, 16)
	f.mu.Lock()
	if f.eventsErr != nil {
		defer f.mu.Unlock()
		return nil, f.eventsErr
	}
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	context.AfterFunc(ctx, func() { f.dropEvents() })
	return ch, nil
}

// dropEvents closes every subscription, as a lost stream does.
func (f *fakeController) dropEvents() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.subs {
		close(ch)
	}
	f.subs = nil
}

func (f *fakeController) RemoveContainer(ctx context.Context, _, id string) error {
	f.mu.Lock()
	gate := f.removeGate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.removeFails > 0 {
		f.removeFails--
		return errFake
	}
	delete(f.containers, id)
	delete(f.prepared, id)
	return nil
}

func (f *fakeController) ContainerStatus(ctx context.Context, id string) (controller.ContainerState, error) {
	f.waitHeld(id)
	if err := f.block(ctx, id); err != nil {
		return controller.ContainerState{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return controller.ContainerState{}, fmt.Errorf("container %s: %w", id, errdefs.ErrNotFound)
	}
	return *c, nil
}

func (f *fakeController) ExecSync(context.Context, string, []string, time.Duration) (controller.ExecResult, error) {
	return controller.ExecResult{Stdout: []byte("ok\n")}, nil
}

func (f *fakeController) ContainerStats(ctx context.Context, id string) (controller.Stats, error) {
	f.mu.Lock()
	f.statsCalls[id]++
	n := f.statsCalls[id]
	f.mu.Unlock()
	if err := f.block(ctx, id); err != nil {
		return controller.Stats{}, err
	}
	return controller.Stats{CPUUsageNanos: uint64(n), MemoryWorkingSetBytes: 2, Processes: 1, Threads: 3,
		Interfaces: []controller.InterfaceStats{{Name: "eth0", RxBytes: uint64(100 * n), TxBytes: 7}}}, nil
}

func (f *fakeController) ListPods(context.Context) ([]controller.PodState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	var out []controller.PodState
	for id := range f.pods {
		out = append(out, controller.PodState{ID: id})
	}
	return out, nil
}

func (f *fakeController) UpdateContainerResources(context.Context, string, *specs.LinuxResources) error {
	return nil
}
func (f *fakeController) ReopenContainerLog(context.Context, string) error { return nil }

func (f *fakeController) UpdatePodResources(_ context.Context, podID string, res controller.PodResources) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pods[podID]; !ok {
		return fmt.Errorf("pod %s: %w", podID, errdefs.ErrNotFound)
	}
	if err := f.resizeErr; err != nil {
		if f.resizeFailures > 0 {
			if f.resizeFailures--; f.resizeFailures == 0 {
				f.resizeErr = nil
			}
		}
		return err
	}
	if f.resized == nil {
		f.resized = map[string][]controller.PodResources{}
	}
	f.resized[podID] = append(f.resized[podID], res)
	return nil
}

// resizes are the resources a pod was given, in order.
func (f *fakeController) resizes(podID string) []controller.PodResources {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.resized[podID])
}

func (f *fakeController) CheckpointContainer(context.Context, string, string, bool) error {
	return fmt.Errorf("fake controller: %w", errdefs.ErrFailedPrecondition)
}

// PortForward of the fake answers "port <n>" and closes.
func (f *fakeController) PortForward(_ context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	f.mu.Lock()
	f.forwarded = append(f.forwarded, port)
	f.mu.Unlock()
	_, err := fmt.Fprintf(stream, "port %d of %s\n", port, podID)
	return err
}

// fakeNetwork counts setups and teardowns per pod.
type fakeNetwork struct {
	mu          sync.Mutex
	setups      map[string]int
	teardowns   map[string]int
	setupErr    error
	teardownErr error
	notReady    error
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
	if n.teardownErr != nil {
		return n.teardownErr
	}
	n.teardowns[podID]++
	return nil
}

func (n *fakeNetwork) count(m map[string]int, id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return m[id]
}

var errFake = errors.New("fake failure")
