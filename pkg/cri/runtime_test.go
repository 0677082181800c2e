package cri

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

type fixture struct {
	// monitor is the safety-net poll's interval (10 ms unless set before
	// runtime is called).
	monitor time.Duration
	rt      *Runtime
	ctrl    *fakeController
	net     *fakeNetwork
	store   *sandbox.Store
	dir     string
	// metrics, when set before runtime is called, is the Runtime's.
	metrics *metrics.CRI
	// cgroupDriver, when set before runtime is called, is the Runtime's.
	cgroupDriver string
}

func newFixture(t *testing.T, recover bool) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := sandbox.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f := &fixture{ctrl: newFakeController(), net: newFakeNetwork(), store: st, dir: dir}
	f.rt = f.runtime(t)
	if recover {
		if err := f.rt.Recover(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// runtime makes a Runtime on the fixture's store, controller and network:
// a second one on the same state is a restarted aurae-cri.
func (f *fixture) runtime(t *testing.T) *Runtime {
	rt, err := NewRuntime(Config{
		RootDir: f.dir, Controllers: map[string]controller.Controller{"": f.ctrl}, Images: image.NewFake(t.TempDir()),
		Network: f.net, Store: f.store, MonitorInterval: cmp.Or(f.monitor, 10*time.Millisecond),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: f.metrics, CgroupDriver: f.cgroupDriver,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func podConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "ns", Uid: "uid-" + name}}
}

func code(err error) codes.Code { return status.Code(errmap.ToGRPC(err)) }

func TestUnavailableUntilRecovered(t *testing.T) {
	f := newFixture(t, false)
	_, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if code(err) != codes.Unavailable {
		t.Fatalf("before recovery: %v", err)
	}
	st, err := f.rt.Status(t.Context(), &runtimeapi.StatusRequest{})
	if err != nil || st.GetStatus().GetConditions()[0].GetStatus() {
		t.Fatalf("RuntimeReady before recovery: %v %v", st, err)
	}
	if err := f.rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")}); err != nil {
		t.Fatal(err)
	}
}

func TestNetworkStatusReason(t *testing.T) {
	f := newFixture(t, true)
	f.net.notReady = errFake
	st, err := f.rt.Status(t.Context(), &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nc := st.GetStatus().GetConditions()[1]
	if nc.GetType() != runtimeapi.NetworkReady || nc.GetStatus() || nc.GetReason() == "" || nc.GetMessage() != errFake.Error() {
		t.Fatalf("network condition %v", nc)
	}
}

func TestRunPodSandboxRollsBackOnNetworkFailure(t *testing.T) {
	f := newFixture(t, true)
	f.net.setupErr = errFake
	_, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if err == nil {
		t.Fatal("RunPodSandbox succeeded without a network")
	}
	if len(f.ctrl.pods) != 0 || len(f.ctrl.removed) != 1 {
		t.Fatalf("pod not rolled back: running %v removed %v", f.ctrl.pods, f.ctrl.removed)
	}
	if len(f.store.Sandboxes()) != 0 {
		t.Fatal("failed pod kept in the store")
	}
	if _, held := f.store.NameHolder(sandboxName(podConfig("a").GetMetadata())); held {
		t.Fatal("failed pod's name still reserved")
	}
	f.net.setupErr = nil
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")}); err != nil {
		t.Fatalf("retry after the failure: %v", err)
	}
}

func TestStopTearsDownNetworkOnce(t *testing.T) {
	f := newFixture(t, true)
	resp, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetPodSandboxId()
	for range 3 {
		if _, err := f.rt.StopPodSandbox(t.Context(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.rt.RemovePodSandbox(t.Context(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	if n := f.net.count(f.net.teardowns, id); n != 1 {
		t.Fatalf("network torn down %d times, want once", n)
	}
	if len(f.ctrl.pods) != 0 {
		t.Fatal("removed pod still allocated")
	}
}

func TestRetriedRunPodSandboxGetsTheSamePod(t *testing.T) {
	f := newFixture(t, true)
	a, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if err != nil || b.GetPodSandboxId() != a.GetPodSandboxId() {
		t.Fatalf("retry: %v %v", b, err)
	}
	if n := f.net.count(f.net.setups, a.GetPodSandboxId()); n != 1 {
		t.Fatalf("network set up %d times", n)
	}
	// Once stopped, the name is held by a pod that is not ready: a new
	// attempt must use a new attempt number.
	if _, err := f.rt.StopPodSandbox(t.Context(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: a.GetPodSandboxId()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")})
	if code(err) != codes.AlreadyExists {
		t.Fatalf("reusing a stopped pod's name: %v", err)
	}
}

func TestRecoverReconcilesWithTheController(t *testing.T) {
	f := newFixture(t, true)
	kept, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("kept")})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("lost")})
	if err != nil {
		t.Fatal(err)
	}
	// While aurae-cri is down: the runtime loses one pod, and runs one
	// aurae-cri never recorded (another client's).
	f.ctrl.mu.Lock()
	delete(f.ctrl.pods, lost.GetPodSandboxId())
	f.ctrl.pods["stray"] = controller.PodSpec{ID: "stray"}
	f.ctrl.mu.Unlock()

	rt := f.runtime(t)
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	// No record says this aurae-cri made it: it is not ours to free (a
	// creation cut short leaves an intent: see intents_test.go).
	if _, ok := f.ctrl.pods["stray"]; !ok {
		t.Fatal("a pod aurae-cri did not make was removed")
	}
	st, err := rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: lost.GetPodSandboxId()})
	if err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("lost pod: %v %v", st.GetStatus(), err)
	}
	st, err = rt.PodSandboxStatus(t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: kept.GetPodSandboxId()})
	if err != nil || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || st.GetStatus().GetNetwork().GetIp() != "10.0.0.2" {
		t.Fatalf("kept pod: %v %v", st.GetStatus(), err)
	}
}

