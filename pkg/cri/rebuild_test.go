package cri

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// lockedBuffer collects a runtime's logs (its goroutines log at once).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loseStateFile "kills" the fixture's runtime, overwrites cri.db with
// garbage and opens the store again, as a restarted aurae-cri does: the
// file is moved aside and the store starts empty.
func (f *crashFixture) loseStateFile(t *testing.T) {
	t.Helper()
	f.rt.Close()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "cri.db"), bytes.Repeat([]byte("garbage!"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if st.MovedAside() == "" || !st.Fresh() || len(st.Sandboxes()) != 0 {
		t.Fatalf("the garbage file was read: moved aside %q, %d pods", st.MovedAside(), len(st.Sandboxes()))
	}
	f.store = st
}

// reopen "kills" the fixture's runtime and opens its store again.
func (f *crashFixture) reopen(t *testing.T) {
	t.Helper()
	f.rt.Close()
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := sandbox.Open(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f.store = st
}

// restartLogged is restart with the runtime's logs kept.
func (f *crashFixture) restartLogged(t *testing.T) (*Runtime, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	rt, err := NewRuntime(Config{
		RootDir: f.dir, Controllers: map[string]controller.Controller{"": f.ctrl}, Images: f.images,
		Network: f.net, Store: f.store, MonitorInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	f.rt = rt
	return rt, logs
}

// plantRecord writes a record file of kind ("pods" or "containers") named
// name with content b, as a hostile or garbled one.
func (f *crashFixture) plantRecord(t *testing.T, kind, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(f.dir, "records", kind, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRebuildFromRecordsAfterUnreadableStateFile: cri.db is overwritten
// with garbage between two runtimes. The restarted one rebuilds every pod
// and container from the on-disk records, with their metadata, labels,
// annotations, log path and image; the controller's answers give the
// states (a pod it lost is NOTREADY, a running container it lost EXITED,
// a container that exited before keeps its exit code); garbled and
// hostile records are refused with a log line. Stop and remove of every
// pod then succeed: CNI DEL runs for each networked pod, and nothing is
// left (controller, rootfs, records).
func TestRebuildFromRecordsAfterUnreadableStateFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	f := newCrashFixture(t)
	ctx := t.Context()
	type made struct {
		pod   string
		cfg   *runtimeapi.PodSandboxConfig
		ctrs  map[string]*runtimeapi.ContainerConfig
		state map[string]runtimeapi.ContainerState
	}
	var pods []made
	for _, name := range []string{"web", "lost", "host"} {
		cfg := podConfig(name)
		cfg.Labels = map[string]string{"app": name, "io.kubernetes.pod.name": name}
		cfg.Annotations = map[string]string{"note": "pod " + name, "big": strings.Repeat("x", 4096)}
		cfg.LogDirectory = filepath.Join(t.TempDir(), "logs", name)
		cfg.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}}
		if name == "host" {
			cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}}
			cfg.PortMappings = nil
		}
		resp, err := f.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		m := made{pod: resp.GetPodSandboxId(), cfg: cfg, ctrs: map[string]*runtimeapi.ContainerConfig{}, state: map[string]runtimeapi.ContainerState{}}
		for _, cname := range []string{"app", "done", "idle"} {
			cc := appContainer(cname)
			cc.Labels = map[string]string{"c": cname}
			cc.Annotations = map[string]string{"ca": "container " + cname}
			cc.LogPath = cname + "/0.log"
			resp, err := f.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: m.pod, Config: cc, SandboxConfig: cfg})
			if err != nil {
				t.Fatal(err)
			}
			id := resp.GetContainerId()
			t.Cleanup(func() { _ = unmountRootfs(f.rt.rootfsDir(id)) })
			m.ctrs[id] = cc
			m.state[id] = runtimeapi.ContainerState_CONTAINER_CREATED
			if cname == "idle" {
				continue
			}
			if _, err := f.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
				t.Fatal(err)
			}
			m.state[id] = runtimeapi.ContainerState_CONTAINER_RUNNING
			if cname == "done" {
				f.ctrl.exit(id, 3, "")
				waitState(t, f.rt, id, runtimeapi.ContainerState_CONTAINER_EXITED)
				m.state[id] = runtimeapi.ContainerState_CONTAINER_EXITED
			}
		}
		pods = append(pods, m)
	}
	// The controller loses one pod (and its containers) meanwhile.
	lost := pods[1]
	f.ctrl.mu.Lock()
	delete(f.ctrl.pods, lost.pod)
	for id := range lost.ctrs {
		delete(f.ctrl.containers, id)
	}
	f.ctrl.mu.Unlock()
	for id, st := range lost.state {
		if st == runtimeapi.ContainerState_CONTAINER_RUNNING {
			lost.state[id] = runtimeapi.ContainerState_CONTAINER_EXITED
		}
	}

	f.loseStateFile(t)
	// Garbled and hostile records beside the good ones.
	hostile := strings.Repeat("e", 64)
	refused := []string{
		f.plantRecord(t, "pods", strings.Repeat("a", 64)+".json", []byte("{torn")),
		f.plantRecord(t, "pods", "not-an-id.json", []byte("{}")),
		f.plantRecord(t, "containers", strings.Repeat("b", 64)+".json", []byte(`{"version":1,"kind":"container","object":{"id":"`+strings.Repeat("b", 64)+`","sandbox_id":"../../etc","name":"x","spec":"e30="},"config":{}}`)),
		f.plantRecord(t, "pods", hostile+".json", hostilePodRecord(t, hostile)),
	}
	link := filepath.Join(f.dir, "records", "pods", strings.Repeat("c", 64)+".json")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(f.dir, "records", "pods", strings.Repeat("d", 64)+".json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	refused = append(refused, link, fifo)

	rt, logs := f.restartLogged(t)
	out := logs.String()
	if !strings.Contains(out, "state rebuilt from on-disk records") || !strings.Contains(out, "pods=3 containers=9") {
		t.Errorf("no summary line with the counts:\n%s", out)
	}
	if n := strings.Count(out, "rebuilt from its on-disk record"); n != 12 {
		t.Errorf("%d lines for rebuilt objects, want 12", n)
	}
	for _, p := range refused {
		if !strings.Contains(out, filepath.Base(p)) && !strings.Contains(out, strings.TrimSuffix(filepath.Base(p), ".json")) {
			t.Errorf("no log line refusing %s:\n%s", p, out)
		}
	}

	for _, why := range []string{`pod id \"../../etc\"`, `netns path \"/proc/1/ns/net\" is not the pod's`, "not a regular file"} {
		if !strings.Contains(out, why) {
			t.Errorf("no refusal saying %s:\n%s", why, out)
		}
	}
	listed, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed.GetItems()) != len(pods) {
		t.Fatalf("pods after the rebuild: %v", listed.GetItems())
	}
	for _, m := range pods {
		st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: m.pod})
		if err != nil {
			t.Fatalf("pod %s after the rebuild: %v", m.cfg.GetMetadata().GetName(), err)
		}
		s := st.GetStatus()
		want := runtimeapi.PodSandboxState_SANDBOX_READY
		if m.pod == lost.pod {
			want = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
		}
		if s.GetState() != want || !proto.Equal(s.GetMetadata(), m.cfg.GetMetadata()) ||
			s.GetLabels()["app"] != m.cfg.GetLabels()["app"] || s.GetAnnotations()["note"] != m.cfg.GetAnnotations()["note"] ||
			len(s.GetAnnotations()["big"]) != 4096 {
			t.Errorf("pod %s after the rebuild: %v", m.cfg.GetMetadata().GetName(), s)
		}
		if m.cfg.GetPortMappings() != nil && s.GetNetwork().GetIp() != "10.0.0.2" {
			t.Errorf("pod %s lost its IP: %v", m.cfg.GetMetadata().GetName(), s.GetNetwork())
		}
		for id, cc := range m.ctrs {
			resp, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if err != nil {
				t.Fatalf("container %s after the rebuild: %v", id, err)
			}
			cs := resp.GetStatus()
			if cs.GetState() != m.state[id] || !proto.Equal(cs.GetMetadata(), cc.GetMetadata()) || cs.GetLabels()["c"] != cc.GetLabels()["c"] ||
				cs.GetAnnotations()["ca"] != cc.GetAnnotations()["ca"] || cs.GetImage().GetImage() != "example.com/app:1" ||
				cs.GetLogPath() != filepath.Join(m.cfg.GetLogDirectory(), cc.GetLogPath()) {
				t.Errorf("container %s of %s after the rebuild: %v, want %v", cc.GetMetadata().GetName(), m.cfg.GetMetadata().GetName(), cs, m.state[id])
			}
			if cc.GetMetadata().GetName() == "done" && cs.GetExitCode() != 3 {
				t.Errorf("exit code %d after the rebuild, want 3", cs.GetExitCode())
			}
			if m.state[id] == runtimeapi.ContainerState_CONTAINER_RUNNING && cs.GetStartedAt() == 0 {
				t.Errorf("running container without its start time: %v", cs)
			}
		}
	}
	ctrs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(ctrs.GetContainers()) != 9 {
		t.Fatalf("containers after the rebuild: %d %v", len(ctrs.GetContainers()), err)
	}
	// The names are held again: the kubelet's same request gets the pod.
	resp, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pods[0].cfg})
	if err != nil || resp.GetPodSandboxId() != pods[0].pod {
		t.Fatalf("RunPodSandbox of a rebuilt pod: %v %v", resp, err)
	}

	// A restart on the rebuilt file keeps all and drops the refused
	// records.
	f.reopen(t)
	rt, _ = f.restartLogged(t)
	if got, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(got.GetContainers()) != 9 {
		t.Fatalf("containers after a second restart: %v %v", got, err)
	}
	for _, p := range refused {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("refused record %s left after a normal start: %v", p, err)
		}
	}

	for _, m := range pods {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: m.pod}); err != nil {
			t.Fatalf("stop a rebuilt pod: %v", err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: m.pod}); err != nil {
			t.Fatalf("remove a rebuilt pod: %v", err)
		}
		if m.cfg.GetPortMappings() != nil && f.net.count(f.net.teardowns, m.pod) == 0 {
			t.Errorf("no CNI DEL for pod %s", m.cfg.GetMetadata().GetName())
		}
		for id := range m.ctrs {
			if _, ok := f.images.Rootfs(id); ok || mounted(t, rt.rootfsDir(id)) {
				t.Errorf("rootfs of %s left", id)
			}
		}
	}
	f.ctrl.mu.Lock()
	left := len(f.ctrl.pods) + len(f.ctrl.containers)
	f.ctrl.mu.Unlock()
	if left != 0 {
		t.Errorf("%d pods and containers left in the controller", left)
	}
	f.store.Flush()
	for _, kind := range []string{"pods", "containers"} {
		if ents, _ := os.ReadDir(filepath.Join(f.dir, "records", kind)); len(ents) != 0 {
			t.Errorf("records left in %s: %v", kind, ents)
		}
	}
	if n := len(f.store.Sandboxes()) + len(f.store.Containers()); n != 0 {
		t.Errorf("%d objects left in the store", n)
	}
}

// hostilePodRecord is a well-formed pod record whose netns path is the
// node's: CNI DEL there would tear down the host's interface.
func hostilePodRecord(t *testing.T, id string) []byte {
	t.Helper()
	cfg := podConfig("evil")
	sb := sandbox.Sandbox{ID: id, Name: sandboxName(cfg.GetMetadata()), CreatedAt: time.Now(), Status: sandbox.SandboxStatus{
		State: runtimeapi.PodSandboxState_SANDBOX_READY, NetNSPath: "/proc/1/ns/net", NetworkUp: true}}
	o, err := json.Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	c, err := protojson.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"version": 1, "kind": "sandbox", "object": json.RawMessage(o), "config": json.RawMessage(c)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitState waits until the runtime reports the container in state.
func waitState(t *testing.T, rt *Runtime, id string, state runtimeapi.ContainerState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := rt.ContainerStatus(t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err == nil && resp.GetStatus().GetState() == state {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("container %s never %v", id, state)
}
