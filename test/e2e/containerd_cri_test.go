package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
)

// containerdCRI is Debian's containerd with its own CRI plugin on sockets and
// state of the test's own: the baseline the benchmarks compare with.
type containerdCRI struct {
	Endpoint string
	Runtime  internalapi.RuntimeService
	Images   internalapi.ImageManagerService
	LogDir   string
}

// startContainerdCRI starts containerd with the CRI plugin, the pause image
// pulled from reg, and a CNI bridge network of its own.
func startContainerdCRI(t testing.TB, reg *testimage.Registry) *containerdCRI {
	t.Helper()
	requireRoot(t)
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Skipf("containerd is not installed: %v", err)
	}
	dir, err := os.MkdirTemp("", "ctrd-cri-")
	if err != nil {
		t.Fatal(err)
	}
	bridge := "cb" + randomHex(t, 4)
	confDir := filepath.Join(dir, "cni")
	if _, err := netcni.WriteBridgeConfig(confDir, netcni.BridgeConfig{
		NetworkName: "bench-" + bridge, Bridge: bridge, Subnet: fmt.Sprintf("10.252.%d.0/24", 1+int(randomHex(t, 1)[0])%200), DataDir: filepath.Join(dir, "ipam"),
	}); err != nil {
		t.Fatal(err)
	}
	pause := reg.Push(t, "bench/pause:1", testimage.MustBusybox(t, testimage.Options{Entrypoint: []string{"/bin/sleep", "2147483647"}}))
	sock := filepath.Join(dir, "containerd.sock")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = %[7]q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %[8]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"), pause, confDir, reg.HostsDir(t))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &containerdCRI{Endpoint: "unix://" + sock, LogDir: filepath.Join(dir, "pods")}
	t.Cleanup(func() {
		if c.Runtime != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if pods, err := c.Runtime.ListPodSandbox(ctx, nil); err == nil {
				for _, p := range pods {
					_ = c.Runtime.StopPodSandbox(ctx, p.GetId())
					_ = c.Runtime.RemovePodSandbox(ctx, p.GetId())
				}
			}
			cancel()
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		// Shims outlive containerd: end them and their cgroups.
		_ = exec.Command("pkill", "-f", "containerd-shim-runc-v2.*"+filepath.Join(dir, "state")).Run()
		_ = exec.Command("pkill", "-f", "-address "+sock).Run()
		if err := testimage.UnmountUnder(dir); err != nil {
			t.Errorf("unmount under %s: %v", dir, err)
		}
		_ = exec.Command("ip", "link", "del", bridge).Run()
		_ = os.RemoveAll(dir)
		if t.Failed() {
			t.Logf("containerd logs:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(c.Endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
		if err == nil {
			if _, err = rt.Version(ctx, "v1"); err == nil {
				c.Runtime = rt
				c.Images, err = remote.NewRemoteImageServiceBuilder().WithEndpoint(c.Endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
				if err == nil {
					cancel()
					break
				}
			}
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("containerd's CRI did not answer: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c.Images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: pause}, nil, nil); err != nil {
		t.Fatalf("pull pause image: %v", err)
	}
	return c
}
