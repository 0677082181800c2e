package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// TestCRIMonitorIsPinnedConmon: with the lean conmon of `make conmon`
// installed, a native container's monitor (its init's parent) runs that
// binary, statically linked (no shared object mapped), the daemon says so
// in its log, and the monitor does its job: the container's output reaches
// its log in the CRI format and its exit code its status.
func TestCRIMonitorIsPinnedConmon(t *testing.T) {
	if _, err := os.Stat(pods.PinnedConmon); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no pinned conmon (make deps builds it with make conmon): %v", err)
		}
		t.Skipf("no pinned conmon (make conmon): %v", err)
	}
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "monitor")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	id := runContainer(t, c, podID, pod, containerConfig("mon", image, "sh", "-c", "echo out; echo err >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7"))
	waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)

	pid := containerPid(t, c, id)
	mon := ppid(t, pid)
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(mon), "exe"))
	if err != nil {
		t.Fatal(err)
	}
	if exe != pods.PinnedConmon {
		t.Fatalf("the monitor (pid %d) of container %s runs %s, want %s", mon, id, exe, pods.PinnedConmon)
	}
	maps, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(mon), "maps"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		if strings.Contains(l, ".so") {
			t.Errorf("the pinned conmon maps a shared object: %s", l)
		}
	}
	said := false
	for _, r := range c.Records() {
		if r["msg"] == "container monitor" && r["path"] == pods.PinnedConmon && r["source"] == "pinned" {
			said = true
		}
	}
	if !said {
		t.Error(`no "container monitor" log record naming the pinned conmon`)
	}

	lines := waitLog(t, filepath.Join(pod.GetLogDirectory(), "mon.log"), 2)
	got := map[string]string{}
	for _, l := range lines {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("not a CRI log line: %q", l)
		}
		got[m[3]] = m[5]
	}
	if got["stdout"] != "out" || got["stderr"] != "err" {
		t.Errorf("log lines %q, want stdout out and stderr err", lines)
	}

	// An exit code the monitor writes to its exit file.
	if _, stderr, err := c.Runtime.ExecSync(ctx, id, []string{"touch", "/tmp/go"}, 30*time.Second); err != nil {
		t.Fatalf("exec: %v %q", err, stderr)
	}
	exited := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
	if exited.GetExitCode() != 7 {
		t.Errorf("exit code %d, want 7", exited.GetExitCode())
	}
}