func TestMonitorRecordsExitsAndPublishes(t *testing.T) {
	f := newFixture(t, true)
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("m")})
	if err != nil {
		t.Fatal(err)
	}
	// A container as CreateContainer leaves it, without a real rootfs.
	c := &sandbox.Container{ID: "c1", SandboxID: pod.GetPodSandboxId(), Name: "c1_m", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c1"}},
		CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	if err := f.store.AddContainer(c); err != nil {
		t.Fatal(err)
	}
	events, cancel := f.rt.events.Subscribe()
	defer cancel()
	if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT {
		t.Fatalf("event %v", ev)
	}
	f.ctrl.exit("c1", 3, "")
	select {
	case ev := <-events:
		if ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT {
			t.Fatalf("event %v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the monitor did not notice the exit")
	}
	st, err := f.rt.ContainerStatus(context.Background(), &runtimeapi.ContainerStatusRequest{ContainerId: "c1"})
	if err != nil || st.GetStatus().GetExitCode() != 3 || st.GetStatus().GetReason() != "Error" {
		t.Fatalf("status %v %v", st.GetStatus(), err)
	}
	// Unknown ids: NotFound for reads, success for stop and remove.
	if _, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: "nope"}); code(err) != codes.NotFound {
		t.Fatalf("unknown container: %v", err)
	}
	if _, err := f.rt.StopContainer(t.Context(), &runtimeapi.StopContainerRequest{ContainerId: "nope"}); err != nil {
		t.Fatal(err)
	}
}

// TestExitBeforeStartRecorded: a container that ends before its
// StartContainer records it running (its exit event came first) is told
// started, then stopped, once each.
func TestExitBeforeStartRecorded(t *testing.T) {
	f := newFixture(t, true)
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("q")})
	if err != nil {
		t.Fatal(err)
	}
	c := &sandbox.Container{ID: "c1", SandboxID: pod.GetPodSandboxId(), Name: "c1_q", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c1"}},
		CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
	if err := f.store.AddContainer(c); err != nil {
		t.Fatal(err)
	}
	f.ctrl.mu.Lock()
	f.ctrl.afterStart = func(id string) {
		f.ctrl.mu.Lock()
		st := *f.ctrl.containers[id]
		f.ctrl.mu.Unlock()
		st.State, st.ExitCode, st.FinishedAt = controller.StateExited, 0, time.Now()
		f.rt.recordExit(id, pod.GetPodSandboxId(), &st)
	}
	f.ctrl.mu.Unlock()
	events, cancel := f.rt.events.Subscribe()
	defer cancel()
	if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: "c1"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []runtimeapi.ContainerEventType{runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT} {
		if ev := <-events; ev.GetContainerEventType() != want {
			t.Fatalf("event %v, want %v", ev.GetContainerEventType(), want)
		}
	}
	select {
	case ev := <-events:
		t.Fatalf("one event too many: %v", ev.GetContainerEventType())
	default:
	}
	st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: "c1"})
	if err != nil || st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetStatus().GetReason() != "Completed" {
		t.Fatalf("status %v %v", st.GetStatus(), err)
	}
}

// TestExitsFollowedFromEvents: with the safety-net poll an hour away, an
// exit reaches the CRI through the controller's events; one that happened
// while the event stream was lost is found by the resync that follows the
// resubscription.
func TestExitsFollowedFromEvents(t *testing.T) {
	f := &fixture{ctrl: newFakeController(), net: newFakeNetwork(), dir: t.TempDir(), monitor: time.Hour}
	st, err := sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f.store = st
	f.rt = f.runtime(t)
	if err := f.rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("ev")})
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string) {
		c := &sandbox.Container{ID: id, SandboxID: pod.GetPodSandboxId(), Name: id + "_ev", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: id}},
			CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
		if err := f.store.AddContainer(c); err != nil {
			t.Fatal(err)
		}
		if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
	}
	waitExit := func(id string, code int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			st, err := f.rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err == nil && st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
				if st.GetStatus().GetExitCode() != code || st.GetStatus().GetFinishedAt() < st.GetStatus().GetStartedAt() {
					t.Fatalf("status %v", st.GetStatus())
				}
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("the exit of %s was not recorded", id)
	}
	start("e1")
	f.ctrl.exit("e1", 7, "")
	waitExit("e1", 7)

	start("e2")
	f.ctrl.mu.Lock()
	f.ctrl.quiet = true
	f.ctrl.mu.Unlock()
	f.ctrl.exit("e2", 9, "") // no event: the stream is about to be lost
	f.ctrl.mu.Lock()
	f.ctrl.quiet = false
	f.ctrl.mu.Unlock()
	f.ctrl.dropEvents()
	waitExit("e2", 9)
}
