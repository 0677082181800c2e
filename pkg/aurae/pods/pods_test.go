package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

var criLine = regexp.MustCompile(`^(\S+) (stdout|stderr) (F|P) (.*)$`)

func TestContainerExitCodeAndLog(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "logs", Hostname: "logs"})
	c := e.container("printer", spec(t, func(s *specs.Spec) {
		v := 999 // a BestEffort pod's (one below auraed's own is refused: TestBadRequests)
		s.Process.OOMScoreAdj = &v
	}, "sh", "-c", "echo line one; echo line two; echo oops >&2; exit 3"))
	started := time.Now()
	e.start("logs", c)
	st := e.waitExited("printer", 10*time.Second)
	if st.GetExitCode() != 3 || st.GetReason() != "Error" {
		t.Fatalf("status %v, want exit code 3, reason Error", st)
	}
	if st.GetStartedAt() < started.UnixNano() || st.GetFinishedAt() < st.GetStartedAt() || st.GetCreatedAt() > st.GetStartedAt() {
		t.Errorf("times out of order: created %d started %d finished %d", st.GetCreatedAt(), st.GetStartedAt(), st.GetFinishedAt())
	}
	got := map[string]string{}
	for _, l := range readLines(t, c.GetLogPath()) {
		m := criLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line %q is not in CRI format", l)
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			t.Errorf("log line %q: time: %v", l, err)
		}
		if m[3] != "F" {
			t.Errorf("log line %q: want a full line", l)
		}
		got[m[4]] = m[2]
	}
	want := map[string]string{"line one": "stdout", "line two": "stdout", "oops": "stderr"}
	for line, stream := range want {
		if got[line] != stream {
			t.Errorf("log: %q on %q, want %q (log %v)", line, got[line], stream, got)
		}
	}
	// Exec in an exited container is refused.
	if _, err := e.exec("printer", 1, "true"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec in exited container: %v, want FailedPrecondition", err)
	}
	if _, err := e.svc.RemoveContainer(context.Background(), &podsv0.RemoveContainerRequest{ContainerId: "printer"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ContainerStatus(context.Background(), &podsv0.ContainerStatusRequest{ContainerId: "printer"}); status.Code(err) != codes.NotFound {
		t.Errorf("status after remove: %v, want NotFound", err)
	}
	if _, err := os.Stat(c.GetLogPath()); err != nil {
		t.Errorf("log removed with the container: %v", err)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "logs"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "logs"}); err != nil {
		t.Errorf("second free: %v", err)
	}
}

func TestExecSyncStatsAndStop(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "exec", Namespaces: &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}})
	// pid 1 of its own pid namespace: sleep ignores SIGTERM there.
	e.start("exec", e.container("sleeper", spec(t, nil, "sleep", "1000")))
	if got := e.mustExec("sleeper", "echo", "hi"); got != "hi\n" {
		t.Errorf("echo hi: %q", got)
	}
	if got := e.mustExec("sleeper", "sh", "-c", "echo $GREETING"); got != "hello\n" {
		t.Errorf("exec env: %q, want the container's", got)
	}
	resp, err := e.exec("sleeper", 10, "sh", "-c", "echo out; echo err >&2; exit 5")
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetExitCode() != 5 || string(resp.GetStdout()) != "out\n" || string(resp.GetStderr()) != "err\n" {
		t.Errorf("exec: %v", resp)
	}
	// An exec that outlives its timeout is killed.
	begin := time.Now()
	_, err = e.exec("sleeper", 1, "sleep", "60")
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("exec past its timeout: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("exec timeout took %s", d)
	}
	if procs := cgroupCmdlines(t, e.status("sleeper").GetCgroupPath()); len(procs) != 1 || procs[0] != "sleep 1000" {
		t.Errorf("processes in the container after the timed-out exec: %q", procs)
	}
	// Output is bounded at 16 MiB per stream.
	resp, err = e.exec("sleeper", 30, "dd", "if=/dev/zero", "bs=1M", "count=20")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetStdout()) != maxExecOutput || resp.GetExitCode() != 0 {
		t.Errorf("20 MiB of output: got %d bytes, exit %d", len(resp.GetStdout()), resp.GetExitCode())
	}
	// conmon lives in the pod's infra cgroup, not in auraed's.
	sc, err := e.svc.lookupContainer("sleeper")
	if err != nil {
		t.Fatal(err)
	}
	rec := sc.record()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", rec.ConmonPid))
	if err != nil {
		t.Fatal(err)
	}
	if want := ":/" + e.status("sleeper").GetCgroupPath()[:strings.LastIndex(e.status("sleeper").GetCgroupPath(), "/")] + "/" + infraCgroup + "\n"; !strings.Contains(string(b), want) {
		t.Errorf("conmon's cgroups:\n%s\nwant %q", b, want)
	}
	stats, err := e.svc.ContainerStats(context.Background(), &podsv0.ContainerStatsRequest{ContainerId: "sleeper"})
	if err != nil {
		t.Fatal(err)
	}
	if stats.GetCpuUsageNanos() == 0 || stats.GetMemoryWorkingSetBytes() == 0 || stats.GetTimestamp() == 0 {
		t.Errorf("stats: %v", stats)
	}
	// SIGTERM is ignored: SIGKILL after the timeout.
	begin = time.Now()
	if _, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: "sleeper", TimeoutSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < time.Second || d > 10*time.Second {
		t.Errorf("stop took %s, want the 1 s timeout and then SIGKILL", d)
	}
	st := e.status("sleeper")
	if st.GetState() != podsv0.ContainerState_CONTAINER_STATE_EXITED || st.GetExitCode() != 137 || st.GetReason() != "Error" {
		t.Errorf("after stop: %v", st)
	}
	// A container that ends on SIGTERM stops without waiting.
	polite := e.container("polite", spec(t, nil, "sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done"))
	e.start("exec", polite)
	waitLogLine(t, polite.GetLogPath(), "ready") // the trap is set
	begin = time.Now()
	if _, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: "polite", TimeoutSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("stop of a container that exits on SIGTERM took %s", d)
	}
	if st := e.status("polite"); st.GetExitCode() != 0 || st.GetReason() != "Completed" {
		t.Errorf("after SIGTERM: %v", st)
	}
	// Stop again and stop of an unknown container succeed.
	for _, id := range []string{"polite", "nobody"} {
		if _, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: id, TimeoutSeconds: 1}); err != nil {
			t.Errorf("stop %s: %v", id, err)
		}
	}
}

