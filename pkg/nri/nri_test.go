package nri

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	api "github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/aurae-runtime/aurae-cri/test/nriplugin"
)

type fakeState struct {
	pods []sandbox.Sandbox
	ctrs []sandbox.Container
}

func (f *fakeState) Sandboxes() []sandbox.Sandbox    { return f.pods }
func (f *fakeState) Containers() []sandbox.Container { return f.ctrs }

type fakeRuntime struct {
	mu      sync.Mutex
	updated map[string]*specs.LinuxResources
}

func (f *fakeRuntime) SetContainerResources(_ context.Context, id string, res *specs.LinuxResources) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updated[id] = res
	return nil
}

func (f *fakeRuntime) EvictContainer(context.Context, string, string) error { return nil }

func pod(id, handler string) sandbox.Sandbox {
	return sandbox.Sandbox{ID: id, RuntimeHandler: handler, Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "p-" + id, Uid: "u", Namespace: "ns"},
	}, Status: sandbox.SandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
}

func ctr(id, podID string) sandbox.Container {
	return sandbox.Container{ID: id, SandboxID: podID, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "c-" + id},
	}, Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
}

// start runs an adaptation on a socket of the test's own, with a short
// request timeout, synchronized with state.
func start(t *testing.T, state *fakeState) (*NRI, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "nri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "nri.sock")
	n, err := New(Config{SocketPath: sock, PluginPath: filepath.Join(dir, "plugins"), PluginConfigPath: filepath.Join(dir, "conf"),
		RequestTimeout: 500 * time.Millisecond, RuntimeName: "test", RuntimeVersion: "0", VMHandlers: []string{"aurae-vm"}}, state)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(&fakeRuntime{updated: map[string]*specs.LinuxResources{}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Stop)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	return n, sock
}

func plug(t *testing.T, n *NRI, sock, name string, p *nriplugin.Plugin) *nriplugin.Plugin {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	want := n.Plugins() + 1
	if err := nriplugin.Start(ctx, sock, name, "10", p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	// Synchronized, the plugin is added to those called just after.
	for n.Plugins() < want {
		select {
		case <-ctx.Done():
			t.Fatalf("plugin %s not added: %v", name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return p
}

func TestEventsSyncAndAdjustment(t *testing.T) {
	state := &fakeState{pods: []sandbox.Sandbox{pod("old", "")}, ctrs: []sandbox.Container{ctr("oldc", "old")}}
	n, sock := start(t, state)
	p := plug(t, n, sock, "inject", &nriplugin.Plugin{
		Env:    map[string]string{"NRI_TEST": "yes"},
		Mounts: []*api.Mount{{Destination: "/nri", Type: "bind", Source: "/tmp", Options: []string{"rbind", "ro"}}},
	})
	pods, ctrs := p.Synchronized()
	if !slices.Equal(pods, []string{"old"}) || !slices.Equal(ctrs, []string{"oldc"}) {
		t.Errorf("synchronized with pods %v containers %v, want [old] [oldc]", pods, ctrs)
	}
	ctx := t.Context()
	sb, c := pod("p1", ""), ctr("c1", "p1")
	if err := n.RunPodSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Process: &specs.Process{Env: []string{"PATH=/bin"}}, Linux: &specs.Linux{}}
	adj, err := n.CreateContainer(ctx, sb, c, spec, -998)
	if err != nil {
		t.Fatal(err)
	}
	if adj == nil || !slices.Contains(adj.Env, "NRI_TEST=yes") || len(adj.Mounts) != 1 || adj.Mounts[0].Destination != "/nri" || adj.Mounts[0].Source != "/tmp" {
		t.Fatalf("adjustment %+v, want NRI_TEST=yes and /tmp at /nri", adj)
	}
	if adj.By != "NRI plugin 10-inject" {
		t.Errorf("adjustment by %q, want NRI plugin 10-inject", adj.By)
	}
	n.PostCreateContainer(ctx, sb, c)
	if err := n.StartContainer(ctx, sb, c); err != nil {
		t.Fatal(err)
	}
	n.PostStartContainer(ctx, sb, c)
	limit := int64(64 << 20)
	res, err := n.UpdateContainer(ctx, sb, c, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
	if err != nil || res.Memory == nil || *res.Memory.Limit != limit {
		t.Fatalf("UpdateContainer: %+v, %v", res, err)
	}
	n.PostUpdateContainer(ctx, sb, c)
	n.StopContainer(ctx, sb, c)
	n.RemoveContainer(ctx, sb, c)
	if err := n.StopPodSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	n.RemovePodSandbox(ctx, sb)
	var got []string
	for _, e := range p.Events() {
		got = append(got, e.Type)
		if e.ContainerID == "c1" && e.Name != "c-c1" {
			t.Errorf("%s: container name %q, want the CRI metadata's c-c1", e.Type, e.Name)
		}
	}
	want := []string{"RunPodSandbox", "CreateContainer", "PostCreateContainer", "StartContainer", "PostStartContainer",
		"UpdateContainer", "PostUpdateContainer", "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"}
	if !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

func TestRefusedAdjustmentsNamePluginAndField(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler string
		adjust  func(*api.ContainerAdjustment)
		kind    error
		field   string
	}{
		{"vm-host-path", "aurae-vm", func(a *api.ContainerAdjustment) {
			a.AddMount(&api.Mount{Destination: "/x", Type: "bind", Source: "/etc", Options: []string{"rbind"}})
		}, errdefs.ErrFailedPrecondition, "mounts[/x]"},
		{"proc-mount", "", func(a *api.ContainerAdjustment) {
			a.AddMount(&api.Mount{Destination: "/p", Type: "proc", Source: "proc"})
		}, errdefs.ErrInvalidArgument, "mounts[/p]"},
		{"oom-floor", "", func(a *api.ContainerAdjustment) { a.SetLinuxOomScoreAdj(api.Int(-1000).Get()) }, errdefs.ErrFailedPrecondition, "linux.oom_score_adj"},
		{"vm-device", "aurae-vm", func(a *api.ContainerAdjustment) {
			a.AddDevice(&api.LinuxDevice{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232})
		}, errdefs.ErrFailedPrecondition, "linux.devices[/dev/kvm]"},
		{"cri-annotation", "", func(a *api.ContainerAdjustment) { a.AddAnnotation("io.kubernetes.cri.sandbox-id", "x") },
			errdefs.ErrFailedPrecondition, "annotations[io.kubernetes.cri.sandbox-id]"},
		{"rlimit", "", func(a *api.ContainerAdjustment) { a.AddRlimit("RLIMIT_NOFILE", 10, 20) }, errdefs.ErrInvalidArgument, "rlimits[RLIMIT_NOFILE]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, sock := start(t, &fakeState{})
			plug(t, n, sock, "bad", &nriplugin.Plugin{Adjust: tc.adjust})
			sb := pod("p", tc.handler)
			_, err := n.CreateContainer(t.Context(), sb, ctr("c", "p"), &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}, -999)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("error %v, want %v", err, tc.kind)
			}
			for _, s := range []string{"10-bad", tc.field} {
				if !containsStr(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
			}
		})
	}
}

// TestHungPluginDoesNotBlock: a plugin that never answers RunPodSandbox
// is disconnected at the request timeout and the pod goes on.
func TestHungPluginDoesNotBlock(t *testing.T) {
	n, sock := start(t, &fakeState{})
	p := plug(t, n, sock, "hang", &nriplugin.Plugin{HangRunPodSandbox: true})
	if err := n.RunPodSandbox(t.Context(), pod("p", "")); err != nil {
		t.Fatalf("RunPodSandbox with a hung plugin: %v", err)
	}
	// The plugin sees its request end once the runtime dropped it (the
	// plugin side learns it asynchronously).
	select {
	case <-p.Hung:
	case <-time.After(30 * time.Second):
		t.Fatal("the hung plugin's request never ended: the runtime did not give up on it")
	}
	// The plugin is gone: the next pod does not wait for it.
	if err := n.RunPodSandbox(t.Context(), pod("q", "")); err != nil {
		t.Fatal(err)
	}
	if got := len(p.Events()); got != 1 {
		t.Errorf("the hung plugin saw %d events, want 1 (it was disconnected)", got)
	}
}

func containsStr(s, sub string) bool { return strings.Contains(s, sub) }
