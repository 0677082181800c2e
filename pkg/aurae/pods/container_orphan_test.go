package pods

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// TestRemoveContainerCgroupInSomeHierarchies: a runc killed while it made
// a container's cgroup may leave it in some v1 hierarchies only, with a
// process in it; the removal kills the process and removes every one.
func TestRemoveContainerCgroupInSomeHierarchies(t *testing.T) {
	if cgroup.Unified() {
		t.Skip("v1 hierarchies only")
	}
	e := newEnv(t)
	path := e.cgRoot + "/partial"
	dir := filepath.Join(cgroup.Root, "pids", path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeContainerCgroup(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the process in the cgroup was not killed")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s after the removal: %v", dir, err)
	}
	// A systemd scope is left to systemd; no path is nothing.
	if err := removeContainerCgroup(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
}