// cgroupCmdlines lists the command lines of the processes in a cgroup.
func cgroupCmdlines(t *testing.T, path string) []string {
	t.Helper()
	cg, err := cgroup.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := cg.Procs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")))
	}
	return out
}

func TestSharedNamespaces(t *testing.T) {
	e := newEnv(t)
	paths := e.allocate(&podsv0.Pod{Id: "shared", Hostname: "web-1", Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"}})
	for _, p := range []string{paths.GetNetworkNamespacePath(), paths.GetIpcNamespacePath(), paths.GetUtsNamespacePath(), paths.GetPidNamespacePath()} {
		if p == "" {
			t.Fatalf("a namespace path is missing: %v", paths)
		}
	}
	var netIno unix.Stat_t
	if err := unix.Stat(paths.GetNetworkNamespacePath(), &netIno); err != nil {
		t.Fatal(err)
	}
	e.start("shared", e.container("a", spec(t, nil, "sleep", "1000")))
	e.start("shared", e.container("b", spec(t, nil, "sleep", "1000")))
	host, _ := os.Readlink("/proc/self/ns/net")
	nets := map[string]bool{}
	for _, id := range []string{"a", "b"} {
		if got := e.mustExec(id, "hostname"); got != "web-1\n" {
			t.Errorf("%s: hostname %q", id, got)
		}
		if got := e.mustExec(id, "cat", "/etc/hostname"); got != "web-1\n" {
			t.Errorf("%s: /etc/hostname %q", id, got)
		}
		if got := e.mustExec(id, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"); got != "80\n" {
			t.Errorf("%s: sysctl %q", id, got)
		}
		net := strings.TrimSpace(e.mustExec(id, "readlink", "/proc/self/ns/net"))
		nets[net] = true
		if want := fmt.Sprintf("net:[%d]", netIno.Ino); net != want {
			t.Errorf("%s: net namespace %s, want the pinned %s", id, net, want)
		}
		if net == host {
			t.Errorf("%s: in the host's network namespace", id)
		}
	}
	if len(nets) != 1 {
		t.Errorf("containers in different network namespaces: %v", nets)
	}
	// The pod shares its pid namespace: a sees b's sleep.
	if got := e.mustExec("a", "ps"); strings.Count(got, "sleep 1000") != 2 {
		t.Errorf("ps in a shared pid namespace:\n%s", got)
	}
	resp, err := e.svc.ListPods(context.Background(), &podsv0.ListPodsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetPods()) != 1 || len(resp.GetPods()[0].GetContainers()) != 2 {
		t.Errorf("list: %v", resp)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "shared"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
	if _, err := os.Stat(filepath.Dir(paths.GetHostnamePath())); !os.IsNotExist(err) {
		t.Errorf("pod dir left: %v", err)
	}
}

func TestHostNetwork(t *testing.T) {
	e := newEnv(t)
	paths := e.allocate(&podsv0.Pod{Id: "hostnet", Hostname: "ignored", Namespaces: &podsv0.NamespaceOptions{
		Network: podsv0.NamespaceMode_NAMESPACE_MODE_NODE, Ipc: podsv0.NamespaceMode_NAMESPACE_MODE_NODE, Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}})
	if paths.GetNetworkNamespacePath() != "" || paths.GetUtsNamespacePath() != "" || paths.GetPidNamespacePath() != "" {
		t.Errorf("host network pod has namespaces: %v", paths)
	}
	e.start("hostnet", e.container("c", spec(t, nil, "sleep", "1000")))
	host, _ := os.Readlink("/proc/self/ns/net")
	if got := strings.TrimSpace(e.mustExec("c", "readlink", "/proc/self/ns/net")); got != host {
		t.Errorf("net namespace %s, want the host's %s", got, host)
	}
	hn, _ := os.Hostname()
	if got := e.mustExec("c", "hostname"); got != hn+"\n" {
		t.Errorf("hostname %q, want the host's %q", got, hn)
	}
}

func TestOOMKilled(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "oom"})
	limit := int64(16 << 20)
	e.start("oom", e.container("hog", spec(t, func(s *specs.Spec) {
		s.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit}}
	}, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")))
	st := e.waitExited("hog", 20*time.Second)
	if st.GetReason() != "OOMKilled" || st.GetExitCode() != 137 {
		t.Errorf("status %v, want OOMKilled, 137", st)
	}
	// conmon's own record of the OOM kill, which outlives the cgroup (a
	// systemd scope goes with its last process).
	if _, err := os.Stat(filepath.Join(e.svc.bundleDir("hog"), "oom")); err != nil {
		t.Errorf("conmon's oom file: %v", err)
	}
}

func TestRestartKeepsContainers(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "restart", Hostname: "restart"})
	e.start("restart", e.container("long", spec(t, nil, "sleep", "1000")))
	e.start("restart", e.container("short", spec(t, nil, "sh", "-c", "while [ ! -e /tmp/exit-now ]; do sleep 0.05; done; exit 7")))
	longPid := e.status("long").GetPid()
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	closedAt := time.Now()
	// short exits while nobody watches (the test rootfs is a plain
	// directory: its /tmp is the host's <rootfs>/tmp).
	if err := os.WriteFile(filepath.Join(e.rootfs, "tmp", "exit-now"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(e.stateDir, "exits", "short")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("short did not exit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// conmon's temp exit file of a known container (it renames it into
	// place as the container exits, maybe while the service starts) is
	// kept; the files of a container the service has no record of go.
	tmpExit := filepath.Join(e.stateDir, "exits", "long.W9QTZ3")
	stray := []string{filepath.Join(e.stateDir, "exits", "gone"), filepath.Join(e.stateDir, "exits", "gone.W9QTZ3")}
	for _, p := range append(stray, tmpExit) {
		if err := os.WriteFile(p, []byte("1"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.svc = e.newService()
	if _, err := os.Stat(tmpExit); err != nil {
		t.Errorf("temp exit file of a running container after the restart: %v", err)
	}
	_ = os.Remove(tmpExit)
	for _, p := range stray {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s of a container with no record after the restart: %v", p, err)
		}
	}
	long := e.status("long")
	if long.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING || long.GetPid() != longPid {
		t.Errorf("long after restart: %v", long)
	}
	if got := e.mustExec("long", "echo", "still here"); got != "still here\n" {
		t.Errorf("exec after restart: %q", got)
	}
	short := e.status("short")
	if short.GetState() != podsv0.ContainerState_CONTAINER_STATE_EXITED || short.GetExitCode() != 7 || short.GetReason() != "Error" {
		t.Errorf("short after restart: %v", short)
	}
	// The exit file's mtime is as coarse as the kernel's clock tick.
	if f := time.Unix(0, short.GetFinishedAt()); f.Before(closedAt.Add(-20*time.Millisecond)) || f.After(time.Now()) {
		t.Errorf("short finished at %s, want while the service was down (after %s)", f, closedAt)
	}
	// The re-adopted container is still watched.
	if _, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: "long"}); err != nil {
		t.Fatal(err)
	}
	if st := e.status("long"); st.GetExitCode() != 137 {
		t.Errorf("long after stop: %v", st)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "bad"})
	good := spec(t, nil, "sleep", "1000")
	code := func(err error) codes.Code { return status.Code(err) }
	start := func(pod string, c *podsv0.Container) error {
		_, err := e.svc.Start(ctx, &podsv0.StartRequest{PodId: pod, Container: c})
		return err
	}
	alloc := func(p *podsv0.Pod) error {
		_, err := e.svc.Allocate(ctx, &podsv0.AllocateRequest{Pod: p})
		return err
	}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"duplicate pod", alloc(&podsv0.Pod{Id: "bad"}), codes.AlreadyExists},
		{"pod id with slash", alloc(&podsv0.Pod{Id: "a/b"}), codes.InvalidArgument},
		{"pod id ..", alloc(&podsv0.Pod{Id: ".."}), codes.InvalidArgument},
		{"cgroup parent ..", alloc(&podsv0.Pod{Id: "p2", CgroupParent: "kubepods/../x"}), codes.InvalidArgument},
		{"host sysctl", alloc(&podsv0.Pod{Id: "p3", Sysctls: map[string]string{"kernel.panic": "1"}}), codes.InvalidArgument},
		{"net sysctl on host network", alloc(&podsv0.Pod{Id: "p4", Namespaces: &podsv0.NamespaceOptions{Network: podsv0.NamespaceMode_NAMESPACE_MODE_NODE}, Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}), codes.InvalidArgument},
		{"unknown sysctl", alloc(&podsv0.Pod{Id: "p5", Sysctls: map[string]string{"net.no.such.thing": "1"}}), codes.Internal},
		{"unknown pod", start("nopod", e.container("c1", good)), codes.NotFound},
		{"relative log path", start("bad", &podsv0.Container{Id: "c2", OciSpec: good, RootfsPath: e.rootfs, LogPath: "logs/c2.log"}), codes.InvalidArgument},
		{".. in rootfs", start("bad", &podsv0.Container{Id: "c3", OciSpec: good, RootfsPath: e.rootfs + "/../rootfs"}), codes.InvalidArgument},
		{".. in log path", start("bad", &podsv0.Container{Id: "c4", OciSpec: good, RootfsPath: e.rootfs, LogPath: e.logDir + "/../x.log"}), codes.InvalidArgument},
		{"relative bind source", start("bad", e.container("c5", spec(t, func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "data", Options: []string{"rbind"}})
		}, "true"))), codes.InvalidArgument},
		{"no spec", start("bad", &podsv0.Container{Id: "c6", RootfsPath: e.rootfs}), codes.InvalidArgument},
		{"bad spec", start("bad", &podsv0.Container{Id: "c7", RootfsPath: e.rootfs, OciSpec: []byte("{")}), codes.InvalidArgument},
		{"no such executable", start("bad", e.forPod("bad", e.container("c8", spec(t, nil, "/bin/nope")))), codes.Internal},
		{"incomplete spec (no pod namespaces, no cgroup)", start("bad", e.container("c9", good)), codes.InvalidArgument},
		{"mount_pod_files", start("bad", func() *podsv0.Container {
			c := e.forPod("bad", e.container("c10", good))
			c.MountPodFiles = true
			return c
		}()), codes.InvalidArgument},
		{"network namespace of another pod", start("bad", e.forPod("bad", e.container("c11", spec(t, func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"})
		}, "true")))), codes.InvalidArgument},
		{"pid namespace of a process not of the pod", start("bad", e.forPod("bad", e.container("c12", spec(t, func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"})
		}, "true")))), codes.InvalidArgument},
		{"cgroup outside the pod", start("bad", e.forPod("bad", e.container("c13", spec(t, func(s *specs.Spec) {
			s.Linux.CgroupsPath = "/aurae/elsewhere/c13"
		}, "true")))), codes.InvalidArgument},
		{"oomScoreAdj below auraed's", start("bad", e.forPod("bad", e.container("c14", spec(t, func(s *specs.Spec) {
			adj := -1000
			s.Process.OOMScoreAdj = &adj
		}, "true")))), codes.InvalidArgument},
		{"terminal that is not the request's tty", start("bad", func() *podsv0.Container {
			c := e.forPod("bad", e.container("c15", good))
			var sp specs.Spec
			if err := json.Unmarshal(c.OciSpec, &sp); err != nil {
				t.Fatal(err)
			}
			sp.Process.Terminal = true
			c.OciSpec, _ = json.Marshal(&sp)
			return c
		}()), codes.InvalidArgument},
		{"status of unknown", func() error {
			_, err := e.svc.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "nobody"})
			return err
		}(), codes.NotFound},
		{"exec in unknown", func() error { _, err := e.exec("nobody", 1, "true"); return err }(), codes.NotFound},
		{"stats of unknown", func() error {
			_, err := e.svc.ContainerStats(ctx, &podsv0.ContainerStatsRequest{ContainerId: "nobody"})
			return err
		}(), codes.NotFound},
		{"remove unknown", func() error {
			_, err := e.svc.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: "nobody"})
			return err
		}(), codes.OK},
		{"free unknown", func() error { _, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: "nopod"}); return err }(), codes.OK},
	} {
		if got := code(tc.err); got != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, tc.err, tc.want)
		}
	}
	// A refused container leaves no bundle, record or runc container; a
	// refused pod leaves no cgroup or directory.
	for _, id := range []string{"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"} {
		if _, err := os.Stat(e.svc.bundleDir(id)); !os.IsNotExist(err) {
			t.Errorf("bundle of refused %s: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(e.logDir, id+".log")); !os.IsNotExist(err) {
			t.Errorf("log of refused %s: %v", id, err)
		}
	}
	for _, id := range []string{"p2", "p3", "p4", "p5"} {
		if _, err := os.Stat(e.svc.podDir(id)); !os.IsNotExist(err) {
			t.Errorf("dir of refused pod %s: %v", id, err)
		}
		if cgroup.Exists(e.cgRoot + "/pods/" + id) {
			t.Errorf("cgroup of refused pod %s left", id)
		}
	}
	resp, _ := e.svc.ListPods(ctx, &podsv0.ListPodsRequest{})
	if len(resp.GetPods()) != 1 || len(resp.GetPods()[0].GetContainers()) != 0 {
		t.Errorf("list after refusals: %v", resp)
	}
	// The id of a refused container is free again; a duplicate is refused.
	e.start("bad", e.container("c8", good))
	if err := start("bad", e.forPod("bad", e.container("c8", good))); code(err) != codes.AlreadyExists {
		t.Errorf("duplicate container: %v, want AlreadyExists", err)
	}
}

