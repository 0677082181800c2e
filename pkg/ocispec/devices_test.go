package ocispec

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func deviceLine(d specs.LinuxDevice) string {
	return fmt.Sprintf("%s %s %d:%d", d.Path, d.Type, d.Major, d.Minor)
}

func ruleLine(r specs.LinuxDeviceCgroup) string {
	s := fmt.Sprintf("%v %s", r.Allow, r.Type)
	if r.Major != nil && r.Minor != nil {
		s += fmt.Sprintf(" %d:%d", *r.Major, *r.Minor)
	}
	return s + " " + r.Access
}

// devDir makes a directory of device nodes (as root) with a regular file,
// a fifo and a nested directory among them.
func devDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making device nodes needs root")
	}
	dir := t.TempDir()
	mk := func(name string, mode uint32, major, minor uint32) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(p, mode, int(unix.Mkdev(major, minor))); err != nil {
			t.Skipf("mknod %s: %v", p, err)
		}
	}
	mk("null", unix.S_IFCHR|0o666, 1, 3)
	mk("sub/loop", unix.S_IFBLK|0o600, 7, 0)
	mk("pipe", unix.S_IFIFO|0o600, 0, 0)
	mk("pts/0", unix.S_IFCHR|0o600, 136, 0)
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestDevices(t *testing.T) {
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Skipf("no /dev/null: %v", err)
	}
	link := filepath.Join(t.TempDir(), "null-link")
	if err := os.Symlink("/dev/null", link); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(t.TempDir(), "regular")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deny := "false  rwm"
	tests := []struct {
		name      string
		devices   []*runtimeapi.Device
		dir       bool // add a made device directory
		wantDevs  []string
		wantRules []string
		wantErr   error
	}{
		{name: "none", wantRules: []string{deny}},
		{
			name:      "one device, container path and permissions",
			devices:   []*runtimeapi.Device{{HostPath: "/dev/null", ContainerPath: "/dev/mynull", Permissions: "rw"}},
			wantDevs:  []string{"/dev/mynull c 1:3"},
			wantRules: []string{deny, "true c 1:3 rw"},
		},
		{
			name:      "default container path and permissions",
			devices:   []*runtimeapi.Device{{HostPath: "/dev/null"}},
			wantDevs:  []string{"/dev/null c 1:3"},
			wantRules: []string{deny, "true c 1:3 rwm"},
		},
		{
			name:      "symlink to a device",
			devices:   []*runtimeapi.Device{{HostPath: link, ContainerPath: "/dev/x", Permissions: "r"}},
			wantDevs:  []string{"/dev/x c 1:3"},
			wantRules: []string{deny, "true c 1:3 r"},
		},
		{
			name:      "directory of devices",
			dir:       true,
			wantDevs:  []string{"/dev/d/null c 1:3", "/dev/d/sub/loop b 7:0"},
			wantRules: []string{deny, "true c 1:3 rwm", "true b 7:0 rwm"},
		},
		{name: "missing device", devices: []*runtimeapi.Device{{HostPath: "/dev/does-not-exist", ContainerPath: "/dev/x"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "not a device", devices: []*runtimeapi.Device{{HostPath: regular, ContainerPath: "/dev/x"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "relative host path", devices: []*runtimeapi.Device{{HostPath: "dev/null"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "relative container path", devices: []*runtimeapi.Device{{HostPath: "/dev/null", ContainerPath: "dev/null"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "container path with ..", devices: []*runtimeapi.Device{{HostPath: "/dev/null", ContainerPath: "/dev/../x"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "bad permissions", devices: []*runtimeapi.Device{{HostPath: "/dev/null", Permissions: "rwx"}}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Config.Devices = tc.devices
			if tc.dir {
				in.Config.Devices = append(in.Config.Devices, &runtimeapi.Device{HostPath: devDir(t), ContainerPath: "/dev/d"})
			}
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			var devs, rules []string
			for _, d := range s.Linux.Devices {
				devs = append(devs, deviceLine(d))
			}
			for _, r := range s.Linux.Resources.Devices {
				rules = append(rules, ruleLine(r))
			}
			if !slices.Equal(devs, tc.wantDevs) {
				t.Errorf("devices %q, want %q", devs, tc.wantDevs)
			}
			if !slices.Equal(rules, tc.wantRules) {
				t.Errorf("device rules %q, want %q", rules, tc.wantRules)
			}
		})
	}
}

func TestDeviceDetails(t *testing.T) {
	devs, err := devicesAt("/dev/null", "/dev/n")
	if err != nil {
		t.Skipf("/dev/null: %v", err)
	}
	d := devs[0]
	if d.FileMode == nil || d.FileMode.Perm() != 0o666 || d.UID == nil || d.GID == nil {
		t.Errorf("device %+v", d)
	}
}

func TestPrivilegedDevices(t *testing.T) {
	dir := devDir(t)
	old := hostDevDir
	hostDevDir = dir
	t.Cleanup(func() { hostDevDir = old })

	in := testInput()
	privileged(&in)
	in.Config.Devices = []*runtimeapi.Device{{HostPath: filepath.Join(dir, "null"), ContainerPath: filepath.Join(dir, "null"), Permissions: "r"}}
	s := mustGenerate(t, in)
	var devs []string
	for _, d := range s.Linux.Devices {
		devs = append(devs, deviceLine(d))
	}
	// pts is skipped, the requested device is not repeated, fifos and files are left out.
	want := []string{dir + "/null c 1:3", dir + "/sub/loop b 7:0"}
	if !slices.Equal(devs, want) {
		t.Errorf("devices %q, want %q", devs, want)
	}
	if len(s.Linux.Resources.Devices) != 1 || ruleLine(s.Linux.Resources.Devices[0]) != "true  rwm" {
		t.Errorf("device rules %+v, want allow all", s.Linux.Resources.Devices)
	}
}

func TestPrivilegedHostDevices(t *testing.T) {
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Skipf("no /dev/null: %v", err)
	}
	in := testInput()
	privileged(&in)
	s := mustGenerate(t, in)
	found := false
	for _, d := range s.Linux.Devices {
		found = found || d.Path == "/dev/null"
	}
	if !found {
		t.Errorf("privileged container without the host's /dev/null: %d devices", len(s.Linux.Devices))
	}
}
