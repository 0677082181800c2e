package cri

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// crashFixture runs calls that "crash" at a fault point: the call's
// goroutine stops there for good (nothing after it runs, no deferred undo
// either, as with SIGKILL), and a new Runtime on the same store, controller,
// network and images is the restarted aurae-cri.
type crashFixture struct {
	*fixture
	images *image.Fake
}

func newCrashFixture(t *testing.T) *crashFixture {
	t.Helper()
	f := &crashFixture{fixture: newFixture(t, false), images: image.NewFake(t.TempDir())}
	f.images.Add(image.Image{ID: "sha256:" + strings.Repeat("b", 64), RepoTags: []string{"example.com/app:1"}})
	f.rt = f.restart(t, nil)
	return f
}

// restart makes and recovers a Runtime whose Fault hook is fault.
func (f *crashFixture) restart(t *testing.T, fault func(string)) *Runtime {
	t.Helper()
	rt, err := NewRuntime(Config{
		RootDir: f.dir, Controllers: map[string]controller.Controller{"": f.ctrl}, Images: f.images,
		Network: f.net, Store: f.store, MonitorInterval: time.Hour, Fault: fault,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	return rt
}

// crashAt returns a Runtime that dies at point, and a channel closed when
// it did.
func (f *crashFixture) crashAt(t *testing.T, point string) (*Runtime, <-chan struct{}) {
	t.Helper()
	died := make(chan struct{})
	rt := f.restart(t, func(p string) {
		if p == point {
			close(died)
			select {} // this goroutine is dead: nothing after the side effect runs
		}
	})
	return rt, died
}

func waitDied(t *testing.T, died <-chan struct{}, point string) {
	t.Helper()
	select {
	case <-died:
	case <-time.After(10 * time.Second):
		t.Fatalf("the call never reached %s", point)
	}
}

// onlyIntent is the one intent left by the crash.
func (f *crashFixture) onlyIntent(t *testing.T) sandbox.Intent {
	t.Helper()
	in := f.store.Intents()
	if len(in) != 1 || in[0].State != sandbox.IntentCreating {
		t.Fatalf("intents after the crash: %+v", in)
	}
	return in[0]
}

func TestRecoverUndoesPodLeftCreating(t *testing.T) {
	for _, point := range []string{FaultPodCreated, FaultPodNetwork, FaultPodStarted} {
		t.Run(point, func(t *testing.T) {
			f := newCrashFixture(t)
			rt, died := f.crashAt(t, point)
			cfg := podConfig("crash")
			cfg.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}}
			cfg.Annotations = map[string]string{"big": strings.Repeat("x", 4096)}
			go func() { _, _ = rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg}) }()
			waitDied(t, died, point)
			in := f.onlyIntent(t)
			id := in.ID
			if in.Kind != sandbox.IntentSandbox || !in.ControllerPod {
				t.Fatalf("intent %+v", in)
			}
			networked := point != FaultPodCreated
			if networked && (!in.Network || in.NetNSPath == "" || in.Config.GetPortMappings()[0].GetHostPort() != 8080 ||
				in.Config.GetMetadata().GetUid() != "uid-crash" || len(in.Config.GetAnnotations()) != 0) {
				t.Fatalf("network intent %+v (config %v)", in, in.Config)
			}
			f.ctrl.mu.Lock()
			_, made := f.ctrl.pods[id]
			f.ctrl.mu.Unlock()
			if !made {
				t.Fatal("the controller has no pod: the crash came too early")
			}

			rt2 := f.restart(t, nil)
			f.ctrl.mu.Lock()
			_, left := f.ctrl.pods[id]
			f.ctrl.mu.Unlock()
			if left {
				t.Error("the controller's pod was not freed")
			}
			if got, want := f.net.count(f.net.teardowns, id), f.net.count(f.net.setups, id); got < want {
				t.Errorf("CNI DEL %d times after %d ADD", got, want)
			}
			if len(f.store.Intents()) != 0 {
				t.Errorf("intents after recovery: %+v", f.store.Intents())
			}
			pods, err := rt2.ListPodSandbox(t.Context(), &runtimeapi.ListPodSandboxRequest{})
			if err != nil || len(pods.GetItems()) != 0 {
				t.Fatalf("pods after recovery: %v %v", pods, err)
			}
			// The kubelet's retry gets a new pod under the same name.
			if _, err := rt2.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg}); err != nil {
				t.Fatalf("run again after recovery: %v", err)
			}
		})
	}
}

// TestFailedUndoKeepsTheIntent: a RunPodSandbox that fails and cannot undo
// its network leaves its intent, and the next start finishes the undo.
func TestFailedUndoKeepsTheIntent(t *testing.T) {
	f := newCrashFixture(t)
	f.ctrl.mu.Lock()
	f.ctrl.startErr = errFake
	f.ctrl.mu.Unlock()
	f.net.mu.Lock()
	f.net.teardownErr = errFake
	f.net.mu.Unlock()
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("a")}); err == nil {
		t.Fatal("RunPodSandbox succeeded with a failing StartPod")
	}
	in := f.onlyIntent(t)
	f.net.mu.Lock()
	f.net.teardownErr = nil
	f.net.mu.Unlock()
	f.restart(t, nil)
	if len(f.store.Intents()) != 0 || f.net.count(f.net.teardowns, in.ID) != 1 {
		t.Fatalf("after recovery: intents %+v, %d teardowns", f.store.Intents(), f.net.count(f.net.teardowns, in.ID))
	}
}