func TestConcurrentPods(t *testing.T) {
	e := newEnv(t)
	const n = 4
	errs := make(chan error, n)
	hostname := spec(t, nil, "hostname")
	for i := 0; i < n; i++ {
		go func() {
			id := fmt.Sprintf("conc-%d", i)
			ctx := context.Background()
			if _, err := e.svc.Allocate(ctx, &podsv0.AllocateRequest{Pod: &podsv0.Pod{Id: id, Hostname: id}}); err != nil {
				errs <- err
				return
			}
			c := e.forPod(id, e.container(id+"-c", hostname))
			if _, err := e.svc.Start(ctx, &podsv0.StartRequest{PodId: id, Container: c}); err != nil {
				errs <- err
				return
			}
			_, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: id})
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	e.assertClean()
}

func TestRecoverDropsDeadPod(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	paths := e.allocate(&podsv0.Pod{Id: "dead"})
	e.start("dead", e.container("c", spec(t, nil, "sleep", "1000")))
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	// What a reboot does to a pod: its processes and cgroups are gone (its
	// state dir, on disk, is not).
	if err := killCgroup(ctx, paths.GetCgroupPath()); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("runc", "--root", filepath.Join(e.stateDir, "runc"), "delete", "--force", "c").CombinedOutput(); err != nil {
		t.Fatalf("runc delete: %v: %s", err, out)
	}
	if err := removeCgroupTree(paths.GetCgroupPath()); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	resp, err := e.svc.ListPods(ctx, &podsv0.ListPodsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetPods()) != 0 {
		t.Errorf("dead pod recovered: %v", resp)
	}
	if _, err := e.svc.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "c"}); status.Code(err) != codes.NotFound {
		t.Errorf("container of a dead pod: %v, want NotFound", err)
	}
	if _, err := os.Stat(filepath.Dir(paths.GetHostnamePath())); !os.IsNotExist(err) {
		t.Errorf("dead pod's dir left: %v", err)
	}
	if _, err := os.Stat(e.svc.bundleDir("c")); !os.IsNotExist(err) {
		t.Errorf("dead pod's container bundle left: %v", err)
	}
	e.assertClean()
}

