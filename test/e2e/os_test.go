package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/testpki"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// readMeminfo reads /proc/meminfo as key → value (kB values in bytes).
func readMeminfo(t *testing.T) map[string]uint64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(rest)
		v, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			v *= 1024
		}
		out[key] = v
	}
	return out
}

func TestOSMemoryMatchesProcMeminfo(t *testing.T) {
	a := startAuraed(t)
	resp, err := a.Client().OS.Memory(testContext(t), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetMessages()) != 1 {
		t.Fatalf("%d messages, want 1", len(resp.GetMessages()))
	}
	got := resp.GetMessages()[0].GetMeminfo()
	want := readMeminfo(t)
	// Sizes that do not move while the machine runs: exactly.
	for key, v := range map[string]uint64{
		"MemTotal": got.GetMemtotal(), "SwapTotal": got.GetSwaptotal(), "VmallocTotal": got.GetVmalloctotal(),
		"Hugepagesize": got.GetHugepagesize(), "HugePages_Total": got.GetHugepagestotal(), "CommitLimit": got.GetCommitlimit(),
	} {
		if v != want[key] {
			t.Errorf("%s = %d, /proc/meminfo has %d", key, v, want[key])
		}
	}
	// Those that do: present and within what the machine has.
	for key, v := range map[string]uint64{"MemFree": got.GetMemfree(), "MemAvailable": got.GetMemavailable(), "Cached": got.GetCached(), "Active(file)": got.GetActivefile()} {
		if v == 0 || v > want["MemTotal"] {
			t.Errorf("%s = %d, want in (0, MemTotal %d]", key, v, want["MemTotal"])
		}
	}
}

func TestOSProcessesHoldsTheTest(t *testing.T) {
	a := startAuraed(t)
	resp, err := a.Client().OS.Processes(testContext(t), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.GetMessages()[0].GetProcesses() {
		if int(p.GetPid()) == os.Getpid() {
			if p.GetArgs() != strings.Join(os.Args, " ") || p.GetPpid() != int32(os.Getppid()) || p.GetResidentMemory() == 0 {
				t.Fatalf("the test's process = %v; want args %q, ppid %d", p, os.Args, os.Getppid())
			}
			return
		}
	}
	t.Fatalf("the test's pid %d is not among the processes", os.Getpid())
}

// writeKmsg writes a line to the kernel log.
func writeKmsg(t *testing.T, line string) {
	t.Helper()
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

func TestOSDmesg(t *testing.T) {
	a := startAuraed(t)
	ctx := testContext(t)
	marker := "aurae-e2e-dmesg-" + randomHex(t, 6)
	writeKmsg(t, marker+"-before")

	// Without follow: the records the kernel has, ours among them; the
	// stream ends.
	stream, err := a.Client().OS.Dmesg(ctx, &osapi.DmesgRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n, seen := 0, false
	for {
		d, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		seen = seen || strings.Contains(string(d.GetBytes()), marker+"-before")
	}
	if n == 0 || !seen {
		t.Fatalf("Dmesg returned %d records, the test's among them: %v", n, seen)
	}

	// tail + follow: only records written from now on, as they come.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	follow, err := a.Client().OS.Dmesg(fctx, &osapi.DmesgRequest{Follow: true, Tail: true})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	go func() {
		defer close(got)
		for {
			d, err := follow.Recv()
			if err != nil {
				return
			}
			got <- string(d.GetBytes())
		}
	}()
	// The stream seeks to the end at some point after it opened: write
	// until one line arrives.
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no line written to /dev/kmsg arrived on the followed stream")
		}
		writeKmsg(t, fmt.Sprintf("%s-after-%d", marker, i))
		select {
		case line, ok := <-got:
			if !ok {
				t.Fatal("the followed stream ended")
			}
			if strings.Contains(line, marker+"-before") {
				t.Fatalf("tail sent an old record: %q", line)
			}
			if strings.Contains(line, marker+"-after-") {
				if !strings.Contains(line, "user.") || !strings.Contains(line, "] ") {
					t.Errorf("record %q has no facility, level or timestamp", line)
				}
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startPodContainer allocates a pod in a and runs a busybox container in
// it as aurae-cri would (with its Kubernetes annotations), printing a line
// at start and then sleeping; the pod is freed when the test ends.
func startPodContainer(t *testing.T, a *Auraed, namespace string) (podID, ctrID, logPath string) {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is missing (make deps installs busybox-static)")
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", busybox, filepath.Join(rootfs, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("copy busybox: %v: %s", err, out)
	}
	for _, app := range []string{"sh", "sleep", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := testContext(t)
	c := a.Client()
	podID, ctrID = "os-e2e-"+randomHex(t, 4), "web-"+randomHex(t, 4)
	alloc, err := c.Pods.Allocate(ctx, &podsv0.AllocateRequest{Pod: &podsv0.Pod{
		Id: podID, Hostname: "web",
		Namespaces: &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := c.Pods.Free(ctx, &podsv0.FreeRequest{PodId: podID}); err != nil {
			t.Errorf("free pod %s: %v", podID, err)
		}
	})
	sp := specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: []string{"sh", "-c", "echo started; exec sleep 100000"}, Env: []string{"PATH=/bin"}, Cwd: "/"},
		Root:    &specs.Root{Path: rootfs},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "mode=755"}},
		},
		Annotations: map[string]string{
			ocispec.AnnotationSandboxNamespace: namespace,
			ocispec.AnnotationContainerName:    "web",
			ocispec.AnnotationImageName:        "busybox:e2e",
		},
		Linux: &specs.Linux{
			CgroupsPath: "/" + alloc.GetCgroupPath() + "/" + ctrID,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.MountNamespace}, {Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: alloc.GetNetworkNamespacePath()},
				{Type: specs.IPCNamespace, Path: alloc.GetIpcNamespacePath()},
				{Type: specs.UTSNamespace, Path: alloc.GetUtsNamespacePath()},
			},
		},
	}
	b, err := json.Marshal(&sp)
	if err != nil {
		t.Fatal(err)
	}
	logPath = filepath.Join(t.TempDir(), "web.log")
	if _, err := c.Pods.Start(ctx, &podsv0.StartRequest{PodId: podID, Container: &podsv0.Container{Id: ctrID, OciSpec: b, LogPath: logPath}}); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return podID, ctrID, logPath
}

