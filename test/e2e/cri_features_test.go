package e2e

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// runToExit runs a container until it exits and returns its status and the
// text of its stdout/stderr log lines.
func runToExit(t *testing.T, c *CRI, podID string, pod *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) (*runtimeapi.ContainerStatus, []string) {
	t.Helper()
	id := runContainer(t, c, podID, pod, cfg)
	st := waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_EXITED)
	b, _ := os.ReadFile(st.GetLogPath())
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if m := criLogLine.FindStringSubmatch(l); m != nil {
			out = append(out, m[5])
		}
	}
	return st, out
}

func TestCRIContainerFeatures(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	plain := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	asApp := c.pushBusybox(t, "e2e/busybox:app", testimage.Options{User: "app", WorkingDir: "/tmp", Env: []string{"FROM_IMAGE=yes"}})
	withEntry := c.pushBusybox(t, "e2e/busybox:entry", testimage.Options{Entrypoint: []string{"echo", "ep"}, Cmd: []string{"c1"}})
	pod := c.podConfig(t, "features")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	hostDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "in"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := 0
	run := func(cfg *runtimeapi.ContainerConfig) (*runtimeapi.ContainerStatus, []string) {
		n++
		cfg.Metadata.Name = cfg.Metadata.Name + strconv.Itoa(n)
		cfg.LogPath = cfg.Metadata.Name + ".log"
		return runToExit(t, c, podID, pod, cfg)
	}
	expect := func(what string, got []string, want ...string) {
		t.Helper()
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: output %q, want %q", what, got, want)
		}
	}

	t.Run("image user, workdir and env", func(t *testing.T) {
		_, out := run(containerConfig("img", asApp, "sh", "-c", "id -u; id -g; pwd; echo $FROM_IMAGE"))
		expect("image user", out, "1000", "1000", "/tmp", "yes")
	})
	t.Run("run as uid, user name, env and workdir from the request", func(t *testing.T) {
		cfg := containerConfig("uid", plain, "sh", "-c", "id -u; pwd; echo $FOO")
		cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{RunAsUser: &runtimeapi.Int64Value{Value: 1234}}
		cfg.WorkingDir = "/etc"
		cfg.Envs = []*runtimeapi.KeyValue{{Key: "FOO", Value: []byte("bar")}}
		_, out := run(cfg)
		expect("uid", out, "1234", "/etc", "bar")
		cfg = containerConfig("name", plain, "id", "-u")
		cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "app"}
		_, out = run(cfg)
		expect("user name", out, "1000")
	})
	t.Run("entrypoint and cmd", func(t *testing.T) {
		_, out := run(containerConfig("ep", withEntry))
		expect("image entrypoint+cmd", out, "ep c1")
		cfg := containerConfig("args", withEntry)
		cfg.Args = []string{"a1"}
		_, out = run(cfg)
		expect("args replace cmd", out, "ep a1")
		cfg = containerConfig("cmd", withEntry, "echo", "own")
		_, out = run(cfg)
		expect("command replaces entrypoint and cmd", out, "own")
	})
	t.Run("readonly rootfs", func(t *testing.T) {
		cfg := containerConfig("ro", plain, "sh", "-c", "touch /x 2>/dev/null && echo wrote || echo refused")
		cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{ReadonlyRootfs: true}
		_, out := run(cfg)
		expect("readonly rootfs", out, "refused")
	})
	t.Run("host path mounts", func(t *testing.T) {
		cfg := containerConfig("mnt", plain, "sh", "-c", "cat /ro/in; touch /ro/x 2>/dev/null && echo ro-wrote || echo ro-refused; echo hi > /rw/out && echo rw-wrote")
		cfg.Mounts = []*runtimeapi.Mount{
			{HostPath: hostDir, ContainerPath: "/ro", Readonly: true},
			{HostPath: hostDir, ContainerPath: "/rw"},
		}
		_, out := run(cfg)
		expect("mounts", out, "from host", "ro-refused", "rw-wrote")
		if b, err := os.ReadFile(filepath.Join(hostDir, "out")); err != nil || string(b) != "hi\n" {
			t.Errorf("rw mount did not reach the host: %q %v", b, err)
		}
	})
	t.Run("memory limit kills with OOMKilled", func(t *testing.T) {
		cfg := containerConfig("oom", plain, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
		cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
		st, _ := run(cfg)
		if st.GetReason() != "OOMKilled" || st.GetExitCode() != 137 {
			t.Errorf("status %v, want OOMKilled and 137", st)
		}
	})
}

func TestCRINetworking(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	hostPort := freePort(t)
	serverPod := c.podConfig(t, "server")
	serverPod.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 8080, HostPort: int32(hostPort), HostIp: "127.0.0.1"}}
	serverID, err := c.Runtime.RunPodSandbox(ctx, serverPod, "")
	if err != nil {
		t.Fatal(err)
	}
	runContainer(t, c, serverID, serverPod, containerConfig("pong", image, "nc", "-ll", "-p", "8080", "-e", "echo", "pong"))
	st, err := c.Runtime.PodSandboxStatus(ctx, serverID, false)
	if err != nil {
		t.Fatal(err)
	}
	serverIP := st.GetStatus().GetNetwork().GetIp()

	clientPod := c.podConfig(t, "client")
	clientID, err := c.Runtime.RunPodSandbox(ctx, clientPod, "")
	if err != nil {
		t.Fatal(err)
	}
	clientCtr := runContainer(t, c, clientID, clientPod, containerConfig("sleeper", image, "sleep", "300"))
	var out []byte
	for i := 0; i < 50; i++ {
		out, _, err = c.Runtime.ExecSync(ctx, clientCtr, []string{"nc", "-w", "2", serverIP, "8080"}, 10*time.Second)
		if err == nil && strings.TrimSpace(string(out)) == "pong" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.TrimSpace(string(out)) != "pong" {
		t.Fatalf("pod to pod over the bridge: %q %v", out, err)
	}

	// The port mapping forwards the host's loopback to the server pod.
	var line string
	for i := 0; i < 50; i++ {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hostPort), 2*time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ = bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if strings.TrimSpace(line) == "pong" {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.TrimSpace(line) != "pong" {
		t.Fatalf("port mapping 127.0.0.1:%d: got %q", hostPort, line)
	}

	// A hostNetwork pod sees the host's interfaces (the test bridge among them).
	hostPod := c.podConfig(t, "hostnet")
	hostPod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}
	hostID, err := c.Runtime.RunPodSandbox(ctx, hostPod, "")
	if err != nil {
		t.Fatal(err)
	}
	hostCtr := runContainer(t, c, hostID, hostPod, containerConfig("look", image, "sleep", "300"))
	out, _, err = c.Runtime.ExecSync(ctx, hostCtr, []string{"cat", "/proc/net/dev"}, 10*time.Second)
	if err != nil || !strings.Contains(string(out), c.Bridge+":") {
		t.Fatalf("hostNetwork pod does not see the host's %s: %q %v", c.Bridge, out, err)
	}
	hst, _ := c.Runtime.PodSandboxStatus(ctx, hostID, false)
	if hst.GetStatus().GetNetwork().GetIp() != "" {
		t.Errorf("hostNetwork pod got a CNI address %q", hst.GetStatus().GetNetwork().GetIp())
	}
}