// kubePodCgroup is a kubelet pod cgroup name (pod<uid>).
var kubePodCgroup = "pod" + strings.Repeat("c", 36)

func TestKubernetesLengthIDs(t *testing.T) {
	e := newEnv(t)
	podID := strings.Repeat("a1", 32)
	ctrID := strings.Repeat("b2", 32)
	e.allocate(&podsv0.Pod{Id: podID, CgroupParent: "kubepods/besteffort/" + kubePodCgroup})
	e.start(podID, e.container(ctrID, spec(t, nil, "sleep", "1000")))
	if got := e.mustExec(ctrID, "echo", "ok"); got != "ok\n" {
		t.Errorf("exec: %q", got)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: podID}); err != nil {
		t.Fatal(err)
	}
}

// waitLogLine waits until a CRI log has a full stdout line.
func waitLogLine(t *testing.T, path, line string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), " stdout F "+line+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s: no line %q in %q", path, line, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRecoverInterrupted: records as auraed leaves them when it dies in the
// middle of Allocate (the pod is undone) or between runc start and
// recording the container as running (it is found running).
func TestRecoverInterrupted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	half := e.allocate(&podsv0.Pod{Id: "half"})
	e.allocate(&podsv0.Pod{Id: "whole"})
	e.start("whole", e.container("c", spec(t, nil, "sleep", "1000")))
	p, err := e.svc.lookupPod("half")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.persistPod(p, true); err != nil {
		t.Fatal(err)
	}
	c, err := e.svc.lookupContainer("c")
	if err != nil {
		t.Fatal(err)
	}
	rec := c.record()
	rec.State, rec.StartedAt = stateCreated, 0
	if err := e.svc.store.put(bucketContainers, "c", rec); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	resp, err := e.svc.ListPods(ctx, &podsv0.ListPodsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetPods()) != 1 || resp.GetPods()[0].GetPod().GetId() != "whole" {
		t.Errorf("pods after recovery: %v", resp)
	}
	if cgroup.Exists(half.GetCgroupPath()) {
		t.Errorf("cgroup of the half-allocated pod left")
	}
	if _, err := os.Stat(filepath.Dir(half.GetHostnamePath())); !os.IsNotExist(err) {
		t.Errorf("dir of the half-allocated pod left: %v", err)
	}
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING || st.GetStartedAt() == 0 {
		t.Errorf("container recorded as created but running: %v", st)
	}
}

