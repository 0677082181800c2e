package pods

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

type env struct {
	t        testing.TB
	stateDir string
	cgRoot   string
	rootfs   string
	logDir   string
	svc      *Service
}

var testSeq atomic.Uint64

// newEnv starts a service on a state dir and cgroup root of its own, with a
// busybox rootfs, and checks at the end that Free of every pod left nothing:
// no mount, no cgroup, no process, no runc container.
func newEnv(t testing.TB) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("pods need root: cgroups, namespaces, mounts, runc")
	}
	for _, bin := range []string{"runc", "conmon"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed (Debian's busybox-static)")
	}
	// As long as /var/lib/aurae-cri/aurae/pods, to check that conmon's
	// attach socket path fits a sockaddr_un with 64-character ids.
	stateDir, err := os.MkdirTemp("", "pods-state-dir-of-realistic-length-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:        t,
		stateDir: stateDir,
		cgRoot:   fmt.Sprintf("aurae-test-pods-%d-%d", os.Getpid(), testSeq.Add(1)),
		rootfs:   filepath.Join(t.TempDir(), "rootfs"),
		logDir:   t.TempDir(),
	}
	makeRootfs(t, busybox, e.rootfs)
	t.Cleanup(e.cleanup)
	e.svc = e.newService()
	return e
}

func (e *env) newService() *Service {
	e.t.Helper()
	s, err := NewService(context.Background(), Config{StateDir: e.stateDir, CgroupRoot: e.cgRoot, Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) cleanup() {
	t := e.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if e.svc != nil {
		resp, _ := e.svc.ListPods(ctx, &podsv0.ListPodsRequest{})
		for _, p := range resp.GetPods() {
			if _, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: p.GetPod().GetId()}); err != nil {
				t.Errorf("free %s: %v", p.GetPod().GetId(), err)
			}
		}
		_ = e.svc.Close()
	}
	e.assertClean()
	// The per-test root and the pods parent below it, in every hierarchy.
	if err := removeCgroupTree(e.cgRoot); err != nil {
		t.Errorf("cgroup root left behind: %v", err)
	}
	if err := os.RemoveAll(e.stateDir); err != nil {
		t.Errorf("state dir: %v", err)
	}
}

