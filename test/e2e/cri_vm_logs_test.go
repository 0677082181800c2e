package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// criEntry is a line of a container's log as the kubelet reads it: the
// partial lines (tag P) joined up to the full one (tag F).
type criEntry struct {
	stream, text string
}

// readCRILog reads the CRI log files in order as the kubelet would, and
// fails on a line that is not in the CRI format.
func readCRILog(t *testing.T, paths ...string) []criEntry {
	t.Helper()
	var out []criEntry
	partial := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			t.Errorf("%s does not end with a whole line: ...%q", p, b[max(0, len(b)-80):])
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if l == "" {
				continue
			}
			m := criLogLine.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("%s: not a CRI log line: %.200q", p, l)
			}
			partial[m[3]] += m[5]
			if m[4] == "F" {
				out = append(out, criEntry{m[3], partial[m[3]]})
				partial[m[3]] = ""
			}
		}
	}
	return out
}

// waitLogHas waits for a line containing s in the log file at path.
func waitLogHas(t *testing.T, path, s string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(s)) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("log %s: no %q in %d bytes: ...%q", path, s, len(b), b[max(0, len(b)-300):])
}

// TestCRIVMPodLogs: a VM pod's container log is written on the host by
// aurae-cri from the guest's stream, in the CRI format the kubelet reads
// (crictl logs reads it), with the kubelet's rotation (rename, then
// ReopenContainerLog) honoured; kill -9 of aurae-cri (and its auraed)
// while the container writes loses no line and repeats none; the log dir
// is not shared into the VM.
func TestCRIVMPodLogs(t *testing.T) {
	requireVMImage(t)
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:vmlogs", testimage.Options{})
	pod := c.podConfig(t, "vmlogs")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "aurae-vm")
	if err != nil {
		t.Fatalf("run vm pod: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is done by now; c's own cleanup removes what is left.
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = c.Runtime.StopPodSandbox(cctx, podID)
		_ = c.Runtime.RemovePodSandbox(cctx, podID)
	})
	// Numbered lines until told to stop, a line conmon cuts in parts, one
	// on stderr.
	script := `long=$(head -c 20000 /dev/zero | tr '\0' x)
echo "long $long"
echo "to stderr" >&2
i=0
while [ ! -e /tmp/stop ]; do echo "n $i"; i=$((i+1)); sleep 0.05; done
echo "end $i"`
	ctr := runContainer(t, c, podID, pod, containerConfig("talker", image, "sh", "-c", script))
	st, err := c.Runtime.ContainerStatus(ctx, ctr, false)
	if err != nil {
		t.Fatal(err)
	}
	logPath := st.GetStatus().GetLogPath()
	waitLogHas(t, logPath, " n 3\n")

	// The kubelet's log dir is not in the VM: no mount of it, nothing of
	// it under the pod's shared dir.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (strings.HasPrefix(f[3], c.LogDir) || strings.HasPrefix(f[4], c.LogDir)) {
			t.Errorf("the log dir is mounted: %s", l)
		}
	}
	var fi os.FileInfo
	if fi, err = os.Lstat(logPath); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("log file %s: %v %v", logPath, fi, err)
	}

	// Rotation: the kubelet renames, then asks for a reopen.
	rotated := logPath + ".20260102-030405"
	if err := os.Rename(logPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.ReopenContainerLog(ctx, ctr); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	waitLogHas(t, logPath, " n ")

	// kill -9 of aurae-cri with its auraed while the container writes on.
	c.Kill9()
	time.Sleep(2 * time.Second)
	c.Restart(t)
	waitContainerState(t, c, ctr, runtimeapi.ContainerState_CONTAINER_RUNNING)
	before, _ := os.ReadFile(logPath)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		now, _ := os.ReadFile(logPath)
		if bytes.Count(now, []byte(" n ")) > bytes.Count(before, []byte(" n "))+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new lines after the restart; log ...%q", now[max(0, len(now)-300):])
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, _, err := c.Runtime.ExecSync(ctx, ctr, []string{"touch", "/tmp/stop"}, 60*time.Second); err != nil {
		t.Fatalf("exec: %v", err)
	}
	waitContainerState(t, c, ctr, runtimeapi.ContainerState_CONTAINER_EXITED)
	waitLogHas(t, logPath, " end ")

	// Every line once, in order, across the rotated and the current file.
	entries := readCRILog(t, rotated, logPath)
	// conmon reads stdout and stderr apart: the stderr line may come
	// between the parts of the long one.
	long, stderr, next := 0, 0, 0
	for _, e := range entries {
		switch {
		case e == criEntry{"stdout", "long " + strings.Repeat("x", 20000)}:
			long++
		case e == criEntry{"stderr", "to stderr"}:
			stderr++
		case e.stream != "stdout":
			t.Fatalf("entry %.100v on %s", e, e.stream)
		case strings.HasPrefix(e.text, "end "):
			if e.text != "end "+strconv.Itoa(next) {
				t.Errorf("%q after line %d", e.text, next-1)
			}
			next = -1
		case next < 0:
			t.Fatalf("line %.100q after the end", e.text)
		case e.text != fmt.Sprintf("n %d", next):
			t.Fatalf("line %.100q where n %d belongs: a line lost or written twice", e.text, next)
		default:
			next++
		}
	}
	if long != 1 || stderr != 1 || next != -1 {
		t.Fatalf("the long line %d times, the stderr one %d times, end seen %v", long, stderr, next == -1)
	}
	t.Logf("%d numbered lines, %d of them in the rotated file", len(entries)-3, len(readCRILog(t, rotated))-2)

	// crictl logs reads the current file as the kubelet does.
	crictl, err := filepath.Abs("../../bin/crictl")
	if err == nil {
		_, err = os.Stat(crictl)
	}
	if err != nil {
		t.Logf("crictl not built (make deps): not checked with it")
	} else {
		cmd := exec.CommandContext(ctx, crictl, "--runtime-endpoint", c.Endpoint, "--timeout", "60s", "logs", ctr)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("crictl logs: %v: %s", err, stderr.String())
		}
		var want strings.Builder
		for _, e := range readCRILog(t, logPath) {
			if e.stream == "stdout" {
				want.WriteString(e.text + "\n")
			}
		}
		if stdout.String() != want.String() || !strings.Contains(stdout.String(), "end ") {
			t.Errorf("crictl logs: %d bytes ...%q, want %d bytes", stdout.Len(), stdout.String()[max(0, stdout.Len()-100):], want.Len())
		}
	}

	// What the host writer said (reopen, resume after the restart, lost
	// streams): none of it an error.
	resumed := false
	for _, r := range c.Records() {
		if msg, _ := r["msg"].(string); strings.Contains(msg, "container log") {
			t.Logf("%s: %s offset=%v size=%v recorded=%v %v", r["level"], msg, r["offset"], r["size"], r["recorded"], r["error"])
			resumed = resumed || msg == "container log resumed"
			if r["level"] == "ERROR" {
				t.Errorf("log writer error: %v", r)
			}
		}
	}
	if !resumed {
		t.Error("the log writer was not resumed after the restart")
	}

	// Removing the container stops its writer and drops its record.
	if err := c.Runtime.RemoveContainer(ctx, ctr); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(c.StateDir, "vmpods", podID, "logs", ctr+".json")
	if _, err := os.Stat(rec); !os.IsNotExist(err) {
		t.Errorf("log position record left after RemoveContainer: %v", err)
	}
	if err := c.Runtime.StopPodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, podID); err != nil {
		t.Fatal(err)
	}
}
