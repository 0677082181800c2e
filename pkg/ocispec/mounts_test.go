package ocispec

import (
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// mountLine is a mount in one line, for readable comparisons.
func mountLine(m specs.Mount) string {
	return m.Destination + " " + m.Type + " " + m.Source + " " + strings.Join(m.Options, ",")
}

func findMount(s *specs.Spec, dst string) (specs.Mount, bool) {
	for _, m := range s.Mounts {
		if m.Destination == dst {
			return m, true
		}
	}
	return specs.Mount{}, false
}

func destinations(s *specs.Spec) []string {
	var d []string
	for _, m := range s.Mounts {
		d = append(d, m.Destination)
	}
	return d
}

func TestDefaultMounts(t *testing.T) {
	in := testInput()
	s := mustGenerate(t, in)
	want := []string{
		"/proc proc proc nosuid,noexec,nodev",
		"/dev tmpfs tmpfs nosuid,strictatime,mode=755,size=65536k",
		"/sys sysfs sysfs nosuid,noexec,nodev,ro",
		"/dev/pts devpts devpts nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
		"/dev/shm tmpfs shm nosuid,noexec,nodev,mode=1777,size=65536k",
		"/dev/mqueue mqueue mqueue nosuid,noexec,nodev",
		"/sys/fs/cgroup cgroup cgroup nosuid,noexec,nodev,relatime,ro",
	}
	var got []string
	for _, m := range s.Mounts {
		got = append(got, mountLine(m))
	}
	if !slices.Equal(got, want) {
		t.Errorf("mounts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	privileged(&in)
	s = mustGenerate(t, in)
	if m, _ := findMount(s, "/sys"); slices.Contains(m.Options, "ro") {
		t.Errorf("privileged /sys is read-only: %v", m.Options)
	}
	if m, _ := findMount(s, "/sys/fs/cgroup"); !slices.Contains(m.Options, "rw") || slices.Contains(m.Options, "ro") {
		t.Errorf("privileged cgroupfs options %v", m.Options)
	}
}

func TestPodMounts(t *testing.T) {
	tests := []struct {
		name     string
		modify   func(*Input)
		want     map[string]string // destination → mountLine; "" = absent
		wantTmpf bool              // /dev/shm stays the private tmpfs
	}{
		{
			name: "pod files and shm",
			modify: func(in *Input) {
				in.Pod.ResolvConfPath, in.Pod.HostsPath, in.Pod.HostnamePath, in.Pod.ShmPath = "/p/resolv.conf", "/p/hosts", "/p/hostname", "/p/shm"
			},
			want: map[string]string{
				"/etc/resolv.conf": "/etc/resolv.conf bind /p/resolv.conf rbind,rprivate,rw",
				"/etc/hosts":       "/etc/hosts bind /p/hosts rbind,rprivate,rw",
				"/etc/hostname":    "/etc/hostname bind /p/hostname rbind,rprivate,rw",
				"/dev/shm":         "/dev/shm bind /p/shm rbind,rprivate,rw",
			},
		},
		{
			name: "read-only rootfs makes pod files read-only, not shm",
			modify: func(in *Input) {
				in.Pod.HostsPath, in.Pod.ShmPath = "/p/hosts", "/p/shm"
				linuxSC(in).ReadonlyRootfs = true
			},
			want: map[string]string{
				"/etc/hosts":    "/etc/hosts bind /p/hosts rbind,rprivate,ro",
				"/dev/shm":      "/dev/shm bind /p/shm rbind,rprivate,rw",
				"/etc/hostname": "",
			},
		},
		{
			name: "container's own mount wins",
			modify: func(in *Input) {
				in.Pod.HostsPath, in.Pod.ShmPath = "/p/hosts", "/p/shm"
				in.Config.Mounts = []*runtimeapi.Mount{
					{ContainerPath: "/etc/hosts", HostPath: "/mine/hosts", Readonly: true},
					{ContainerPath: "/dev/shm/", HostPath: "/mine/shm"},
				}
			},
			want: map[string]string{
				"/etc/hosts": "/etc/hosts bind /mine/hosts rbind,rprivate,ro",
				"/dev/shm":   "/dev/shm bind /mine/shm rbind,rprivate,rw",
			},
		},
		{
			name: "host ipc without a pod shm: the host's /dev/shm",
			modify: func(in *Input) {
				setSandboxNS(in, &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE})
			},
			want: map[string]string{"/dev/shm": "/dev/shm bind /dev/shm rbind,rprivate,rw"},
		},
		{
			name:     "no pod paths",
			modify:   func(*Input) {},
			want:     map[string]string{"/etc/hosts": "", "/etc/resolv.conf": "", "/etc/hostname": ""},
			wantTmpf: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			tc.modify(&in)
			s := mustGenerate(t, in)
			for dst, want := range tc.want {
				m, ok := findMount(s, dst)
				switch {
				case want == "" && ok:
					t.Errorf("unexpected mount %s", mountLine(m))
				case want != "" && !ok:
					t.Errorf("no mount at %s", dst)
				case want != "" && mountLine(m) != want:
					t.Errorf("mount %q, want %q", mountLine(m), want)
				}
			}
			if m, _ := findMount(s, "/dev/shm"); tc.wantTmpf && m.Type != "tmpfs" {
				t.Errorf("/dev/shm %s", mountLine(m))
			}
			checkUniqueAndOrdered(t, s)
		})
	}
}

// checkUniqueAndOrdered checks that no destination repeats and that every
// mount comes after the mounts of its parents.
func checkUniqueAndOrdered(t *testing.T, s *specs.Spec) {
	t.Helper()
	seen := map[string]int{}
	for i, m := range s.Mounts {
		if _, dup := seen[m.Destination]; dup {
			t.Errorf("two mounts at %s", m.Destination)
		}
		seen[m.Destination] = i
	}
	for i, m := range s.Mounts {
		for p := m.Destination; p != "/"; {
			p = p[:max(strings.LastIndex(p, "/"), 1)]
			if j, ok := seen[p]; ok && j > i {
				t.Errorf("%s mounted after its child %s", p, m.Destination)
			}
		}
	}
}

func TestContainerMounts(t *testing.T) {
	const (
		private = runtimeapi.MountPropagation_PROPAGATION_PRIVATE
		slave   = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
		shared  = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
	)
	tests := []struct {
		name            string
		mounts          []*runtimeapi.Mount
		want            []string // mount lines of the request's mounts, in order
		wantPropagation string
		noRRO           bool // the host lacks mount_setattr
		images          map[string]string
		wantErr         error
	}{
		{
			name: "readonly and read-write, file source, selinux relabel ignored",
			mounts: []*runtimeapi.Mount{
				{ContainerPath: "/data", HostPath: "/srv/data", Readonly: true, SelinuxRelabel: true},
				{ContainerPath: "/etc/app.conf", HostPath: "/srv/app.conf"},
			},
			want: []string{
				"/data bind /srv/data rbind,rprivate,ro",
				"/etc/app.conf bind /srv/app.conf rbind,rprivate,rw",
			},
		},
		{
			name: "propagation: slave",
			mounts: []*runtimeapi.Mount{
				{ContainerPath: "/a", HostPath: "/h/a", Propagation: slave},
				{ContainerPath: "/b", HostPath: "/h/b", Propagation: private},
			},
			want:            []string{"/a bind /h/a rbind,rslave,rw", "/b bind /h/b rbind,rprivate,rw"},
			wantPropagation: "rslave",
		},
		{
			name: "propagation: shared wins over slave",
			mounts: []*runtimeapi.Mount{
				{ContainerPath: "/a", HostPath: "/h/a", Propagation: shared},
				{ContainerPath: "/b", HostPath: "/h/b", Propagation: slave},
			},
			want:            []string{"/a bind /h/a rbind,rshared,rw", "/b bind /h/b rbind,rslave,rw"},
			wantPropagation: "rshared",
		},
		{
			name: "parents before children, paths cleaned",
			mounts: []*runtimeapi.Mount{
				{ContainerPath: "/a/b/c", HostPath: "/h/abc"},
				{ContainerPath: "/a/", HostPath: "/h/a/"},
				{ContainerPath: "/a/b", HostPath: "/h//ab"},
			},
			want: []string{
				"/a bind /h/a rbind,rprivate,rw",
				"/a/b bind /h/ab rbind,rprivate,rw",
				"/a/b/c bind /h/abc rbind,rprivate,rw",
			},
		},
		{name: "relative host path", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "h/a"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "empty host path", mounts: []*runtimeapi.Mount{{ContainerPath: "/a"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "relative container path", mounts: []*runtimeapi.Mount{{ContainerPath: "a", HostPath: "/h"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "container path with ..", mounts: []*runtimeapi.Mount{{ContainerPath: "/a/../../etc", HostPath: "/h"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "container path /", mounts: []*runtimeapi.Mount{{ContainerPath: "/", HostPath: "/h"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "two mounts at one place", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h"}, {ContainerPath: "/a/", HostPath: "/i"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown propagation", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Propagation: 9}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "recursive read-only", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Readonly: true, RecursiveReadOnly: true}}, want: []string{"/a bind /h rbind,rprivate,ro,rro"}},
		{name: "recursive read-only without mount_setattr", noRRO: true, mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Readonly: true, RecursiveReadOnly: true}}, wantErr: errdefs.ErrNotImplemented},
		{name: "recursive read-only without readonly", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", RecursiveReadOnly: true}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "recursive read-only, host to container", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Readonly: true, RecursiveReadOnly: true, Propagation: slave}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "recursive read-only, bidirectional", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Readonly: true, RecursiveReadOnly: true, Propagation: shared}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "image volume", images: map[string]string{"/a": "/iv/x"}, mounts: []*runtimeapi.Mount{{ContainerPath: "/a/", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "x"}}}, want: []string{"/a bind /iv/x rbind,rprivate,ro"}},
		{name: "image volume, noexec", images: map[string]string{"/a": "/iv/x"}, mounts: []*runtimeapi.Mount{{ContainerPath: "/a", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "x"}, MountOptions: []string{"noexec", "nodev"}}}, want: []string{"/a bind /iv/x rbind,rprivate,ro,noexec,nodev"}},
		{name: "image volume not read-only", images: map[string]string{"/a": "/iv/x"}, mounts: []*runtimeapi.Mount{{ContainerPath: "/a", Image: &runtimeapi.ImageSpec{Image: "x"}}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "image volume with a host path", images: map[string]string{"/a": "/iv/x"}, mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "x"}}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "image volume not prepared", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "x"}}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "image sub path without an image", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", ImageSubPath: "etc"}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown mount option", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", MountOptions: []string{"suid"}}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "noexec host mount", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", MountOptions: []string{"noexec"}}}, want: []string{"/a bind /h rbind,rprivate,rw,noexec"}},
		{name: "id-mapped", mounts: []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", UidMappings: []*runtimeapi.IDMapping{{Length: 1}}}}, wantErr: errdefs.ErrNotImplemented},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Config.Mounts = tc.mounts
			in.ImageVolumes = tc.images
			in.Host.RecursiveReadOnly = !tc.noRRO
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			var got []string
			for _, m := range s.Mounts {
				if m.Type == "bind" {
					got = append(got, mountLine(m))
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("mounts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if s.Linux.RootfsPropagation != tc.wantPropagation {
				t.Errorf("rootfs propagation %q, want %q", s.Linux.RootfsPropagation, tc.wantPropagation)
			}
			checkUniqueAndOrdered(t, s)
		})
	}
}