// assertClean checks that no pod left a mount, a cgroup, a monitor or a
// runc container behind.
func (e *env) assertClean() {
	t := e.t
	t.Helper()
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), e.stateDir) {
		t.Errorf("mounts left under %s:\n%s", e.stateDir, grepLines(string(b), e.stateDir))
	}
	// Only the cgroup parents, which pods share, may stay.
	parents := map[string]bool{"pods": true, "kubepods": true, "kubepods/besteffort": true, "kubepods/besteffort/" + kubePodCgroup: true}
	var leaves []string
	hierarchies, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", e.cgRoot))
	for _, h := range hierarchies {
		_ = filepath.WalkDir(h, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() || p == h {
				return nil
			}
			if rel, _ := filepath.Rel(h, p); !parents[rel] {
				leaves = append(leaves, p)
			}
			return nil
		})
	}
	if len(leaves) > 0 {
		t.Errorf("cgroups left: %v", leaves)
	}
	if procs := processesMentioning(e.stateDir); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
	out, err := exec.Command("runc", "--root", filepath.Join(e.stateDir, "runc"), "list", "-q").CombinedOutput()
	if err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("runc containers left: %s", out)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func processesMentioning(s string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, d+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func makeRootfs(t testing.TB, busybox, dir string) {
	t.Helper()
	for _, d := range []string{"bin", "proc", "dev", "sys", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The pod files' mount points, as images have them: containers share
	// this rootfs, and runcs making a missing one at once race (EEXIST).
	for _, f := range []string{"etc/hosts", "etc/hostname", "etc/resolv.conf"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open(busybox)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "bin", "busybox"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	for _, a := range []string{"sh", "echo", "cat", "sleep", "ls", "id", "hostname", "true", "readlink", "dd", "ps"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
}

// spec is a minimal OCI spec, like `runc spec` makes, running args.
func spec(t testing.TB, mod func(*specs.Spec), args ...string) []byte {
	t.Helper()
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"}
	sp := specs.Spec{
		Version: "1.0.2",
		Process: &specs.Process{
			Args:            args,
			Env:             []string{"PATH=/bin", "GREETING=hello"},
			Cwd:             "/",
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces:    []specs.LinuxNamespace{{Type: specs.MountNamespace}},
			MaskedPaths:   []string{"/proc/kcore", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	if mod != nil {
		mod(&sp)
	}
	b, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) allocate(p *podsv0.Pod) *podsv0.AllocateResponse {
	e.t.Helper()
	resp, err := e.svc.Allocate(context.Background(), &podsv0.AllocateRequest{Pod: p})
	if err != nil {
		e.t.Fatalf("allocate %s: %v", p.GetId(), err)
	}
	return resp
}

func (e *env) container(id string, specJSON []byte) *podsv0.Container {
	return &podsv0.Container{Id: id, OciSpec: specJSON, RootfsPath: e.rootfs, LogPath: filepath.Join(e.logDir, id+".log")}
}

// forPod completes c's spec for the pod, as a client does from the pod's
// AllocateResponse (pkg/controller/native's facts, then ocispec): the
// pod's namespaces where the spec names none of that type, the
// container's cgroup, root.path, the pod's files, terminal = tty.
func (e *env) forPod(podID string, c *podsv0.Container) *podsv0.Container {
	e.t.Helper()
	resp, err := e.svc.ListPods(context.Background(), &podsv0.ListPodsRequest{})
	if err != nil {
		e.t.Fatal(err)
	}
	var pod *podsv0.PodStatus
	for _, p := range resp.GetPods() {
		if p.GetPod().GetId() == podID {
			pod = p
		}
	}
	if pod == nil {
		return c // the test wants an unknown pod
	}
	var sp specs.Spec
	if err := json.Unmarshal(c.GetOciSpec(), &sp); err != nil {
		e.t.Fatal(err)
	}
	f := native.Facts(pod.GetPod(), pod.GetPaths())
	has := map[specs.LinuxNamespaceType]bool{}
	for _, ns := range sp.Linux.Namespaces {
		has[ns.Type] = true
	}
	for _, ns := range []struct {
		typ specs.LinuxNamespaceType
		n   ocispec.Namespace
	}{{specs.NetworkNamespace, f.Network}, {specs.IPCNamespace, f.IPC}, {specs.UTSNamespace, f.UTS}, {specs.PIDNamespace, f.PID}} {
		if !has[ns.typ] && !ns.n.Node {
			sp.Linux.Namespaces = append(sp.Linux.Namespaces, specs.LinuxNamespace{Type: ns.typ, Path: ns.n.Path})
		}
	}
	if f.UserNamespace != "" && !has[specs.UserNamespace] {
		sp.Linux.Namespaces = append(sp.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: f.UserNamespace})
	}
	if sp.Linux.CgroupsPath == "" {
		sp.Linux.CgroupsPath = f.CgroupParent + "/" + c.GetId()
	}
	if sp.Root == nil {
		sp.Root = &specs.Root{Path: c.GetRootfsPath()}
	}
	for _, m := range []struct{ dst, src string }{{"/etc/hostname", f.HostnamePath}, {"/etc/resolv.conf", f.ResolvConfPath}, {"/etc/hosts", f.HostsPath}} {
		sp.Mounts = append(sp.Mounts, specs.Mount{Destination: m.dst, Type: "bind", Source: m.src, Options: []string{"rbind", "rprivate", "rw"},
			UIDMappings: f.UIDMappings, GIDMappings: f.GIDMappings})
	}
	sp.Process.Terminal = c.GetTty()
	b, err := json.Marshal(&sp)
	if err != nil {
		e.t.Fatal(err)
	}
	out := proto.Clone(c).(*podsv0.Container)
	out.OciSpec = b
	return out
}

func (e *env) start(pod string, c *podsv0.Container) *podsv0.StartResponse {
	e.t.Helper()
	resp, err := e.svc.Start(context.Background(), &podsv0.StartRequest{PodId: pod, Container: e.forPod(pod, c)})
	if err != nil {
		e.t.Fatalf("start %s: %v", c.GetId(), err)
	}
	return resp
}

func (e *env) status(id string) *podsv0.ContainerStatus {
	e.t.Helper()
	resp, err := e.svc.ContainerStatus(context.Background(), &podsv0.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		e.t.Fatalf("status %s: %v", id, err)
	}
	return resp.GetStatus()
}

func (e *env) waitExited(id string, within time.Duration) *podsv0.ContainerStatus {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := e.status(id)
		if st.GetState() == podsv0.ContainerState_CONTAINER_STATE_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s has not exited after %s: %v", id, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) exec(id string, timeout int64, argv ...string) (*podsv0.ExecSyncResponse, error) {
	return e.svc.ExecSync(context.Background(), &podsv0.ExecSyncRequest{ContainerId: id, Argv: argv, TimeoutSeconds: timeout})
}

func (e *env) mustExec(id string, argv ...string) string {
	e.t.Helper()
	resp, err := e.exec(id, 10, argv...)
	if err != nil {
		e.t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	if resp.GetExitCode() != 0 {
		e.t.Fatalf("exec %v in %s: exit %d, stderr %q", argv, id, resp.GetExitCode(), resp.GetStderr())
	}
	return string(resp.GetStdout())
}

func readLines(t testing.TB, p string) []string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// testLogger logs through t.Log, so that only failing tests show it;
// benchmarks log nothing.
func testLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		// A benchmark's log is always printed.
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
