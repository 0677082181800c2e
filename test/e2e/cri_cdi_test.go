package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// cdiSpec defines example.com/test=dev0: the host's /dev/null at
// /dev/cdi-test, an environment variable and a read-only bind mount of
// mountDir at /cdi-mnt.
func cdiSpec(mountDir string) string {
	return fmt.Sprintf(`cdiVersion: "0.6.0"
kind: example.com/test
devices:
  - name: dev0
    containerEdits:
      deviceNodes:
        - path: /dev/cdi-test
          hostPath: /dev/null
      env:
        - CDI_TEST=dev0
      mounts:
        - hostPath: %s
          containerPath: /cdi-mnt
          options: [rbind, ro]
`, mountDir)
}

// TestCRICDI asks for a CDI device through cdi_devices and through a
// cdi.k8s.io/ annotation and finds it inside the container; an unknown
// device is refused and leaves no container.
func TestCRICDI(t *testing.T) {
	specDir, mountDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(mountDir, "hello"), []byte("from cdi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(specDir, "test.yaml"), []byte(cdiSpec(mountDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCRI(t, "--cdi-spec-dirs", filepath.Join(t.TempDir(), "missing")+","+specDir)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:cdi", testimage.Options{})
	pod := c.podConfig(t, "cdi")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Runtime.StopPodSandbox(ctx, podID)
		_ = c.Runtime.RemovePodSandbox(ctx, podID)
	})

	field := containerConfig("cdi-field", image, "sleep", "1000")
	field.CDIDevices = []*runtimeapi.CDIDevice{{Name: "example.com/test=dev0"}}
	annotated := containerConfig("cdi-annotation", image, "sleep", "1000")
	annotated.Annotations = map[string]string{"cdi.k8s.io/e2e": "example.com/test=dev0"}
	for _, cfg := range []*runtimeapi.ContainerConfig{field, annotated} {
		t.Run(cfg.GetMetadata().GetName(), func(t *testing.T) {
			id := runContainer(t, c, podID, pod, cfg)
			waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
			if got := execOut(t, c, id, "busybox", "stat", "-c", "%F", "/dev/cdi-test"); got != "character special file" {
				t.Errorf("/dev/cdi-test is %q, want a character special file", got)
			}
			execOut(t, c, id, "sh", "-c", "test -c /dev/cdi-test")
			if got := execOut(t, c, id, "sh", "-c", "echo $CDI_TEST"); got != "dev0" {
				t.Errorf("CDI_TEST=%q, want dev0", got)
			}
			if got := execOut(t, c, id, "sh", "-c", "read l < /cdi-mnt/hello; echo $l"); got != "from cdi" {
				t.Errorf("/cdi-mnt/hello: %q", got)
			}
			// The device is usable: the device cgroup allows it.
			execOut(t, c, id, "sh", "-c", "echo x > /dev/cdi-test")
		})
	}

	t.Run("unknown", func(t *testing.T) {
		for _, cfg := range []*runtimeapi.ContainerConfig{
			containerConfig("cdi-unknown", image, "sleep", "1000"),
			containerConfig("cdi-unknown-annotation", image, "sleep", "1000"),
		} {
			if cfg.GetMetadata().GetName() == "cdi-unknown" {
				cfg.CDIDevices = []*runtimeapi.CDIDevice{{Name: "example.com/test=dev0"}, {Name: "example.com/test=nope"}}
			} else {
				cfg.Annotations = map[string]string{"cdi.k8s.io/e2e": "other.com/gpu=0"}
			}
			_, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s: %v, want InvalidArgument", cfg.GetMetadata().GetName(), err)
			}
			left, err := c.Runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": cfg.GetMetadata().GetName()}})
			if err != nil || len(left) != 0 {
				t.Errorf("after the refused %s: %v %v", cfg.GetMetadata().GetName(), left, err)
			}
		}
	})
}
