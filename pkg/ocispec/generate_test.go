package ocispec

import (
	"encoding/json"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/containerd/errdefs"
	imagespec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const testPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/:/bin/false
# a comment
+nisuser::::::
alice:x:1000:1000::/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
broken:x:notanumber:1::/:/bin/sh
`

const testGroup = `root:x:0:root
wheel:x:10:alice,root
users:x:100:bob,alice
alice:x:1000:alice
audio:x:29:bob
staff:x:50:
`

func testRootFS() fstest.MapFS {
	return fstest.MapFS{
		"etc/passwd": {Data: []byte(testPasswd)},
		"etc/group":  {Data: []byte(testGroup)},
	}
}

// testInput is a plain container in a pod with its own namespaces.
func testInput() Input {
	return Input{
		ID:        "ctr1",
		SandboxID: "pod1",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: "example.com/app:1"},
		},
		Sandbox: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "web", Namespace: "default", Uid: "uid-1"},
			Hostname: "web-host",
		},
		Image:  imagespec.ImageConfig{Cmd: []string{"/bin/sh"}},
		RootFS: testRootFS(),
		Pod: PodFacts{
			RootfsPath:   "/var/lib/aurae/ctr1/rootfs",
			Network:      Namespace{Path: "/run/aurae/netns/pod1"},
			IPC:          Namespace{Path: "/run/aurae/ipcns/pod1"},
			UTS:          Namespace{Path: "/run/aurae/utsns/pod1"},
			CgroupParent: "/aurae/pods/pod1",
		},
	}
}

// linuxSC returns the security context of in's container, made if missing.
func linuxSC(in *Input) *runtimeapi.LinuxContainerSecurityContext {
	if in.Config.Linux == nil {
		in.Config.Linux = &runtimeapi.LinuxContainerConfig{}
	}
	if in.Config.Linux.SecurityContext == nil {
		in.Config.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
	}
	return in.Config.Linux.SecurityContext
}

func setSandboxNS(in *Input, o *runtimeapi.NamespaceOption) {
	if in.Sandbox.Linux == nil {
		in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	if in.Sandbox.Linux.SecurityContext == nil {
		in.Sandbox.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{}
	}
	in.Sandbox.Linux.SecurityContext.NamespaceOptions = o
	// What a controller says of such a pod: NODE is the node's namespace.
	node := runtimeapi.NamespaceMode_NODE
	if o.GetNetwork() == node {
		in.Pod.Network, in.Pod.UTS = Namespace{Node: true}, Namespace{Node: true}
	}
	if o.GetIpc() == node {
		in.Pod.IPC = Namespace{Node: true}
	}
	if o.GetPid() == node {
		in.Pod.PID = Namespace{Node: true}
	}
}

func privileged(in *Input) {
	linuxSC(in).Privileged = true
	if in.Sandbox.Linux == nil {
		in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	if in.Sandbox.Linux.SecurityContext == nil {
		in.Sandbox.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{}
	}
	in.Sandbox.Linux.SecurityContext.Privileged = true
}

func mustGenerate(t *testing.T, in Input) *specs.Spec {
	t.Helper()
	s, err := Generate(in)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return s
}

// checkErr checks err against want: nil for success, else the sentinel the
// error must wrap.
func checkErr(t *testing.T, err, want error) bool {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != nil && err == nil:
		t.Fatalf("no error, want %v", want)
	case want != nil && !errors.Is(err, want):
		t.Fatalf("error %v does not wrap %v", err, want)
	}
	return err == nil
}

func TestGenerateBasics(t *testing.T) {
	in := testInput()
	in.Config.Tty = true
	s := mustGenerate(t, in)
	if s.Version != specs.Version {
		t.Errorf("version %q", s.Version)
	}
	if s.Root == nil || s.Root.Path != in.Pod.RootfsPath || s.Root.Readonly {
		t.Errorf("root %+v", s.Root)
	}
	if s.Linux.CgroupsPath != "/aurae/pods/pod1/ctr1" {
		t.Errorf("cgroups path %q", s.Linux.CgroupsPath)
	}
	if !s.Process.Terminal {
		t.Error("terminal not set for a tty container")
	}
	if s.Process.NoNewPrivileges {
		t.Error("no_new_privileges set without the security context asking")
	}
	if s.Hostname != "web-host" {
		t.Errorf("hostname %q", s.Hostname)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Fatalf("marshal: %v", err)
	}
}

// TestGenerateOCIVersion: the spec's ociVersion is the runtime's when that
// is older (Debian 12's crun reads 1.0 only), else the one written here.
func TestGenerateOCIVersion(t *testing.T) {
	for _, tc := range []struct{ runtime, want string }{
		{"", specs.Version},
		{"1.0.0", "1.0.0"},
		{"1.0.2-dev", "1.0.2-dev"},
		{"99.0.0", specs.Version},
		{specs.Version, specs.Version},
		{"1.0", specs.Version},
		{"x.y.z", specs.Version},
	} {
		in := testInput()
		in.Pod.OCIVersion = tc.runtime
		if got := mustGenerate(t, in).Version; got != tc.want {
			t.Errorf("runtime reads %q: ociVersion %q, want %q", tc.runtime, got, tc.want)
		}
	}
}

// TestGeneratePersonality: linux.personality is set to Linux's default
// only when the pod's facts ask (a VM guest's runtime may run without
// address space randomization, which the container must not inherit).
func TestGeneratePersonality(t *testing.T) {
	if p := mustGenerate(t, testInput()).Linux.Personality; p != nil {
		t.Errorf("personality %+v without DefaultPersonality", p)
	}
	in := testInput()
	in.Pod.DefaultPersonality = true
	p := mustGenerate(t, in).Linux.Personality
	if p == nil || p.Domain != specs.PerLinux || len(p.Flags) != 0 {
		t.Errorf("personality %+v, want domain LINUX and no flags", p)
	}
}

func TestGenerateWithoutSandboxConfig(t *testing.T) {
	in := testInput()
	in.Sandbox = nil
	in.Pod.Hostname = "h"
	s := mustGenerate(t, in)
	if s.Hostname != "h" || s.Annotations[AnnotationSandboxName] != "" || s.Annotations[AnnotationSandboxID] != "pod1" {
		t.Errorf("hostname %q annotations %v", s.Hostname, s.Annotations)
	}
	if got := nsMap(s.Linux.Namespaces); got[specs.NetworkNamespace] != in.Pod.Network.Path {
		t.Errorf("namespaces %v", got)
	}
}

func TestGenerateRootAndPrivileges(t *testing.T) {
	in := testInput()
	in.RootfsReadonly = true
	if s := mustGenerate(t, in); !s.Root.Readonly {
		t.Error("RootfsReadonly ignored")
	}
	in = testInput()
	linuxSC(&in).ReadonlyRootfs = true
	linuxSC(&in).NoNewPrivs = true
	s := mustGenerate(t, in)
	if !s.Root.Readonly {
		t.Error("security context ReadonlyRootfs ignored")
	}
	if !s.Process.NoNewPrivileges {
		t.Error("NoNewPrivs ignored")
	}
}

func TestGenerateRefuses(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Input)
	}{
		{"no config", func(in *Input) { in.Config = nil }},
		{"no rootfs", func(in *Input) { in.Pod.RootfsPath = "" }},
		{"relative rootfs", func(in *Input) { in.Pod.RootfsPath = "rootfs" }},
		{"privileged container in unprivileged pod", func(in *Input) { linuxSC(in).Privileged = true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			tc.modify(&in)
			_, err := Generate(in)
			checkErr(t, err, errdefs.ErrInvalidArgument)
		})
	}
}

func TestAnnotations(t *testing.T) {
	in := testInput()
	in.Config.Annotations = map[string]string{
		"user.example/a":     "1",
		AnnotationSandboxID:  "forged",
		AnnotationImageName:  "forged",
		"io.kubernetes.x/yz": "kept",
	}
	tests := []struct {
		name      string
		imageName string
		wantImage string
	}{
		{"image from request", "", "example.com/app:1"},
		{"resolved image name", "example.com/app@sha256:abc", "example.com/app@sha256:abc"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := in
			in.ImageName = tc.imageName
			s := mustGenerate(t, in)
			want := map[string]string{
				"user.example/a":           "1",
				"io.kubernetes.x/yz":       "kept",
				AnnotationContainerType:    ContainerTypeContainer,
				AnnotationSandboxID:        "pod1",
				AnnotationSandboxName:      "web",
				AnnotationSandboxNamespace: "default",
				AnnotationSandboxUID:       "uid-1",
				AnnotationContainerName:    "app",
				AnnotationImageName:        tc.wantImage,
			}
			if len(s.Annotations) != len(want) {
				t.Errorf("annotations %v, want %v", s.Annotations, want)
			}
			for k, v := range want {
				if s.Annotations[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, s.Annotations[k], v)
				}
			}
		})
	}
}
