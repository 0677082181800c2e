package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIRestartLargeAnnotations runs 25 pods with 200 KB of annotations
// each (Kubernetes allows 256 KiB a pod), kills aurae-cri (and its
// embedded auraed) with SIGKILL and starts it again: recovery pages
// through the pods instead of meeting a message limit, every pod is listed
// READY, and every one is removable.
func TestCRIRestartLargeAnnotations(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	blob := strings.Repeat("x", 200_000)
	const n = 25
	ids := map[string]bool{}
	for i := range n {
		cfg := c.podConfig(t, fmt.Sprintf("big-%02d", i))
		cfg.Annotations = map[string]string{"e2e.aurae.io/blob": blob, "e2e.aurae.io/index": strconv.Itoa(i)}
		id, err := c.Runtime.RunPodSandbox(ctx, cfg, "")
		if err != nil {
			t.Fatalf("run pod %d: %v", i, err)
		}
		ids[id] = true
	}
	c.Kill9()
	c.Restart(t)

	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatalf("list after restart: %v", err)
	}
	if len(pods) != n {
		t.Fatalf("%d pods after restart, want %d", len(pods), n)
	}
	for _, p := range pods {
		if !ids[p.GetId()] || p.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || len(p.GetAnnotations()["e2e.aurae.io/blob"]) != len(blob) {
			t.Errorf("pod %s after restart: state %v, known %v, blob %d bytes", p.GetId(), p.GetState(), ids[p.GetId()], len(p.GetAnnotations()["e2e.aurae.io/blob"]))
		}
	}
	for id := range ids {
		if err := c.Runtime.StopPodSandbox(ctx, id); err != nil {
			t.Fatalf("stop %s: %v", id, err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, id); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
	}
	if pods, err := c.Runtime.ListPodSandbox(ctx, nil); err != nil || len(pods) != 0 {
		t.Fatalf("after removal: %d pods, %v", len(pods), err)
	}
}

// ppid is the parent of pid, from /proc.
func ppid(t testing.TB, pid int) int {
	t.Helper()
	st, err := linux.Stat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.PPid
}

// TestCRIWedgedPod SIGSTOPs one container's process and its monitor (conmon)
// and leaves a StopContainer hanging on it: the other pods keep answering.
// List*, ContainerStatus and the stats calls return within seconds, and
// the exit of another container is seen.
func TestCRIWedgedPod(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})

	podW := c.podConfig(t, "wedged")
	idW, err := c.Runtime.RunPodSandbox(ctx, podW, "")
	if err != nil {
		t.Fatal(err)
	}
	wedged := runContainer(t, c, idW, podW, containerConfig("wedged", image, "sleep", "300"))
	podO := c.podConfig(t, "other")
	idO, err := c.Runtime.RunPodSandbox(ctx, podO, "")
	if err != nil {
		t.Fatal(err)
	}
	quitter := runContainer(t, c, idO, podO, containerConfig("quitter", image, "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 5"))
	waitContainerState(t, c, wedged, runtimeapi.ContainerState_CONTAINER_RUNNING)

	pid := containerPid(t, c, wedged)
	conmon := ppid(t, pid)
	stopped := []int{pid, conmon}
	for _, p := range stopped {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP %d: %v", p, err)
		}
	}
	cont := sync.OnceFunc(func() {
		for _, p := range stopped {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	})
	t.Cleanup(cont)
	// A StopContainer that cannot finish while the monitor is stopped.
	stopCtx, cancelStop := context.WithTimeout(ctx, 30*time.Second)
	defer cancelStop()
	go func() { _ = c.Runtime.StopContainer(stopCtx, wedged, 20) }()
	time.Sleep(500 * time.Millisecond)

	calls := func() { answersWithAWedgedPod(t, c, 3*time.Second, 2, []string{wedged, quitter}, idW) }
	calls()
	exitSeenWithAWedgedPod(t, c, quitter, 5, calls)
	cancelStop()
	cont()
	removePods(t, c, idW, idO)
}

// answersWithAWedgedPod checks that ListPodSandbox, ListContainers,
// ContainerStatus (of each of containers), PodSandboxStatus (of pod),
// ListContainerStats and ListPodSandboxStats (pods pods) each return
// within bound.
func answersWithAWedgedPod(t *testing.T, c *CRI, bound time.Duration, pods int, containers []string, pod string) {
	t.Helper()
	ctx := t.Context()
	check := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, bound+2*time.Second)
		defer cancel()
		start := time.Now()
		if err := f(cctx); err != nil {
			t.Fatalf("%s with a wedged pod: %v", what, err)
		}
		if took := time.Since(start); took > bound {
			t.Fatalf("%s took %v with a wedged pod", what, took)
		}
	}
	check("ListPodSandbox", func(ctx context.Context) error { _, err := c.Runtime.ListPodSandbox(ctx, nil); return err })
	check("ListContainers", func(ctx context.Context) error { _, err := c.Runtime.ListContainers(ctx, nil); return err })
	for _, id := range containers {
		check("ContainerStatus "+id, func(ctx context.Context) error { _, err := c.Runtime.ContainerStatus(ctx, id, false); return err })
	}
	check("PodSandboxStatus", func(ctx context.Context) error { _, err := c.Runtime.PodSandboxStatus(ctx, pod, false); return err })
	check("ListContainerStats", func(ctx context.Context) error {
		stats, err := c.Runtime.ListContainerStats(ctx, nil)
		if err == nil && len(stats) == 0 {
			err = fmt.Errorf("no stats")
		}
		return err
	})
	check("ListPodSandboxStats", func(ctx context.Context) error {
		stats, err := c.Runtime.ListPodSandboxStats(ctx, nil)
		if err == nil && len(stats) != pods {
			err = fmt.Errorf("%d pod stats, want %d", len(stats), pods)
		}
		return err
	})
}

