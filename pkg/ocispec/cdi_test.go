package ocispec

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testCDISpec defines example.com/test=dev0: /dev/null at /dev/cdi-test,
// an environment variable and a bind mount.
const testCDISpec = `cdiVersion: "0.6.0"
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
        - hostPath: /tmp
          containerPath: /cdi-mnt
          options: [rbind, ro]
`

// cdiCache is a CDI cache over a directory holding testCDISpec.
func cdiCache(t *testing.T) (*CDICache, string) {
	t.Helper()
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Skipf("no /dev/null: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "test.yaml"), []byte(testCDISpec), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := NewCDICache([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func checkCDIInjected(t *testing.T, s *specs.Spec) {
	t.Helper()
	i := slices.IndexFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/cdi-test" })
	if i < 0 {
		t.Fatalf("no /dev/cdi-test in %+v", s.Linux.Devices)
	}
	d := s.Linux.Devices[i]
	if d.Type != "c" || d.Major != 1 || d.Minor != 3 {
		t.Errorf("/dev/cdi-test is %s %d:%d, want c 1:3", d.Type, d.Major, d.Minor)
	}
	if !slices.ContainsFunc(s.Linux.Resources.Devices, func(r specs.LinuxDeviceCgroup) bool {
		return r.Allow && r.Type == "c" && r.Major != nil && *r.Major == 1 && r.Minor != nil && *r.Minor == 3 && r.Access == "rwm"
	}) {
		t.Errorf("no device cgroup rule for 1:3 in %+v", s.Linux.Resources.Devices)
	}
	if !slices.Contains(s.Process.Env, "CDI_TEST=dev0") {
		t.Errorf("env %q lacks CDI_TEST=dev0", s.Process.Env)
	}
	if !slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool {
		return m.Destination == "/cdi-mnt" && m.Source == "/tmp" && slices.Contains(m.Options, "ro")
	}) {
		t.Errorf("no /cdi-mnt mount in %+v", s.Mounts)
	}
	// The first rule still denies every other device.
	if r := s.Linux.Resources.Devices[0]; r.Allow || r.Access != "rwm" {
		t.Errorf("first device rule %+v, want deny all", r)
	}
}

func TestCDIField(t *testing.T) {
	c, _ := cdiCache(t)
	in := testInput()
	in.CDI = c
	in.Config.CDIDevices = []*runtimeapi.CDIDevice{{Name: "example.com/test=dev0"}}
	checkCDIInjected(t, mustGenerate(t, in))
}

func TestCDIAnnotation(t *testing.T) {
	c, _ := cdiCache(t)
	in := testInput()
	in.CDI = c
	in.Config.Annotations = map[string]string{"cdi.k8s.io/test": "example.com/test=dev0"}
	s := mustGenerate(t, in)
	checkCDIInjected(t, s)
	if s.Annotations["cdi.k8s.io/test"] != "example.com/test=dev0" {
		t.Errorf("annotation not kept: %v", s.Annotations)
	}
}

func TestCDIRefreshed(t *testing.T) {
	c, dir := cdiCache(t)
	in := testInput()
	in.CDI = c
	in.Config.CDIDevices = []*runtimeapi.CDIDevice{{Name: "example.com/late=dev1"}}
	if _, err := Generate(in); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("before its spec: %v, want InvalidArgument", err)
	}
	late := strings.NewReplacer("example.com/test", "example.com/late", "dev0", "dev1").Replace(testCDISpec)
	if err := os.WriteFile(filepath.Join(dir, "late.yaml"), []byte(late), 0o644); err != nil {
		t.Fatal(err)
	}
	s := mustGenerate(t, in)
	if !slices.Contains(s.Process.Env, "CDI_TEST=dev1") {
		t.Errorf("env %q lacks CDI_TEST=dev1", s.Process.Env)
	}
}

func TestCDIRefuses(t *testing.T) {
	c, _ := cdiCache(t)
	tests := []struct {
		name    string
		cdi     bool
		field   []string
		annot   map[string]string
		mention string
	}{
		{"unknown device", true, []string{"example.com/test=dev0", "example.com/test=nope"}, nil, "example.com/test=nope"},
		{"unknown vendor", true, []string{"other.com/gpu=0"}, nil, "other.com/gpu=0"},
		{"unknown in annotation", true, nil, map[string]string{"cdi.k8s.io/x": "example.com/test=dev0,example.com/test=gone"}, "example.com/test=gone"},
		{"unqualified name", true, []string{"dev0"}, nil, `"dev0"`},
		{"unqualified in annotation", true, nil, map[string]string{"cdi.k8s.io/x": "example.com/test"}, "example.com/test"},
		{"no CDI configured", false, []string{"example.com/test=dev0"}, nil, "example.com/test=dev0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			if tc.cdi {
				in.CDI = c
			}
			for _, n := range tc.field {
				in.Config.CDIDevices = append(in.Config.CDIDevices, &runtimeapi.CDIDevice{Name: n})
			}
			in.Config.Annotations = tc.annot
			_, err := Generate(in)
			checkErr(t, err, errdefs.ErrInvalidArgument)
			if err != nil && !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not name %s", err, tc.mention)
			}
		})
	}
}

func TestCDIDevicesOrder(t *testing.T) {
	cfg := &runtimeapi.ContainerConfig{
		CDIDevices: []*runtimeapi.CDIDevice{{Name: "a.com/x=1"}},
		Annotations: map[string]string{
			"cdi.k8s.io/b": "b.com/x=2, a.com/x=1",
			"cdi.k8s.io/a": "c.com/x=3",
			"other/a":      "not=cdi",
		},
	}
	got, err := CDIDevices(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.com/x=1", "c.com/x=3", "b.com/x=2"}; !slices.Equal(got, want) {
		t.Errorf("CDIDevices = %q, want %q", got, want)
	}
	if got, err := CDIDevices(&runtimeapi.ContainerConfig{}); err != nil || got != nil {
		t.Errorf("no devices: %q, %v", got, err)
	}
}

func TestSplitCDISpecDirs(t *testing.T) {
	got, err := SplitCDISpecDirs(" /etc/cdi, /var/run/cdi,,/etc/cdi")
	if err != nil || !slices.Equal(got, []string{"/etc/cdi", "/var/run/cdi"}) {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := SplitCDISpecDirs(""); err != nil || got != nil {
		t.Errorf("empty: %q, %v", got, err)
	}
	if _, err := SplitCDISpecDirs("/etc/cdi,cdi"); err == nil {
		t.Error("relative directory accepted")
	}
}
