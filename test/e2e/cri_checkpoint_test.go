package e2e

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// counterScript counts in the shell's memory, printing each value and
// keeping the last in a file of the rootfs.
const counterScript = `i=0; while true; do i=$((i+1)); echo "$i"; echo "$i" > /count; sleep 0.2; done`

// lastCount is the last number a counter container logged.
func lastCount(t *testing.T, logPath string) int {
	t.Helper()
	lines := waitLog(t, logPath, 1)
	last := lines[len(lines)-1]
	n, err := strconv.Atoi(last[strings.LastIndex(last, " ")+1:])
	if err != nil {
		t.Fatalf("log line %q: %v", last, err)
	}
	return n
}

// checkpointWorkDirsEmpty fails when aurae-cri left checkpoint work dirs.
func checkpointWorkDirsEmpty(t *testing.T, stateDir string) {
	t.Helper()
	_ = filepath.WalkDir(stateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || d.Name() != "checkpoints" {
			return nil
		}
		if ents, _ := os.ReadDir(p); len(ents) > 0 {
			t.Errorf("checkpoint work dirs left in %s: %v", p, ents)
		}
		return filepath.SkipDir
	})
}

func TestCRICheckpointRestore(t *testing.T) {
	if _, err := os.Stat("/opt/aurae/bin/criu"); err != nil {
		t.Fatalf("criu missing (make deps builds it): %v", err)
	}
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "ckpt")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	id := runContainer(t, c, podID, pod, containerConfig("counter", image, "sh", "-c", counterScript))
	st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitLog(t, st.GetLogPath(), 5)
	dir := t.TempDir()

	// A timeout too short for any dump: DeadlineExceeded, no archive, the
	// container still running and counting.
	short := filepath.Join(dir, "short.tar")
	shortCtx, cancel := ctxTimeout(t, 20*time.Millisecond)
	err = c.Runtime.CheckpointContainer(shortCtx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: short, Timeout: 1})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("checkpoint with a 20ms deadline: %v, want DeadlineExceeded", err)
	}
	before := lastCount(t, st.GetLogPath())
	waitFor(t, "the cut-short checkpoint to be cleaned up", func() bool {
		_, err := os.Lstat(short)
		return errors.Is(err, fs.ErrNotExist) && !hasEntries(c.StateDir, "checkpoints")
	})
	waitFor(t, "the counter to go on after the cut-short checkpoint", func() bool { return lastCount(t, st.GetLogPath()) > before })

	// A location that exists is not overwritten.
	taken := filepath.Join(dir, "taken")
	if err := os.WriteFile(taken, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = c.Runtime.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: taken, Timeout: 120})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("checkpoint onto an existing file: %v, want AlreadyExists", err)
	}
	if b, _ := os.ReadFile(taken); string(b) != "mine" {
		t.Fatalf("existing file changed to %q", b)
	}

	archive := filepath.Join(dir, "counter.tar")
	if perr := pods.ProbeCheckpoint(ctx, pods.PinnedCRIU); perr != nil {
		// CRIU cannot dump a process on this host's kernel (the probe says
		// why): the checkpoint is refused at once, the container counts on.
		t.Logf("CRIU cannot checkpoint here; checking the refusal: %v", perr)
		before = lastCount(t, st.GetLogPath())
		err := c.Runtime.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: archive, Timeout: 300})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CRIU cannot checkpoint on this host") {
			t.Fatalf("checkpoint where CRIU cannot dump: %v, want FailedPrecondition", err)
		}
		if _, err := os.Lstat(archive); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the refused checkpoint left %s: %v", archive, err)
		}
		checkpointWorkDirsEmpty(t, c.StateDir)
		waitFor(t, "the counter to go on after the refused checkpoint", func() bool { return lastCount(t, st.GetLogPath()) > before })
		return
	}
	before = lastCount(t, st.GetLogPath())
	t0 := time.Now()
	if err := c.Runtime.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: id, Location: archive, Timeout: 300}); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if fi, err := os.Stat(archive); err == nil {
		t.Logf("checkpoint took %v, archive %d bytes", time.Since(t0), fi.Size())
	}
	checkpointWorkDirsEmpty(t, c.StateDir)
	names := tarNames(t, archive)
	for _, want := range []string{"checkpoint/inventory.img", "config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files"} {
		if !names[want] {
			t.Fatalf("archive lacks %s: %v", want, names)
		}
	}
	// The checkpoint left it running.
	waitFor(t, "the counter to go on after the checkpoint", func() bool { return lastCount(t, st.GetLogPath()) > before+1 })

	if err := c.Runtime.StopContainer(ctx, id, 5); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemoveContainer(ctx, id); err != nil {
		t.Fatal(err)
	}

	// Restored into a new container (its own name and log): it goes on
	// from the counter in memory, not from zero.
	rcfg := containerConfig("counter-restored", archive, "sh", "-c", counterScript)
	t0 = time.Now()
	rid := runContainer(t, c, podID, pod, rcfg)
	t.Logf("create + restore took %v", time.Since(t0))
	rst := waitContainerState(t, c, rid, runtimeapi.ContainerState_CONTAINER_RUNNING)
	first := waitLog(t, rst.GetLogPath(), 2)[0]
	n, err := strconv.Atoi(first[strings.LastIndex(first, " ")+1:])
	if err != nil {
		t.Fatalf("restored log line %q: %v", first, err)
	}
	t.Logf("counter at %d before the checkpoint, restored counter goes on at %d", before, n)
	if n <= before {
		t.Fatalf("restored counter starts at %d, want more than %d (the count before the checkpoint)", n, before)
	}
	out, err := execSync(ctx, c, rid, []string{"cat", "/count"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := strconv.Atoi(strings.TrimSpace(string(out.GetStdout()))); got <= before {
		t.Fatalf("restored rootfs /count %q, want more than %d", out.GetStdout(), before)
	}
	checkpointWorkDirsEmpty(t, c.StateDir)
}

func TestCRIRestoreRefusesBadArchives(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	pod := c.podConfig(t, "badckpt")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	notTar := filepath.Join(dir, "not.tar")
	if err := os.WriteFile(notTar, []byte("not a tar at all, just some bytes of garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	escape := filepath.Join(dir, "escape.tar")
	writeTar(t, escape, map[string]string{"../../escaped": "x", "config.dump": `{"rootfsImageRef":"sha256:00"}`})
	link := filepath.Join(dir, "link.tar")
	writeTarSymlink(t, link, "checkpoint", "/etc")
	empty := filepath.Join(dir, "empty.tar")
	writeTar(t, empty, map[string]string{"config.dump": `{"rootfsImageRef":"sha256:00"}`})
	for _, archive := range []string{notTar, escape, link, empty, filepath.Join(dir, "missing.tar")} {
		_, err := c.Runtime.CreateContainer(ctx, podID, containerConfig("restored", archive, "true"), pod)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("create from %s: %v, want InvalidArgument", filepath.Base(archive), err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "..", "escaped")); err == nil {
		t.Error("an archive entry escaped the extraction dir")
	}
	checkpointWorkDirsEmpty(t, c.StateDir)
}

func hasEntries(root, name string) bool {
	found := false
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == name {
			if ents, _ := os.ReadDir(p); len(ents) > 0 {
				found = true
			}
			return filepath.SkipDir
		}
		return nil
	})
	return found
}

func tarNames(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names[strings.TrimSuffix(h.Name, "/")] = true
	}
}

func writeTar(t *testing.T, path string, files map[string]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func writeTarSymlink(t *testing.T, path, name, target string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	if err := tw.WriteHeader(&tar.Header{Name: name, Linkname: target, Typeflag: tar.TypeSymlink}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond for up to a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