// exitSeenWithAWedgedPod tells container id (which loops until /tmp/go
// exists) to exit, and waits (running calls between looks) until its
// status is EXITED with code.
func exitSeenWithAWedgedPod(t *testing.T, c *CRI, id string, code int32, calls func()) {
	t.Helper()
	ctx := t.Context()
	if _, _, err := c.Runtime.ExecSync(ctx, id, []string{"touch", "/tmp/go"}, 5*time.Second); err != nil {
		t.Fatalf("exec in the other pod: %v", err)
	}
	exited := time.Now()
	deadline := exited.Add(10 * time.Second)
	for {
		calls()
		st, err := c.Runtime.ContainerStatus(ctx, id, false)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			if st.GetStatus().GetExitCode() != code {
				t.Fatalf("%s exited with %d, want %d", id, st.GetStatus().GetExitCode(), code)
			}
			t.Logf("the other container's exit seen %v after it was told to exit", time.Since(exited))
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the exit of the other container is not seen while a pod is wedged")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removePods stops and removes pods, and checks that none is left.
func removePods(t *testing.T, c *CRI, pods ...string) {
	t.Helper()
	ctx := t.Context()
	for _, id := range pods {
		if err := c.Runtime.StopPodSandbox(ctx, id); err != nil {
			t.Fatalf("stop pod %s: %v", id, err)
		}
		if err := c.Runtime.RemovePodSandbox(ctx, id); err != nil {
			t.Fatalf("remove pod %s: %v", id, err)
		}
	}
	if left, err := c.Runtime.ListPodSandbox(ctx, nil); err != nil || len(left) != 0 {
		t.Fatalf("pods left after removal: %v %v", left, err)
	}
	if left, err := c.Runtime.ListContainers(ctx, nil); err != nil || len(left) != 0 {
		t.Fatalf("containers left after removal: %v %v", left, err)
	}
}

// slowBridge is a CNI bin dir whose bridge plugin, on ADD, sets the
// network up and then takes its time (touching marker first), as a slow
// plugin or a loaded node does.
func slowBridge(t *testing.T, marker string) string {
	t.Helper()
	dir := t.TempDir()
	ents, err := os.ReadDir("/opt/cni/bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != "bridge" {
			if err := os.Symlink(filepath.Join("/opt/cni/bin", e.Name()), filepath.Join(dir, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	script := `#!/bin/sh
[ "$CNI_COMMAND" = ADD ] || exec /opt/cni/bin/bridge "$@"
out=$(/opt/cni/bin/bridge "$@") || { rc=$?; echo "$out"; exit $rc; }
touch ` + marker + `
i=0
while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "$out"
`
	if err := os.WriteFile(filepath.Join(dir, "bridge"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ipamLeases are the addresses host-local holds in the CRI's network.
func (c *CRI) ipamLeases(t *testing.T) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(filepath.Dir(c.LogDir), "ipam"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), "10.") {
			out = append(out, d.Name())
		}
		return nil
	})
	return out
}

// TestCRISigtermDuringRunPodSandbox sends SIGTERM to aurae-cri while a
// RunPodSandbox waits on a slow CNI plugin (its network already set up):
// aurae-cri drains, and the call either completes or is undone — after a
// restart the pod is READY, or nothing of it is left (no pod, no address).
func TestCRISigtermDuringRunPodSandbox(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "adding")
	c := startCRI(t, "--cni-bin-dir", slowBridge(t, marker))
	ctx := t.Context()
	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := c.Runtime.RunPodSandbox(ctx, c.podConfig(t, "slow"), "")
		done <- result{id, err}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the CNI ADD never started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(c.ipamLeases(t)) != 1 {
		t.Fatalf("address leases during the ADD: %v", c.ipamLeases(t))
	}
	start := time.Now()
	if err := c.Stop(t); err != nil {
		t.Fatalf("aurae-cri exit after SIGTERM: %v; logs:\n%s", err, c.Logs())
	}
	t.Logf("aurae-cri stopped %v after SIGTERM", time.Since(start))
	r := <-done
	t.Logf("RunPodSandbox during the shutdown: %q %v", r.id, r.err)
	c.Restart(t)
	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.err == nil {
		if len(pods) != 1 || pods[0].GetId() != r.id || pods[0].GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("completed RunPodSandbox: pods after restart %v", pods)
		}
		return
	}
	if len(pods) != 0 {
		t.Fatalf("undone RunPodSandbox left pods: %v", pods)
	}
	if left := c.ipamLeases(t); len(left) != 0 {
		t.Fatalf("undone RunPodSandbox left address leases: %v", left)
	}
}
