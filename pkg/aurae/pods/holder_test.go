package pods

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/holder"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// withPtrace adds CAP_SYS_PTRACE to every capability set of a spec.
func withPtrace(sp *specs.Spec) {
	c := sp.Process.Capabilities
	c.Bounding = append(c.Bounding, "CAP_SYS_PTRACE")
	c.Effective = append(c.Effective, "CAP_SYS_PTRACE")
	c.Permitted = append(c.Permitted, "CAP_SYS_PTRACE")
}

// TestHolderHidesHost: in a pod that shares its pid namespace, PID 1 is the
// holder. A container with CAP_SYS_PTRACE finds nothing of the host through
// it: an empty root and cwd, an exe that is the sealed reaper (not auraed's
// binary), no fds, no environment, no capabilities, not dumpable. The holder
// still reaps the pod's orphans, and Free ends it.
//
// It runs with each binary a holder can be: auraed's own (the holder role)
// and cmd/aurae-holder, built for the test.
func TestHolderHidesHost(t *testing.T) {
	t.Run("auraed", func(t *testing.T) { testHolderHidesHost(t, "/proc/self/exe") })
	t.Run("aurae-holder", func(t *testing.T) { testHolderHidesHost(t, buildHolder(t)) })
}

// buildHolder builds cmd/aurae-holder into a dir of the test's.
func buildHolder(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is needed to build aurae-holder: %v", err)
	}
	out := filepath.Join(t.TempDir(), holder.BinaryName)
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/aurae-holder")
	cmd.Dir = filepath.Join("..", "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/aurae-holder: %v\n%s", err, b)
	}
	return out
}

func testHolderHidesHost(t *testing.T, bin string) {
	saved := holderBinary
	holderBinary = func() string { return bin }
	t.Cleanup(func() { holderBinary = saved })
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "ptrace"})
	p, err := e.svc.lookupPod("ptrace")
	if err != nil {
		t.Fatal(err)
	}
	holderPid := p.holder.Pid
	if holderPid == 0 {
		t.Fatal("a pod sharing its pid namespace has no holder")
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", holderPid)); err == nil {
		t.Logf("holder %d (%s): %s", holderPid, bin, grepLines(string(b), "Pss:"))
	}
	e.start("ptrace", e.container("c", spec(t, withPtrace, "sleep", "1000")))
	sh := func(script string) *podsv0.ExecSyncResponse {
		t.Helper()
		resp, err := e.exec("c", 10, "sh", "-c", script)
		if err != nil {
			t.Fatalf("exec %q: %v", script, err)
		}
		return resp
	}
	if got := string(sh("grep CapEff /proc/self/status").GetStdout()); strings.HasSuffix(strings.TrimSpace(got), "0000000000000000") {
		t.Fatalf("the container has no capabilities: %s", got)
	}
	if got := strings.Trim(string(sh("cat /proc/1/cmdline").GetStdout()), "\x00\n"); got != "aurae-pod-holder" {
		t.Fatalf("PID 1 of the pod is %q, not the holder", got)
	}
	// Nothing under its root or cwd; no host file through them.
	for _, dir := range []string{"/proc/1/root/", "/proc/1/cwd/"} {
		r := sh("ls -A " + dir)
		if len(bytes.TrimSpace(r.GetStdout())) != 0 {
			t.Errorf("ls %s: %q", dir, r.GetStdout())
		}
	}
	for _, f := range []string{"/proc/1/root/etc/passwd", "/proc/1/root/proc/self/status", "/proc/1/cwd/etc/passwd"} {
		if r := sh("cat " + f); r.GetExitCode() == 0 {
			t.Errorf("read %s: %q", f, r.GetStdout())
		}
	}
	if r := sh("echo x > /proc/1/root/x"); r.GetExitCode() == 0 {
		t.Error("wrote into the holder's root")
	}
	// exe: the sealed reaper, which cannot be written.
	if got := strings.TrimSpace(string(sh("readlink /proc/1/exe").GetStdout())); !strings.HasPrefix(got, "/memfd:aurae-pod-holder") {
		t.Errorf("/proc/1/exe -> %q", got)
	}
	if got := sh("cat /proc/1/exe").GetStdout(); !bytes.Equal(got, holder.ReaperELF()) {
		t.Errorf("/proc/1/exe gives %d bytes, not the %d of the reaper", len(got), len(holder.ReaperELF()))
	}
	if r := sh("echo x >> /proc/1/exe"); r.GetExitCode() == 0 {
		t.Error("appended to /proc/1/exe")
	}
	if got := strings.TrimSpace(string(sh("ls -A /proc/1/fd/; cat /proc/1/environ").GetStdout())); got != "" {
		t.Errorf("holder's fds and environment: %q", got)
	}
	status := string(sh("cat /proc/1/status").GetStdout())
	for _, c := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if line := grepLines(status, c+":"); !strings.HasSuffix(strings.TrimSpace(line), "0000000000000000") {
			t.Errorf("holder %s", line)
		}
	}
	if line := grepLines(status, "NoNewPrivs:"); !strings.HasSuffix(strings.TrimSpace(line), "1") {
		t.Errorf("holder %s", line)
	}
	// The host sees it: same pid, a mount namespace of its own.
	if self, _ := os.Readlink("/proc/self/ns/mnt"); self != "" {
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holderPid)); got == self {
			t.Error("holder in the host's mount namespace")
		}
	}

	// Orphans: the exec's sh exits, its sleep is reparented to the holder,
	// which must reap it when it exits.
	out := strings.TrimSpace(string(sh("sleep 0.3 & echo $!").GetStdout()))
	orphan, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("orphan pid %q", out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := sh(fmt.Sprintf("cat /proc/%d/stat 2>/dev/null", orphan)).GetStdout()
		if len(st) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped: %s", orphan, st)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if _, err := e.svc.Free(t.Context(), &podsv0.FreeRequest{PodId: "ptrace"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", holderPid)); !os.IsNotExist(err) {
		t.Errorf("holder %d still there after Free: %v", holderPid, err)
	}
	e.assertClean()
}