// waitLogLines waits until the log holds n lines with text.
func waitLogLines(t *testing.T, path, text string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), text) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s holds %q, want %d lines with %q", path, b, n, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestOSContainersStatsRestart(t *testing.T) {
	// sleep as its pid namespace's init ignores SIGTERM: Restart kills it
	// after the grace period.
	a := startAuraed(t, "--stop-grace-period", "2s")
	podID, ctrID, logPath := startPodContainer(t, a, "e2e-ns")
	c, ctx := a.Client(), testContext(t)
	waitLogLines(t, logPath, "started", 1)

	containers := func() map[string]*osapi.ContainerInfo {
		t.Helper()
		resp, err := c.OS.Containers(ctx, &osapi.ContainersRequest{Namespace: "e2e-ns"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*osapi.ContainerInfo{}
		for _, ci := range resp.GetMessages()[0].GetContainers() {
			out[ci.GetId()] = ci
		}
		return out
	}
	ci := containers()[ctrID]
	if ci == nil || ci.GetNamespace() != "e2e-ns" || ci.GetPodId() != podID || ci.GetName() != "web" || ci.GetImage() != "busybox:e2e" ||
		ci.GetStatus() != "running" || ci.GetPid() == 0 {
		t.Fatalf("Containers has %v for the pod's container", ci)
	}
	if other, err := c.OS.Containers(ctx, &osapi.ContainersRequest{Namespace: "elsewhere"}); err != nil || len(other.GetMessages()[0].GetContainers()) != 0 {
		t.Fatalf("Containers of another namespace = %v, %v; want none", other, err)
	}

	stats, err := c.OS.Stats(ctx, &osapi.StatsRequest{Namespace: "e2e-ns"})
	if err != nil {
		t.Fatal(err)
	}
	var st *osapi.Stat
	for _, s := range stats.GetMessages()[0].GetStats() {
		if s.GetId() == ctrID {
			st = s
		}
	}
	if st == nil || st.GetMemoryUsage() == 0 || st.GetPodId() != podID || st.GetName() != "web" {
		t.Fatalf("Stats has %v for the pod's container, want it with memory", st)
	}

	if _, err := c.OS.Restart(ctx, &osapi.RestartRequest{Id: ctrID}); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	after := containers()[ctrID]
	if after == nil || after.GetStatus() != "running" || after.GetPid() == 0 || after.GetPid() == ci.GetPid() {
		t.Fatalf("after Restart: %v; want running with a pid other than %d", after, ci.GetPid())
	}
	// The same log, appended to: the first run's line and the second's.
	waitLogLines(t, logPath, "started", 2)

	if _, err := c.OS.Restart(ctx, &osapi.RestartRequest{Id: "no-such-container"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Restart of an unknown container = %v, want NotFound", err)
	}
	if _, err := c.OS.Stats(ctx, &osapi.StatsRequest{Driver: commonapi.ContainerDriver_CRI}); err == nil || !strings.Contains(err.Error(), "--cri-endpoint") {
		t.Fatalf("Stats with driver CRI on an auraed without --cri-endpoint = %v, want FailedPrecondition naming the flag", err)
	}
}

// nodes are three auraed on loopback with mutual TLS: a, with b and c as
// its peers; c is stopped.
type nodes struct {
	a, b *Auraed
	ca   *testpki.CA
	// client: a certificate for calling a over TCP.
	client testpki.Pair
}

func startNodes(t *testing.T) nodes {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	srv, peer := ca.Server("auraed"), ca.Client("peer")
	tlsArgs := []string{"--listen", "127.0.0.1:0", "--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile, "--client-ca", ca.CertFile}
	b := startAuraed(t, append(tlsArgs, "--node-name", "b")...)
	c := startAuraed(t, append(tlsArgs, "--node-name", "c")...)
	cAddr := c.TCPAddr()
	if err := c.Stop(t); err != nil {
		t.Fatalf("stop c: %v", err)
	}
	a := startAuraed(t, append(tlsArgs, "--node-name", "a",
		"--peer", "b="+b.TCPAddr(), "--peer", "c="+cAddr,
		"--peer-cert", peer.CertFile, "--peer-key", peer.KeyFile, "--peer-ca", ca.CertFile)...)
	return nodes{a: a, b: b, ca: ca, client: ca.Client("operator")}
}

// TestOSNodesFanOut calls Processes on a for a, b and c (stopped): two
// nodes' processes and an error for the third, in one answer.
func TestOSNodesFanOut(t *testing.T) {
	n := startNodes(t)
	a, b := n.a, n.b
	ctx := client.WithNodes(testContext(t), "a", "b", "c")
	resp, err := a.Client().OS.Processes(ctx, &emptypb.Empty{})
	if err != nil {
		t.Fatalf("Processes for three nodes: %v", err)
	}
	byNode := map[string]*osapi.Process{}
	for _, m := range resp.GetMessages() {
		byNode[m.GetMetadata().GetHostname()] = m
	}
	if len(resp.GetMessages()) != 3 || len(byNode) != 3 {
		t.Fatalf("%d messages for nodes %v, want one each for a, b and c", len(resp.GetMessages()), byNode)
	}
	for _, n := range []struct {
		name string
		pid  int
	}{{"a", a.Pid()}, {"b", b.Pid()}} {
		m := byNode[n.name]
		if m.GetMetadata().GetError() != "" {
			t.Fatalf("node %s failed: %s", n.name, m.GetMetadata().GetError())
		}
		found := false
		for _, p := range m.GetProcesses() {
			found = found || int(p.GetPid()) == n.pid
		}
		if !found {
			t.Errorf("node %s's processes lack its auraed (pid %d)", n.name, n.pid)
		}
	}
	if m := byNode["c"]; m.GetMetadata().GetError() == "" || len(m.GetProcesses()) != 0 {
		t.Fatalf("stopped node c answered %v, want only an error", m)
	}
	// Without nodes the node answers for itself alone.
	own, err := a.Client().OS.Processes(testContext(t), &emptypb.Empty{})
	if err != nil || len(own.GetMessages()) != 1 || own.GetMessages()[0].GetMetadata().GetHostname() != "a" {
		t.Fatalf("Processes without nodes = %d messages, %v; want a's own", len(own.GetMessages()), err)
	}

	// Stats of a cell executable on b, through a.
	allocateCell(t, b, &cellsv0.Cell{Name: "fan"})
	startIn(t, b, "fan", "sleeper", "sleep 1000")
	stats, err := a.Client().OS.Stats(ctx, &osapi.StatsRequest{Namespace: "cells"})
	if err != nil {
		t.Fatalf("Stats for three nodes: %v", err)
	}
	statsOf := map[string]map[string]*osapi.Stat{}
	for _, m := range stats.GetMessages() {
		statsOf[m.GetMetadata().GetHostname()] = map[string]*osapi.Stat{}
		for _, st := range m.GetStats() {
			statsOf[m.GetMetadata().GetHostname()][st.GetId()] = st
		}
	}
	if st := statsOf["b"]["fan/sleeper"]; st == nil || st.GetMemoryUsage() == 0 || len(statsOf["a"]) != 0 || len(stats.GetMessages()) != 3 {
		t.Fatalf("Stats for a, b and c = %v; want b's fan/sleeper with memory, nothing on a", stats.GetMessages())
	}
}
