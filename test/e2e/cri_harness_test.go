package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// CRI is one aurae-cri under test, with an embedded auraed, its own child
// containerd, registry config, CNI network (bridge and subnet of its own)
// and cgroup root. Restart keeps them all.
type CRI struct {
	*Auraed
	Endpoint string
	Runtime  internalapi.RuntimeService
	Images   internalapi.ImageManagerService
	Registry *testimage.Registry
	Bridge   string
	Subnet   string
	LogDir   string
}

// startCRI starts aurae-cri on sockets and state of the test's own.
func startCRI(t testing.TB, args ...string) *CRI {
	t.Helper()
	return startCRIWith(t, nil, args...)
}

// startCRIWith is startCRI with env added to aurae-cri's environment.
func startCRIWith(t testing.TB, env []string, args ...string) *CRI {
	t.Helper()
	requireRoot(t)
	bin, ok := binaries["aurae-cri"]
	if !ok {
		t.Fatal("aurae-cri was not built")
	}
	if _, err := os.Stat("/opt/cni/bin/bridge"); err != nil {
		t.Fatalf("CNI plugins missing (make deps installs them): %v", err)
	}
	sockDir, err := os.MkdirTemp("", "ce2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	tmp := t.TempDir()
	// As /var/lib: the root of a pod's user namespace passes through to
	// the rootfs under the state dir (t.TempDir makes them 0700).
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	c := &CRI{
		Registry: testimage.StartRegistry(t),
		Bridge:   "ae" + randomHex(t, 4),
		Subnet:   fmt.Sprintf("10.251.%d.0/24", 1+int(randomHex(t, 1)[0])%200),
		LogDir:   filepath.Join(tmp, "pods"),
	}
	confDir := filepath.Join(tmp, "cni")
	if _, err := netcni.WriteBridgeConfig(confDir, netcni.BridgeConfig{
		NetworkName: "e2e-" + c.Bridge, Bridge: c.Bridge, Subnet: c.Subnet, DataDir: filepath.Join(tmp, "ipam"),
	}); err != nil {
		t.Fatal(err)
	}
	a := &Auraed{
		Socket:     filepath.Join(sockDir, "cri.sock"),
		StateDir:   filepath.Join(tmp, "state"),
		CgroupRoot: cgroupRootPrefix() + randomHex(t, 6),
		t:          t,
		env:        env,
		logs:       &syncBuffer{},
	}
	c.Auraed = a
	c.Endpoint = "unix://" + a.Socket
	a.args = append([]string{bin,
		"--socket", a.Socket,
		"--state-dir", a.StateDir,
		"--cgroup-root", a.CgroupRoot,
		"--containerd-address", filepath.Join(sockDir, "no-containerd.sock"),
		"--registry-config-dir", c.Registry.HostsDir(t),
		"--cni-conf-dir", confDir,
		"--cni-bin-dir", "/opt/cni/bin",
		"--log-level", "debug",
	}, append(append(vmImageArgs(), cgroupDriverArgs()...), args...)...)
	a.ready = c.waitReady
	t.Cleanup(func() {
		c.removeAll(t)
		a.stop(t)
		removeCgroupTree(t, a.CgroupRoot)
		stopSystemdRoot(t, a.CgroupRoot)
		if err := testimage.UnmountUnder(a.StateDir); err != nil {
			t.Errorf("unmount under the state dir: %v", err)
		}
		if out, err := exec.Command("ip", "link", "del", c.Bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("delete bridge %s: %v: %s", c.Bridge, err, out)
		}
		if t.Failed() {
			t.Logf("aurae-cri logs:\n%s", a.Logs())
		}
	})
	a.start(t)
	return c
}

func (c *CRI) waitReady(t testing.TB, exited chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("aurae-cri exited before answering (%v); logs:\n%s", c.exitErr(), c.Logs())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(c.Endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
		if err == nil {
			var st *runtimeapi.StatusResponse
			if st, err = rt.Status(ctx, false); err == nil {
				for _, cond := range st.GetStatus().GetConditions() {
					if !cond.GetStatus() {
						err = fmt.Errorf("%s: %s", cond.GetType(), cond.GetMessage())
					}
				}
			}
			if err == nil {
				var im internalapi.ImageManagerService
				if im, err = remote.NewRemoteImageServiceBuilder().WithEndpoint(c.Endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx); err == nil {
					cancel()
					c.Runtime, c.Images = rt, im
					return
				}
			}
		}
		cancel()
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("aurae-cri not ready within %v: %v; logs:\n%s", startTimeout, last, c.Logs())
}

// removeAll removes every pod the test left, through the CRI.
func (c *CRI) removeAll(t testing.TB) {
	if c.Runtime == nil || c.exitErr() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := c.Runtime.ListPodSandbox(ctx, nil)
	if err != nil {
		return
	}
	for _, p := range pods {
		if err := c.Runtime.RemovePodSandbox(ctx, p.GetId()); err != nil {
			t.Errorf("cleanup: remove pod %s: %v", p.GetId(), err)
		}
	}
}

// pushBusybox builds a busybox image with opts, pushes it and pulls it
// through the CRI; it returns the reference.
func (c *CRI) pushBusybox(t testing.TB, repoTag string, opts testimage.Options) string {
	t.Helper()
	ref := c.Registry.Push(t, repoTag, testimage.MustBusybox(t, opts))
	if _, err := c.Images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, nil, nil); err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return ref
}

// podConfig is a pod's config with a log directory of the test's own.
func (c *CRI) podConfig(t testing.TB, name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "e2e", Uid: randomHex(t, 8), Attempt: 0},
		Hostname:     name,
		LogDirectory: filepath.Join(c.LogDir, name),
		Labels:       map[string]string{"app": name},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
}

// freePort is a TCP port free on 127.0.0.1 right now.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