// TestNoHolderWithoutSharedPID: a pod that does not share its pid namespace
// keeps its namespaces by bind mounts alone: once Allocate returns, no holder
// process is left.
func TestNoHolderWithoutSharedPID(t *testing.T) {
	e := newEnv(t)
	paths := e.allocate(&podsv0.Pod{Id: "nopid", Namespaces: &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}})
	if paths.GetNetworkNamespacePath() == "" || paths.GetPidNamespacePath() != "" {
		t.Fatalf("paths: %v", paths)
	}
	p, err := e.svc.lookupPod("nopid")
	if err != nil {
		t.Fatal(err)
	}
	if p.holder.Pid != 0 {
		t.Errorf("holder recorded: %+v", p.holder)
	}
	// Its namespaces were made by a thread of auraed's, not a holder in
	// the pod's infra cgroup (made by the first container's monitor).
	if cgroup.Exists(paths.GetCgroupPath() + "/" + infraCgroup) {
		t.Errorf("infra cgroup made for a pod without a holder: %q", cgroupCmdlines(t, paths.GetCgroupPath()+"/"+infraCgroup))
	}
	if kids := holderChildren(t); len(kids) != 0 {
		t.Errorf("holder processes left: %v", kids)
	}
	// The pinned namespace outlives the holder.
	e.start("nopid", e.container("c", spec(t, nil, "sleep", "1000")))
	if got := e.mustExec("c", "readlink", "/proc/1/exe"); !strings.Contains(got, "sleep") && !strings.Contains(got, "busybox") {
		t.Errorf("PID 1 of a container with its own pid namespace: %q", got)
	}
}

// holderChildren lists this process's children that are holders.
func holderChildren(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || !strings.Contains(string(st), fmt.Sprintf("PPid:\t%d\n", os.Getpid())) {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(cmd), "aurae-pod-holder") {
			out = append(out, pid)
		}
	}
	return out
}
