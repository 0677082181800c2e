package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/test/kubelet"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// benchRuntime is one CRI runtime under benchmark, aurae-cri or a peer, on
// sockets, roots and a CNI network of its own, with the benchmark image
// pulled.
type benchRuntime struct {
	// key names it in metrics: aurae, containerd1.6, containerd2, crio.
	key           string
	name, version string
	endpoint      string
	rt            internalapi.RuntimeService
	im            internalapi.ImageManagerService
	image, logDir string
	// procs picks its processes (daemons, shims, monitors, holders, pause)
	// without the benchmark's workloads.
	procs procSet
}

// benchPeers are the runtimes of a benchmark run: aurae-cri first, then
// each peer that could be built and started (Debian's containerd 1.6,
// containerd 2.x, CRI-O); a peer that cannot is logged with the reason
// and left out. AURAE_BENCH_PEERS (keys, comma-separated: containerd1.6,
// containerd2, crio; "none" for aurae-cri alone) picks some of them, for a
// shorter run; the default is all.
func benchPeers(b *testing.B, c *CRI, image string, workloads ...string) []*benchRuntime {
	b.Helper()
	out := []*benchRuntime{auraeBenchRuntime(b, c, image, workloads)}
	want := map[string]bool{}
	if v := os.Getenv("AURAE_BENCH_PEERS"); v != "" {
		for _, k := range strings.Split(v, ",") {
			want[strings.TrimSpace(k)] = true
		}
	}
	type peer struct {
		key, name string
		start     func() (*benchRuntime, error)
	}
	for _, p := range []peer{
		{"containerd1.6", "containerd 1.6 (Debian)", func() (*benchRuntime, error) { return containerdBenchRuntime(b, c.Registry, "containerd", nil) }},
		{"containerd2", "containerd 2.x", func() (*benchRuntime, error) {
			dir, err := buildPeer("hack/containerd2/build.sh")
			if err != nil {
				return nil, err
			}
			return containerdBenchRuntime(b, c.Registry, filepath.Join(dir, "containerd"), []string{"PATH=" + dir + ":" + os.Getenv("PATH")})
		}},
		{"crio", "CRI-O", func() (*benchRuntime, error) {
			dir, err := buildPeer("hack/crio/build.sh")
			if err != nil {
				return nil, err
			}
			return startCRIO(b, c.Registry, dir)
		}},
	} {
		if len(want) > 0 && !want[p.key] {
			b.Logf("peer %s left out: not in AURAE_BENCH_PEERS", p.name)
			continue
		}
		r, err := p.start()
		if err != nil {
			b.Logf("peer %s left out: %v", p.name, err)
			continue
		}
		if _, err := r.im.PullImage(b.Context(), &runtimeapi.ImageSpec{Image: image}, nil, nil); err != nil {
			b.Logf("peer %s left out: pull %s: %v", p.name, image, err)
			continue
		}
		r.key, r.name, r.image = p.key, p.name, image
		r.procs.workloads = workloadCmdlines(workloads)
		b.Logf("peer %s %s on %s", r.name, r.version, r.endpoint)
		out = append(out, r)
	}
	return out
}

func auraeBenchRuntime(b *testing.B, c *CRI, image string, workloads []string) *benchRuntime {
	return &benchRuntime{
		key: "aurae", name: "aurae-cri", version: runtimeVersion(b, c.Runtime), endpoint: c.Endpoint,
		rt: c.Runtime, im: c.Images, image: image, logDir: c.LogDir,
		procs: procSet{
			daemons:   func() []int { return []int{c.Pid()} },
			markers:   []string{c.StateDir},
			workloads: workloadCmdlines(workloads),
		},
	}
}

// workloadCmdlines are the benchmark's container commands as /proc's
// cmdline (NUL-separated) shows them.
func workloadCmdlines(cmds []string) []string {
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i] = strings.ReplaceAll(c, " ", "\x00")
	}
	return out
}

// runtimeVersion is "<runtime name> <runtime version>" of a CRI Version
// answer.
func runtimeVersion(b *testing.B, rt internalapi.RuntimeService) string {
	ctx, cancel := context.WithTimeout(b.Context(), 30*time.Second)
	defer cancel()
	v, err := rt.Version(ctx, "")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return v.GetRuntimeVersion()
}

// buildPeer runs a hack/<peer>/build.sh (cached: `make peers` builds them
// ahead) and returns the directory of the binaries it printed.
func buildPeer(script string) (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, script))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", script, err, tailString(stderr.String(), 2000))
	}
	return strings.TrimSpace(string(out)), nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// containerdBenchRuntime starts a containerd with its CRI plugin (binary
// on PATH or a path) on a root, sockets and CNI network of its own, with
// the pinned runc; see startContainerdCRI.
func containerdBenchRuntime(b *testing.B, reg *testimage.Registry, binary string, env []string) (*benchRuntime, error) {
	if _, err := exec.LookPath(binary); err != nil {
		return nil, fmt.Errorf("no %s: %w", binary, err)
	}
	ctd := startContainerdCRIWith(b, reg, kubelet.ContainerdCRIConfig{Binary: binary, Env: env, RuncBinary: pods.PinnedRuntime})
	return &benchRuntime{
		version: runtimeVersion(b, ctd.Runtime), endpoint: ctd.proc.Endpoint(),
		rt: ctd.Runtime, im: ctd.Images, logDir: ctd.LogDir,
		procs: procSet{
			daemons: func() []int { return []int{ctd.proc.Pid()} },
			// The shims name containerd's socket under its dir.
			markers: []string{ctd.proc.Dir()},
		},
	}, nil
}

// benchContainer is a container "c" of image running command, with the
// image as the kubelet names it (CRI-O verifies signatures against the
// UserSpecifiedImage and refuses a container without one) and the PID
// namespace mode of its pod.
func benchContainer(image string, command ...string) *runtimeapi.ContainerConfig {
	cfg := containerConfig("c", image, command...)
	cfg.Image.UserSpecifiedImage = image
	// As the kubelet sends it for a pod that shares no PID namespace.
	cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
	}
	return cfg
}
