package cri

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

const cdiTestSpec = `cdiVersion: "0.6.0"
kind: example.com/test
devices:
  - name: dev0
    containerEdits:
      deviceNodes:
        - path: /dev/cdi-test
          hostPath: /dev/null
      env:
        - CDI_TEST=dev0
`

// cdiFixture is a recovered runtime whose CDI specs hold example.com/test=dev0,
// with the fake controller also serving the VM handler aurae-vm.
func cdiFixture(t *testing.T) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a container's rootfs needs root")
	}
	f := newFixture(t, false)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "test.yaml"), []byte(cdiTestSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	cdi, err := ocispec.NewCDICache([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	images := image.NewFake(t.TempDir())
	images.Add(image.Image{ID: "sha256:" + strings.Repeat("a", 64), RepoTags: []string{"example.com/app:1"}})
	rt, err := NewRuntime(Config{
		RootDir: f.dir, Controllers: map[string]controller.Controller{"": f.ctrl, "aurae-vm": f.ctrl}, Images: images,
		Network: f.net, Store: f.store, MonitorInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), CDI: cdi,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	return f
}

func (f *fixture) cdiPod(t *testing.T, name, handler string) string {
	t.Helper()
	resp, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig(name), RuntimeHandler: handler})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetPodSandboxId()
}

func cdiContainer(name string, field []string, annotations map[string]string) *runtimeapi.ContainerConfig {
	cfg := &runtimeapi.ContainerConfig{
		Metadata:    &runtimeapi.ContainerMetadata{Name: name},
		Image:       &runtimeapi.ImageSpec{Image: "example.com/app:1"},
		Command:     []string{"/bin/true"},
		Annotations: annotations,
	}
	for _, d := range field {
		cfg.CDIDevices = append(cfg.CDIDevices, &runtimeapi.CDIDevice{Name: d})
	}
	return cfg
}

func TestCreateContainerCDI(t *testing.T) {
	f := cdiFixture(t)
	pod := f.cdiPod(t, "a", "")
	for name, cfg := range map[string]*runtimeapi.ContainerConfig{
		"field":      cdiContainer("field", []string{"example.com/test=dev0"}, nil),
		"annotation": cdiContainer("annotation", nil, map[string]string{"cdi.k8s.io/test": "example.com/test=dev0"}),
	} {
		resp, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podConfig("a")})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() {
			if _, err := f.rt.RemoveContainer(context.Background(), &runtimeapi.RemoveContainerRequest{ContainerId: resp.GetContainerId()}); err != nil {
				t.Errorf("remove %s: %v", name, err)
			}
		})
		c, err := f.store.Container(resp.GetContainerId())
		if err != nil {
			t.Fatal(err)
		}
		if spec := string(c.Spec); !strings.Contains(spec, `"path":"/dev/cdi-test"`) || !strings.Contains(spec, "CDI_TEST=dev0") {
			t.Errorf("%s: CDI device not in the stored spec: %s", name, spec)
		}
	}
}

func TestCreateContainerCDIRefused(t *testing.T) {
	f := cdiFixture(t)
	pod := f.cdiPod(t, "a", "")
	vmPod := f.cdiPod(t, "v", "aurae-vm")
	tests := []struct {
		name string
		pod  string
		cfg  *runtimeapi.ContainerConfig
		code codes.Code
	}{
		{"unknown", pod, cdiContainer("unknown", []string{"example.com/test=nope"}, nil), codes.InvalidArgument},
		{"unknown annotation", pod, cdiContainer("unknown-annotation", nil, map[string]string{"cdi.k8s.io/x": "example.com/test=dev0,example.com/test=gone"}), codes.InvalidArgument},
		{"malformed", pod, cdiContainer("malformed", []string{"dev0"}, nil), codes.InvalidArgument},
		{"VM pod", vmPod, cdiContainer("vm", []string{"example.com/test=dev0"}, nil), codes.FailedPrecondition},
		{"VM pod annotation", vmPod, cdiContainer("vm-annotation", nil, map[string]string{"cdi.k8s.io/x": "example.com/test=dev0"}), codes.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.rt.CreateContainer(t.Context(), &runtimeapi.CreateContainerRequest{PodSandboxId: tc.pod, Config: tc.cfg})
			if code(err) != tc.code {
				t.Fatalf("err %v (%s), want %s", err, code(err), tc.code)
			}
			sb, _ := f.store.Sandbox(tc.pod)
			if _, held := f.store.NameHolder(containerName(tc.cfg.GetMetadata(), sb.Config.GetMetadata())); held {
				t.Error("refused container's name still reserved")
			}
		})
	}
	if cs := f.store.Containers(); len(cs) != 0 {
		t.Fatalf("refused containers recorded: %v", cs)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), filepath.Join(f.dir, "containers")) {
		t.Errorf("a refused container's rootfs is still mounted:\n%s", mi)
	}
	if len(f.ctrl.prepared) != 0 {
		t.Errorf("refused containers left in the controller: %v", f.ctrl.prepared)
	}
}
