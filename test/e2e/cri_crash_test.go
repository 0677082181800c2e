package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/cri"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// faultFileEnv is cmd/aurae-cri's: the file naming the fault point where
// aurae-cri kills itself with SIGKILL.
const faultFileEnv = "AURAE_CRI_TEST_FAULT_FILE"

// crashCRI is an aurae-cri whose fault file the test sets.
type crashCRI struct {
	*CRI
	faultFile string
}

func startCrashCRI(t *testing.T, args ...string) *crashCRI {
	t.Helper()
	requireRoot(t)
	for _, tool := range []string{"iptables-save", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed to look for leaked network state: %v", tool, err)
		}
	}
	f := filepath.Join(t.TempDir(), "fault")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(faultFileEnv, f) // inherited by the aurae-cri processes started below
	return &crashCRI{CRI: startCRI(t, args...), faultFile: f}
}

// aim makes aurae-cri die at point ("" for nowhere).
func (c *crashCRI) aim(t *testing.T, point string) {
	t.Helper()
	if err := os.WriteFile(c.faultFile, []byte(point), 0o600); err != nil {
		t.Fatal(err)
	}
}

// exitsWithin waits up to d for aurae-cri's process to end.
func (c *crashCRI) exitsWithin(d time.Duration) bool {
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// intentLeft reads, while aurae-cri is dead, the one intent the crash left.
func (c *crashCRI) intentLeft(t *testing.T) sandbox.Intent {
	t.Helper()
	st, err := sandbox.Open(c.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	in := st.Intents()
	if len(in) != 1 {
		t.Fatalf("intents after the crash: %+v", in)
	}
	return in[0]
}

// leaks lists what is left on the machine of the pod or container id
// (footprint): mounts, auraed's pod and container dirs, host-local
// addresses, iptables rules, cgroups, processes, auraed's records, and the
// rootfs snapshot and lease (when ctrd is not nil); and veths on the
// test's bridge beyond wantVeths.
func (c *crashCRI) leaks(t *testing.T, id string, wantVeths int, ctrd *containerd.Client) []string {
	t.Helper()
	f := c.footprint(t, nil, ctrd, map[string]bool{id: true})
	out := f.of(id)
	if len(f.veths) > wantVeths {
		out = append(out, fmt.Sprintf("veths on %s: %q", c.Bridge, f.veths))
	}
	return out
}

// containerd is a client of aurae-cri's child containerd.
func (c *crashCRI) containerd(t *testing.T) *containerd.Client {
	t.Helper()
	cl, err := containerd.New(filepath.Join(c.StateDir, "containerd", "containerd.sock"), containerd.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestCRICrashMidCreateLeaksNothing kills aurae-cri with SIGKILL at each
// fault point of RunPodSandbox and CreateContainer (right after a side
// effect, before its record), and starts it again: the crash left things
// on the machine (checked while aurae-cri is dead), the restart undoes all
// of them — netns, veth, host-local address, iptables rules, cgroup,
// holder, rootfs mount, snapshot, lease — and the CRI lists nothing half
// made. Then removals cut short are finished.
func TestCRICrashMidCreateLeaksNothing(t *testing.T) {
	c := startCrashCRI(t)
	ctx := t.Context()
	busybox := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})

	for _, point := range []string{cri.FaultPodCreated, cri.FaultPodNetwork, cri.FaultPodStarted} {
		t.Run(point, func(t *testing.T) {
			c.aim(t, point)
			pod := c.podConfig(t, "crash-"+point)
			pod.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: int32(freePort(t))}}
			if _, err := c.Runtime.RunPodSandbox(ctx, pod, ""); err == nil {
				t.Fatal("RunPodSandbox answered: aurae-cri did not die")
			}
			c.aim(t, "")
			_ = c.wait(t) // the dead one
			in := c.intentLeft(t)
			if in.Kind != sandbox.IntentSandbox || !in.ControllerPod || in.Network != (point != cri.FaultPodCreated) {
				t.Fatalf("intent left: %+v", in)
			}
			if left := c.leaks(t, in.ID, 0, nil); len(left) == 0 {
				t.Fatal("the crash left nothing to undo: the fault point is not after a side effect")
			} else if point != cri.FaultPodCreated && !slices.ContainsFunc(left, func(s string) bool { return strings.HasPrefix(s, "host-local") }) {
				t.Fatalf("no host-local address after CNI ADD: %q", left)
			}
			c.Restart(t)
			if left := c.leaks(t, in.ID, 0, nil); len(left) > 0 {
				t.Fatalf("left after recovery:\n  %s", strings.Join(left, "\n  "))
			}
			pods, err := c.Runtime.ListPodSandbox(ctx, nil)
			if err != nil || len(pods) != 0 {
				t.Fatalf("pods after recovery: %v %v", pods, err)
			}
		})
	}

	pod := c.podConfig(t, "holder")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, point := range []string{cri.FaultContainerRootfs, cri.FaultContainerPrepared} {
		t.Run(point, func(t *testing.T) {
			c.aim(t, point)
			if _, err := c.Runtime.CreateContainer(ctx, podID, containerConfig("crash", busybox, "sleep", "60"), pod); err == nil {
				t.Fatal("CreateContainer answered: aurae-cri did not die")
			}
			c.aim(t, "")
			_ = c.wait(t)
			in := c.intentLeft(t)
			if in.Kind != sandbox.IntentContainer || in.PodID != podID || in.Snapshot != image.RootfsKey(in.ID) || in.Lease != "" {
				t.Fatalf("intent left: %+v", in)
			}
			if left := c.leaks(t, in.ID, 1, nil); !slices.ContainsFunc(left, func(s string) bool { return strings.HasPrefix(s, "mount: ") }) {
				t.Fatalf("no rootfs mount after the crash: %q", left)
			}
			c.Restart(t)
			ctrd := c.containerd(t)
			defer func() { _ = ctrd.Close() }()
			if left := c.leaks(t, in.ID, 1, ctrd); len(left) > 0 {
				t.Fatalf("left after recovery:\n  %s", strings.Join(left, "\n  "))
			}
			ctrs, err := c.Runtime.ListContainers(ctx, nil)
			if err != nil || len(ctrs) != 0 {
				t.Fatalf("containers after recovery: %v %v", ctrs, err)
			}
			pods, err := c.Runtime.ListPodSandbox(ctx, nil)
			if err != nil || len(pods) != 1 || pods[0].GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
				t.Fatalf("the pod after recovery: %v %v", pods, err)
			}
		})
	}

	// Removals cut short are finished at the restart.
	for _, point := range []string{cri.FaultContainerRemoving, cri.FaultPodRemoving} {
		t.Run(point, func(t *testing.T) {
			id := runContainer(t, c.CRI, podID, pod, containerConfig("doomed-"+point, busybox, "sleep", "60"))
			c.aim(t, point)
			var err error
			if point == cri.FaultContainerRemoving {
				err = c.Runtime.RemoveContainer(ctx, id)
			} else {
				err = c.Runtime.RemovePodSandbox(ctx, podID)
			}
			// A native container's removal from auraed and containerd
			// runs off RemoveContainer's path: the call answers, and
			// aurae-cri dies after it.
			if err == nil && (point != cri.FaultContainerRemoving || !c.exitsWithin(30*time.Second)) {
				t.Fatal("the removal answered: aurae-cri did not die")
			}
			c.aim(t, "")
			c.Restart(t)
			ctrd := c.containerd(t)
			defer func() { _ = ctrd.Close() }()
			if left := c.leaks(t, id, 1, ctrd); len(left) > 0 && point == cri.FaultContainerRemoving {
				t.Fatalf("left of the container after recovery:\n  %s", strings.Join(left, "\n  "))
			}
			ctrs, err := c.Runtime.ListContainers(ctx, nil)
			if err != nil || len(ctrs) != 0 {
				t.Fatalf("containers after recovery: %v %v", ctrs, err)
			}
			if point == cri.FaultPodRemoving {
				for _, gone := range []string{id, podID} {
					if left := c.leaks(t, gone, 0, ctrd); len(left) > 0 {
						t.Fatalf("left after recovery:\n  %s", strings.Join(left, "\n  "))
					}
				}
				pods, err := c.Runtime.ListPodSandbox(ctx, nil)
				if err != nil || len(pods) != 0 {
					t.Fatalf("pods after recovery: %v %v", pods, err)
				}
			}
		})
	}
}