// TestStartCutBeforeRuntimeStart: auraed dies between the runtime's create
// and start of a container; after the restart the container is created,
// not started. The retried Start with the same spec starts it; one with
// another spec is AlreadyExists.
func TestStartCutBeforeRuntimeStart(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "cut"})
	req := &podsv0.StartRequest{PodId: "cut", Container: e.forPod("cut", e.container("c", spec(t, nil, "sleep", "1000")))}
	e.svc.beforeRuntimeStart = func(string) { runtime.Goexit() } // auraed "dies": nothing after runs
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.svc.Start(context.Background(), req)
	}()
	<-done
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_CREATED {
		t.Fatalf("a container cut before its start, after a restart: %v", st)
	}
	other := &podsv0.StartRequest{PodId: "cut", Container: e.forPod("cut", e.container("c", spec(t, nil, "sleep", "2000")))}
	if _, err := e.svc.Start(context.Background(), other); status.Code(err) != codes.AlreadyExists {
		t.Errorf("a Start of the created container with another spec: %v, want AlreadyExists", err)
	}
	resp, err := e.svc.Start(context.Background(), req)
	if err != nil {
		t.Fatalf("the retried Start: %v", err)
	}
	st := e.status("c")
	if st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING || st.GetPid() != resp.GetPid() || st.GetStartedAt() == 0 {
		t.Fatalf("after the retried Start: %v (pid answered %d)", st, resp.GetPid())
	}
	if got := e.mustExec("c", "echo", "started"); got != "started\n" {
		t.Errorf("exec in the finished container: %q", got)
	}
	if _, err := e.svc.Start(context.Background(), req); status.Code(err) != codes.AlreadyExists {
		t.Errorf("a Start of the running container: %v, want AlreadyExists", err)
	}
}

