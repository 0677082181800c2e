package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIRestartLosesNothing kills aurae-cri and the auraed it uses with
// SIGKILL while two pods run, and starts them again: every pod and container
// is there with its real state, the running container kept running, the one
// that exited meanwhile has its real exit code, and logs are complete.
func TestCRIRestartLosesNothing(t *testing.T) {
	a := startAuraed(t)
	c := startCRI(t, "--aurae-address", "unix://"+a.Socket)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})

	podA := c.podConfig(t, "keeper")
	idA, err := c.Runtime.RunPodSandbox(ctx, podA, "")
	if err != nil {
		t.Fatal(err)
	}
	keeper := runContainer(t, c, idA, podA, containerConfig("keeper", image, "sh", "-c", "echo before; sleep 2; echo after; exec sleep 300"))
	podB := c.podConfig(t, "quitter")
	idB, err := c.Runtime.RunPodSandbox(ctx, podB, "")
	if err != nil {
		t.Fatal(err)
	}
	quitter := runContainer(t, c, idB, podB, containerConfig("quitter", image, "sh", "-c", "sleep 2; echo bye; exit 7"))
	keeperSt := waitContainerState(t, c, keeper, runtimeapi.ContainerState_CONTAINER_RUNNING)

	c.Kill9()
	a.Kill9()
	time.Sleep(3 * time.Second) // the quitter exits while nobody watches
	restarted := time.Now()
	a.Restart(t)
	c.Restart(t)

	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil || len(pods) != 2 {
		t.Fatalf("pods after restart: %v %v", pods, err)
	}
	for _, p := range pods {
		if p.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %s is %v after restart", p.GetMetadata().GetName(), p.GetState())
		}
	}
	st, err := c.Runtime.ContainerStatus(ctx, keeper, false)
	if err != nil || st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || st.GetStatus().GetStartedAt() != keeperSt.GetStartedAt() {
		t.Fatalf("keeper after restart: %v %v", st.GetStatus(), err)
	}
	out, _, err := c.Runtime.ExecSync(ctx, keeper, []string{"echo", "alive"}, 10*time.Second)
	if err != nil || string(out) != "alive\n" {
		t.Fatalf("exec in the kept container: %q %v", out, err)
	}
	qst := waitContainerState(t, c, quitter, runtimeapi.ContainerState_CONTAINER_EXITED)
	if qst.GetExitCode() != 7 || qst.GetReason() != "Error" || qst.GetFinishedAt() == 0 {
		t.Fatalf("quitter after restart: %v", qst)
	}
	if qst.GetFinishedAt() > restarted.UnixNano() {
		t.Errorf("quitter's finish time %v is the restart's, not its real exit", time.Unix(0, qst.GetFinishedAt()))
	}
	if lines := waitLog(t, keeperSt.GetLogPath(), 2); !strings.Contains(strings.Join(lines, "\n"), "stdout F after") {
		t.Errorf("keeper log missing what it wrote while aurae-cri was down: %q", lines)
	}
	b, _ := os.ReadFile(qst.GetLogPath())
	if !strings.Contains(string(b), "stdout F bye") {
		t.Errorf("quitter log incomplete: %q", b)
	}
}

func TestCRIContainerEvents(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	events := make(chan *runtimeapi.ContainerEventResponse, 16)
	go func() { _ = c.Runtime.GetContainerEvents(ctx, events, nil) }()
	time.Sleep(200 * time.Millisecond) // let the stream start: it carries events from the call on
	pod := c.podConfig(t, "events")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	id := runContainer(t, c, podID, pod, containerConfig("brief", image, "true"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
	if err := c.Runtime.RemoveContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	want := []runtimeapi.ContainerEventType{
		runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT,
		runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT,
	}
	for _, w := range want {
		select {
		case ev := <-events:
			if ev.GetContainerId() != id || ev.GetContainerEventType() != w {
				t.Fatalf("event %v %s, want %v for %s", ev.GetContainerEventType(), ev.GetContainerId(), w, id)
			}
			if ev.GetPodSandboxStatus().GetId() != podID {
				t.Fatalf("event without its pod status: %v", ev)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no %v event", w)
		}
	}
}