func TestMountOverridesDefaults(t *testing.T) {
	t.Run("a mount at /dev removes the defaults under /dev", func(t *testing.T) {
		in := testInput()
		in.Pod.ShmPath = "/p/shm"
		in.Config.Mounts = []*runtimeapi.Mount{{ContainerPath: "/dev", HostPath: "/dev"}}
		s := mustGenerate(t, in)
		got := destinations(s)
		want := []string{"/proc", "/sys", "/dev", "/dev/shm", "/sys/fs/cgroup"}
		if !slices.Equal(got, want) {
			t.Errorf("destinations %v, want %v", got, want)
		}
		if m, _ := findMount(s, "/dev"); m.Type != "bind" {
			t.Errorf("/dev %s", mountLine(m))
		}
	})
	t.Run("a mount at /sys comes before the default cgroupfs", func(t *testing.T) {
		in := testInput()
		in.Config.Mounts = []*runtimeapi.Mount{{ContainerPath: "/sys", HostPath: "/sys", Readonly: true}}
		s := mustGenerate(t, in)
		if m, _ := findMount(s, "/sys"); m.Type != "bind" {
			t.Errorf("/sys %s", mountLine(m))
		}
		checkUniqueAndOrdered(t, s)
	})
	t.Run("a mount at /proc/x comes after /proc", func(t *testing.T) {
		in := testInput()
		in.Config.Mounts = []*runtimeapi.Mount{{ContainerPath: "/proc/sys/x", HostPath: "/h"}, {ContainerPath: "/z", HostPath: "/h"}}
		s := mustGenerate(t, in)
		checkUniqueAndOrdered(t, s)
	})
}