// TestStartCutBeforeMonitorRecorded: auraed dies after conmon created the
// container and before recording conmon's pid, and runc recorded nothing
// (as when runc create is cut short itself): the container's init waits in
// its cgroup, watched by a conmon no record names. After the restart the
// container is ended (a start cut short); its removal leaves no process,
// cgroup or runc container behind.
func TestStartCutBeforeMonitorRecorded(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "cut"})
	req := &podsv0.StartRequest{PodId: "cut", Container: e.forPod("cut", e.container("c", spec(t, nil, "sleep", "1000")))}
	e.svc.afterMonitor = func(id string) {
		// runc's record of the container, gone: runc delete finds nothing.
		if err := os.RemoveAll(filepath.Join(e.svc.runcRoot(), id)); err != nil {
			t.Error(err)
		}
		runtime.Goexit() // auraed "dies": nothing after runs
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e.svc.Start(context.Background(), req)
	}()
	<-done
	conmonPid, err := readPidFile(filepath.Join(e.svc.bundleDir("c"), "conmon.pid"))
	if err != nil || !isConmonOf(conmonPid, "c") {
		t.Fatalf("the cut Start left no conmon running (%d, %v): the test does not test", conmonPid, err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_EXITED {
		t.Fatalf("a container cut before its monitor was recorded, after a restart: %v", st)
	}
	cg := e.svc.ctrs["c"].record().CgroupPath
	if _, err := e.svc.RemoveContainer(context.Background(), &podsv0.RemoveContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	// Removed, the container leaves nothing while its pod lives on.
	if cgroup.Exists(cg) {
		t.Errorf("the removed container's cgroup %s is left", cg)
	}
	if isConmonOf(conmonPid, "c") {
		t.Errorf("the cut Start's conmon (pid %d) is left", conmonPid)
	}
	if procs := processesMentioning(e.svc.bundleDir("c")); len(procs) > 0 {
		t.Errorf("processes of the removed container left: %v", procs)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "cut"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestStartUndoneWhenMonitorNotPlaced: conmon's move into the pod's cgroup,
// made while runc creates the container, fails. The Start fails naming it
// and leaves no conmon, container, record or cgroup; the id can be
// started again.
func TestStartUndoneWhenMonitorNotPlaced(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "unplaced"})
	req := &podsv0.StartRequest{PodId: "unplaced", Container: e.forPod("unplaced", e.container("c", spec(t, nil, "sleep", "1000")))}
	conmonPid := 0
	e.svc.placeFault = func(pid int) error {
		conmonPid = pid
		return errors.New("injected placement failure")
	}
	_, err := e.svc.Start(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "place conmon") || !strings.Contains(err.Error(), "injected placement failure") {
		t.Fatalf("Start with conmon's move failing: %v, want the move's error", err)
	}
	if conmonPid == 0 {
		t.Fatal("the move was never made: the test does not test")
	}
	if isConmonOf(conmonPid, "c") {
		t.Errorf("conmon (pid %d) of the failed Start is left", conmonPid)
	}
	if procs := processesMentioning(e.svc.bundleDir("c")); len(procs) > 0 {
		t.Errorf("processes of the failed Start left: %v", procs)
	}
	if _, err := os.Stat(e.svc.bundleDir("c")); !os.IsNotExist(err) {
		t.Errorf("bundle of the failed Start: %v, want it gone", err)
	}
	e.svc.placeFault = nil
	if _, err := e.svc.Start(context.Background(), req); err != nil {
		t.Fatalf("Start again once the move works: %v", err)
	}
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("the container started again: %v", st)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "unplaced"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestStartWithoutRuntimeStart: auraed starts a container runc created by
// reading its exec FIFO itself, as `runc start` does: with a runtime whose
// start always fails, the container still starts, runc then reports it
// running, and stop and removal work as before. Without the FIFO start
// (another runtime), the failing start fails the Start.
func TestStartWithoutRuntimeStart(t *testing.T) {
	e := newEnv(t)
	wrapper := filepath.Join(t.TempDir(), "runc-without-start")
	script := "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = start ] && { echo 'start refused by the test' >&2; exit 99; }; done\nexec " + e.svc.runtime + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.svc.runtime = wrapper
	if !e.svc.fifoStart {
		t.Fatal("auraed does not start runc's containers from their exec fifo")
	}
	e.allocate(&podsv0.Pod{Id: "fifo"})
	if _, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "fifo", Container: e.forPod("fifo", e.container("c", spec(t, nil, "sleep", "1000")))}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("container: %v, want running", st)
	}
	out, err := exec.Command(wrapper, "--root", e.svc.runcRoot(), "state", "c").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"status": "running"`) {
		t.Errorf("runc state: %v: %s, want running", err, out)
	}
	if _, err := os.Lstat(filepath.Join(e.svc.runcRoot(), "c", execFifo)); !os.IsNotExist(err) {
		t.Errorf("exec fifo after the start: %v, want it gone", err)
	}
	// The start returns once the init's write end of the FIFO closed, in
	// its exec (as runc start does): its command line may still be runc's
	// for a moment.
	deadline := time.Now().Add(10 * time.Second)
	for procs := cgroupCmdlines(t, e.status("c").GetCgroupPath()); len(procs) != 1 || procs[0] != "sleep 1000"; procs = cgroupCmdlines(t, e.status("c").GetCgroupPath()) {
		if time.Now().After(deadline) {
			t.Fatalf("processes in the container: %q, want the workload", procs)
		}
		time.Sleep(10 * time.Millisecond)
	}

	e.svc.fifoStart = false
	_, err = e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "fifo", Container: e.forPod("fifo", e.container("d", spec(t, nil, "sleep", "1000")))})
	if err == nil || !strings.Contains(err.Error(), "start refused by the test") {
		t.Errorf("Start through the runtime's refusing start: %v, want its error", err)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "fifo"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestStartFromFifoInitGone: the init of a created container is killed
// before its start: the start fails at once (not at its timeout) and the
// container can be removed.
func TestStartFromFifoInitGone(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "gone"})
	e.svc.beforeRuntimeStart = func(id string) {
		b, err := exec.Command(e.svc.runtime, "--root", e.svc.runcRoot(), "state", id).Output()
		if err != nil {
			t.Errorf("runc state: %v", err)
			return
		}
		var st struct {
			Pid int `json:"pid"`
		}
		if err := json.Unmarshal(b, &st); err != nil || st.Pid <= 0 {
			t.Errorf("runc state %s: %v", b, err)
			return
		}
		_ = syscall.Kill(st.Pid, syscall.SIGKILL)
	}
	begin := time.Now()
	_, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "gone", Container: e.forPod("gone", e.container("c", spec(t, nil, "sleep", "1000")))})
	if err == nil {
		t.Fatal("Start of a container whose init was killed succeeded")
	}
	if !strings.Contains(err.Error(), "its init (pid") {
		t.Errorf("Start: %v, want it to say the init is gone", err)
	}
	if d := time.Since(begin); d > runtimeCallTimeout/2 {
		t.Errorf("Start took %s: it waited for its timeout", d)
	}
	e.svc.beforeRuntimeStart = nil
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "gone"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestStartCutBeforeRecord: auraed dies after making a container's bundle
// and before recording it. After the restart the stray bundle is gone and
// the retried Start starts the container (not AlreadyExists).
func TestStartCutBeforeRecord(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "cut"})
	req := &podsv0.StartRequest{PodId: "cut", Container: e.forPod("cut", e.container("c", spec(t, nil, "sleep", "1000")))}
	// What the cut Start left: its bundle with its spec, no record.
	if err := os.MkdirAll(e.svc.bundleDir("c"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.svc.bundleDir("c"), "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(context.Background(), req); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("Start over a bundle auraed does not know, before a restart: %v, want AlreadyExists", err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	if _, err := os.Stat(e.svc.bundleDir("c")); !os.IsNotExist(err) {
		t.Fatalf("the stray bundle after a restart: %v", err)
	}
	if _, err := e.svc.Start(context.Background(), req); err != nil {
		t.Fatalf("the retried Start: %v", err)
	}
	if st := e.status("c"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("after the retried Start: %v", st)
	}
}

// TestRemoveEmptiesTrash: a removed container's bundle, exit file and
// attach dir are gone from their places when RemoveContainer answers and
// from the trash they were moved to once the service has closed; what a
// crash left in the trash goes at the next start.
func TestRemoveEmptiesTrash(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "trash"})
	e.start("trash", e.container("c", spec(t, nil, "true")))
	e.waitExited("c", 30*time.Second)
	if _, err := e.svc.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{e.svc.bundleDir("c"), e.svc.exitFile("c"), e.svc.attachDir("c")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after RemoveContainer: %v", p, err)
		}
	}
	// What a crash between the move and the removal leaves.
	left := filepath.Join(e.svc.trashDir(), "old.containers.1")
	if err := os.MkdirAll(filepath.Join(left, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(e.svc.trashDir()); err != nil || len(ents) != 1 || ents[0].Name() != "old.containers.1" {
		t.Fatalf("trash after Close: %v (%v), want only what the crash left", ents, err)
	}
	e.svc = e.newService()
	if ents, err := os.ReadDir(e.svc.trashDir()); err != nil || len(ents) != 0 {
		t.Fatalf("trash after a restart: %v (%v), want it empty", ents, err)
	}
	if _, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: "trash"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestPIDTargetNamespace: a container whose spec joins the pid namespace
// of a running container of the same pod (/proc/<pid>/ns/pid, the CRI's
// pid mode TARGET) sees that container's processes; the same path in
// another pod is refused.
func TestPIDTargetNamespace(t *testing.T) {
	e := newEnv(t)
	own := &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}
	e.allocate(&podsv0.Pod{Id: "dbg", Namespaces: own})
	e.allocate(&podsv0.Pod{Id: "other", Namespaces: own})
	target := e.start("dbg", e.container("app", spec(t, func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}, "sleep", "1001")))
	joinTarget := func(s *specs.Spec) {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: fmt.Sprintf("/proc/%d/ns/pid", target.GetPid())})
	}
	e.start("dbg", e.container("debugger", spec(t, joinTarget, "sleep", "1000")))
	if ps := e.mustExec("debugger", "ps"); !strings.Contains(ps, "sleep 1001") {
		t.Errorf("the debugger does not see its target's processes:\n%s", ps)
	}
	if ps := e.mustExec("app", "ps"); !strings.Contains(ps, "sleep 1000") {
		t.Errorf("the target does not see the debugger:\n%s", ps)
	}
	_, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: "other", Container: e.forPod("other", e.container("intruder", spec(t, joinTarget, "true")))})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("joining another pod's container: %v, want InvalidArgument", err)
	}
}

// TestOfKnownContainer: a restart keeps the files of known containers and
// conmon's temp exit files of them ("<id>.<suffix>", renamed into place
// when the container exits), ids with dots included, and takes what no
// known container owns.
func TestOfKnownContainer(t *testing.T) {
	known := map[string]ctrRecord{"abc": {}, "cell.c0": {}}
	for name, want := range map[string]bool{
		"abc":           true,
		"abc.W9QTZ3":    true,
		"cell.c0":       true,
		"cell.c0.X1Y2Z": true,
		"cell":          false,
		"cell.c1":       false,
		"abcd":          false,
		"ab":            false,
		".abc":          false,
		"":              false,
	} {
		if got := ofKnownContainer(name, known); got != want {
			t.Errorf("ofKnownContainer(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestRemovalWithLostRecordDeletion: the record of a removed container
// is deleted off the removal's path; when a crash loses that deletion
// (the record is written back here, as it was before the removal), the
// restarted auraed finishes the removal: the container is unknown, its
// record and cgroup are gone, and the pod is whole.
func TestRemovalWithLostRecordDeletion(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "lost"})
	e.start("lost", e.container("c", spec(t, nil, "true")))
	e.start("lost", e.container("keep", spec(t, nil, "sleep", "1000")))
	e.waitExited("c", 30*time.Second)
	c, err := e.svc.lookupContainer("c")
	if err != nil {
		t.Fatal(err)
	}
	rec := c.record()
	if _, err := e.svc.RemoveContainer(ctx, &podsv0.RemoveContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.store.put(bucketContainers, "c", rec); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	e.svc = e.newService()
	if _, err := e.svc.ContainerStatus(ctx, &podsv0.ContainerStatusRequest{ContainerId: "c"}); status.Code(err) != codes.NotFound {
		t.Errorf("status of the removed container after the restart: %v, want NotFound", err)
	}
	_, ctrs, err := e.svc.store.load()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ctrs["c"]; ok {
		t.Error("the record of the removed container is still there after the restart")
	}
	if cgroup.Exists(rec.CgroupPath) {
		t.Errorf("cgroup %s of the removed container left", rec.CgroupPath)
	}
	if st := e.status("keep"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("the pod's other container after the restart: %v", st)
	}
	if _, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: "lost"}); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

// TestWriteAfterDeleteSoon: a record written while its deletion (off a
// removal's path) has not committed is written after it: the record is
// there, for good.
func TestWriteAfterDeleteSoon(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		st, err := openStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.put(bucketContainers, "c", ctrRecord{ID: "c", Pid: i}); err != nil {
			t.Fatal(err)
		}
		st.deleteSoon(bucketContainers, "c", func(err error) { t.Error(err) })
		if err := st.put(bucketContainers, "c", ctrRecord{ID: "c", Pid: i + 100}); err != nil {
			t.Fatal(err)
		}
		if err := st.close(); err != nil {
			t.Fatal(err)
		}
		if st, err = openStore(dir); err != nil {
			t.Fatal(err)
		}
		_, ctrs, err := st.load()
		if err != nil {
			t.Fatal(err)
		}
		if ctrs["c"].Pid != i+100 {
			t.Fatalf("round %d: record after delete and put: %+v (present %v), want the put's", i, ctrs["c"], len(ctrs) == 1)
		}
		st.deleteSoon(bucketContainers, "c", nil)
		if err := st.close(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.close() }()
	if _, ctrs, _ := st.load(); len(ctrs) != 0 {
		t.Errorf("records after a deletion and close: %v", ctrs)
	}
}