func (f *crashFixture) pod(t *testing.T, rt *Runtime, name string) string {
	t.Helper()
	resp, err := rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig(name)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetPodSandboxId()
}

func appContainer(name string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: "example.com/app:1"},
		Command:  []string{"/bin/true"},
	}
}

// mounted tells whether dir is a mount point.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func TestRecoverUndoesContainerLeftCreating(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	for _, point := range []string{FaultContainerRootfs, FaultContainerPrepared} {
		t.Run(point, func(t *testing.T) {
			f := newCrashFixture(t)
			rt, died := f.crashAt(t, point)
			podID := f.pod(t, rt, "p")
			go func() {
				_, _ = rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: appContainer("c")})
			}()
			waitDied(t, died, point)
			in := f.onlyIntent(t)
			id := in.ID
			t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(id)) })
			if in.Kind != sandbox.IntentContainer || in.PodID != podID || in.Snapshot != image.RootfsKey(id) ||
				in.Lease != "" || in.RootfsDir != f.rt.rootfsDir(id) || !in.ControllerContainer {
				t.Fatalf("intent %+v", in)
			}
			if _, ok := f.images.Rootfs(id); !ok || !mounted(t, in.RootfsDir) {
				t.Fatal("no rootfs: the crash came too early")
			}

			rt2 := f.restart(t, nil)
			if _, ok := f.images.Rootfs(id); ok {
				t.Error("the rootfs snapshot was not removed")
			}
			if mounted(t, in.RootfsDir) {
				t.Error("the rootfs is still mounted")
			}
			if _, err := os.Stat(in.RootfsDir); !os.IsNotExist(err) {
				t.Errorf("the rootfs dir is left: %v", err)
			}
			f.ctrl.mu.Lock()
			_, prepared := f.ctrl.prepared[id]
			f.ctrl.mu.Unlock()
			if prepared {
				t.Error("the controller's container was not removed")
			}
			if len(f.store.Intents()) != 0 {
				t.Errorf("intents after recovery: %+v", f.store.Intents())
			}
			ctrs, err := rt2.ListContainers(t.Context(), &runtimeapi.ListContainersRequest{})
			if err != nil || len(ctrs.GetContainers()) != 0 {
				t.Fatalf("containers after recovery: %v %v", ctrs, err)
			}
			pods, err := rt2.ListPodSandbox(t.Context(), &runtimeapi.ListPodSandboxRequest{})
			if err != nil || len(pods.GetItems()) != 1 || pods.GetItems()[0].GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Fatalf("the pod after recovery: %v %v", pods, err)
			}
			// The kubelet's retry makes the container again.
			if _, err := rt2.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: appContainer("c")}); err != nil {
				t.Fatalf("create again after recovery: %v", err)
			}
			if _, err := rt2.RemovePodSandbox(t.Context(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRecoverFinishesRemovals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	for _, point := range []string{FaultContainerRemoving, FaultPodRemoving} {
		t.Run(point, func(t *testing.T) {
			f := newCrashFixture(t)
			rt, died := f.crashAt(t, point)
			podID := f.pod(t, rt, "p")
			resp, err := rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: podID, Config: appContainer("c")})
			if err != nil {
				t.Fatal(err)
			}
			id := resp.GetContainerId()
			t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(id)) })
			go func() {
				if point == FaultContainerRemoving {
					_, _ = rt.RemoveContainer(t.Context(), &runtimeapi.RemoveContainerRequest{ContainerId: id})
				} else {
					_, _ = rt.RemovePodSandbox(t.Context(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
				}
			}()
			waitDied(t, died, point)

			rt2 := f.restart(t, nil)
			if _, ok := f.images.Rootfs(id); ok {
				t.Error("the rootfs snapshot was not removed")
			}
			if mounted(t, f.rt.rootfsDir(id)) {
				t.Error("the rootfs is still mounted")
			}
			ctrs, err := rt2.ListContainers(t.Context(), &runtimeapi.ListContainersRequest{})
			if err != nil || len(ctrs.GetContainers()) != 0 {
				t.Fatalf("containers after recovery: %v %v", ctrs, err)
			}
			pods, err := rt2.ListPodSandbox(t.Context(), &runtimeapi.ListPodSandboxRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if wantPods := map[string]int{FaultContainerRemoving: 1, FaultPodRemoving: 0}[point]; len(pods.GetItems()) != wantPods {
				t.Fatalf("pods after recovery: %v", pods.GetItems())
			}
			f.ctrl.mu.Lock()
			_, podLeft := f.ctrl.pods[podID]
			f.ctrl.mu.Unlock()
			if podLeft != (point == FaultContainerRemoving) {
				t.Errorf("controller pod left: %v", podLeft)
			}
		})
	}
}
