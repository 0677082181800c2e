package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/test/kubelet"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// containerdCRI is Debian's containerd with its own CRI plugin (see
// test/kubelet.StartContainerdCRI), with the kubelet's CRI clients on it:
// the baseline the benchmarks compare with.
type containerdCRI struct {
	Runtime internalapi.RuntimeService
	Images  internalapi.ImageManagerService
	LogDir  string
	proc    *kubelet.ContainerdCRI
}

// startContainerdCRIWith starts it with cfg's binary, environment and runc,
// a pause image from reg and a CNI bridge network of its own.
func startContainerdCRIWith(t testing.TB, reg *testimage.Registry, cfg kubelet.ContainerdCRIConfig) *containerdCRI {
	t.Helper()
	requireRoot(t)
	bridge := "cb" + randomHex(t, 4)
	tmp := t.TempDir()
	confDir := filepath.Join(tmp, "cni")
	if _, err := netcni.WriteBridgeConfig(confDir, netcni.BridgeConfig{
		NetworkName: "bench-" + bridge, Bridge: bridge, Subnet: fmt.Sprintf("10.252.%d.0/24", 1+int(randomHex(t, 1)[0])%200), DataDir: filepath.Join(tmp, "ipam"),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })
	pause := reg.Push(t, "bench/pause:1", testimage.MustBusybox(t, testimage.Options{Entrypoint: []string{"/bin/sleep", "2147483647"}}))
	cfg.SandboxImage, cfg.RegistryConfigDir, cfg.CNIConfDir = pause, reg.HostsDir(t), confDir
	ctd := kubelet.StartContainerdCRI(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(ctd.Endpoint()).WithConnectionTimeout(2 * time.Minute).Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	im, err := remote.NewRemoteImageServiceBuilder().WithEndpoint(ctd.Endpoint()).WithConnectionTimeout(2 * time.Minute).Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.PullImage(ctx, &runtimeapi.ImageSpec{Image: pause}, nil, nil); err != nil {
		t.Fatalf("pull pause image: %v", err)
	}
	return &containerdCRI{Runtime: rt, Images: im, LogDir: filepath.Join(tmp, "pods"), proc: ctd}
}
