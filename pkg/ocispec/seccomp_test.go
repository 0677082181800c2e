package ocispec

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const denyChmodProfile = `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}`

func podSC(in *Input) *runtimeapi.LinuxSandboxSecurityContext {
	if in.Sandbox.Linux == nil {
		in.Sandbox.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	if in.Sandbox.Linux.SecurityContext == nil {
		in.Sandbox.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{}
	}
	return in.Sandbox.Linux.SecurityContext
}

func TestSeccomp(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("deny-chmod.json", denyChmodProfile)
	bad := write("bad.json", "{not json")
	noAction := write("no-action.json", `{"syscalls":[]}`)
	big := write("big.json", `{"defaultAction":"SCMP_ACT_ALLOW","x":"`+string(make([]byte, maxSeccompProfileSize))+`"}`)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	profile := func(typ runtimeapi.SecurityProfile_ProfileType, ref string) *runtimeapi.SecurityProfile {
		return &runtimeapi.SecurityProfile{ProfileType: typ, LocalhostRef: ref}
	}
	const (
		rd    = runtimeapi.SecurityProfile_RuntimeDefault
		unc   = runtimeapi.SecurityProfile_Unconfined
		local = runtimeapi.SecurityProfile_Localhost
	)
	tests := []struct {
		name       string
		ctr, pod   *runtimeapi.SecurityProfile
		ctrPath    string
		podPath    string
		privileged bool
		want       string // "", "default" or "local"
		wantErr    error
	}{
		{name: "unset", want: ""},
		{name: "unconfined", ctr: profile(unc, ""), want: ""},
		{name: "runtime default", ctr: profile(rd, ""), want: "default"},
		{name: "localhost", ctr: profile(local, good), want: "local"},
		{name: "deprecated runtime/default", ctrPath: "runtime/default", want: "default"},
		{name: "deprecated docker/default", ctrPath: "docker/default", want: "default"},
		{name: "deprecated unconfined", ctrPath: "unconfined", want: ""},
		{name: "deprecated localhost", ctrPath: "localhost/" + good, want: "local"},
		{name: "field wins over deprecated path", ctr: profile(unc, ""), ctrPath: "runtime/default", want: ""},
		{name: "pod's as fallback", pod: profile(rd, ""), want: "default"},
		{name: "pod's deprecated as fallback", podPath: "localhost/" + good, want: "local"},
		{name: "container's wins over pod's", ctr: profile(unc, ""), pod: profile(rd, ""), want: ""},
		{name: "privileged gets none", ctr: profile(rd, ""), privileged: true, want: ""},
		{name: "localhost missing", ctr: profile(local, filepath.Join(dir, "missing.json")), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost relative", ctr: profile(local, "deny-chmod.json"), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost without ref", ctr: profile(local, ""), wantErr: errdefs.ErrInvalidArgument},
		{name: "deprecated localhost without path", ctrPath: "localhost/", wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost invalid JSON", ctr: profile(local, bad), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost without defaultAction", ctr: profile(local, noAction), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost too large", ctr: profile(local, big), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost is a FIFO", ctr: profile(local, fifo), wantErr: errdefs.ErrInvalidArgument},
		{name: "localhost is a directory", ctr: profile(local, dir), wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown deprecated", ctrPath: "fancy", wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown type", ctr: profile(7, ""), wantErr: errdefs.ErrInvalidArgument},
		{name: "pod's invalid", pod: profile(local, "rel"), wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			sc := linuxSC(&in)
			sc.Seccomp, sc.SeccompProfilePath = tc.ctr, tc.ctrPath //nolint:staticcheck // the deprecated field is tested
			psc := podSC(&in)
			psc.Seccomp, psc.SeccompProfilePath = tc.pod, tc.podPath //nolint:staticcheck // the deprecated field is tested
			if tc.privileged {
				privileged(&in)
			}
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			got := s.Linux.Seccomp
			switch tc.want {
			case "":
				if got != nil {
					t.Errorf("seccomp %+v, want none", got)
				}
			case "default":
				if got == nil || got.DefaultAction != specs.ActErrno || len(got.Syscalls) < 10 {
					t.Fatalf("seccomp %+v, want containerd's default", got)
				}
			case "local":
				if got == nil || got.DefaultAction != specs.ActAllow || len(got.Syscalls) != 1 || got.Syscalls[0].Action != specs.ActErrno ||
					!slices.Equal(got.Syscalls[0].Names, []string{"chmod", "fchmod", "fchmodat"}) {
					t.Errorf("seccomp %+v, want the file's", got)
				}
			}
		})
	}
}

// TestSeccompDefaultFollowsCapabilities: containerd's default profile
// allows the syscalls of the capabilities the container has, so it is made
// after them.
func TestSeccompDefaultFollowsCapabilities(t *testing.T) {
	allows := func(s *specs.Spec, name string) bool {
		for _, sc := range s.Linux.Seccomp.Syscalls {
			if sc.Action == specs.ActAllow && slices.Contains(sc.Names, name) {
				return true
			}
		}
		return false
	}
	in := testInput()
	linuxSC(&in).Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	if s := mustGenerate(t, in); allows(s, "mount") {
		t.Error("mount allowed without CAP_SYS_ADMIN")
	}
	linuxSC(&in).Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN"}}
	if s := mustGenerate(t, in); !allows(s, "mount") {
		t.Error("mount not allowed with CAP_SYS_ADMIN")
	}
}

func TestAppArmor(t *testing.T) {
	profile := func(typ runtimeapi.SecurityProfile_ProfileType, ref string) *runtimeapi.SecurityProfile {
		return &runtimeapi.SecurityProfile{ProfileType: typ, LocalhostRef: ref}
	}
	const (
		rd    = runtimeapi.SecurityProfile_RuntimeDefault
		unc   = runtimeapi.SecurityProfile_Unconfined
		local = runtimeapi.SecurityProfile_Localhost
	)
	withDefault := []string{"mine", DefaultAppArmorProfile}
	tests := []struct {
		name       string
		enabled    bool
		loaded     []string
		ctr, pod   *runtimeapi.SecurityProfile
		deprecated string
		privileged bool
		want       string
		wantErr    error
	}{
		{name: "disabled: unset", want: ""},
		{name: "disabled: runtime default", ctr: profile(rd, ""), want: ""},
		{name: "disabled: unconfined", ctr: profile(unc, ""), want: ""},
		{name: "disabled: localhost", ctr: profile(local, "mine"), wantErr: errdefs.ErrInvalidArgument},
		{name: "disabled: deprecated localhost", deprecated: "localhost/mine", wantErr: errdefs.ErrInvalidArgument},
		{name: "disabled: pod's localhost", pod: profile(local, "mine"), wantErr: errdefs.ErrInvalidArgument},
		{name: "enabled: localhost loaded", enabled: true, loaded: []string{"mine"}, ctr: profile(local, "mine"), want: "mine"},
		{name: "enabled: deprecated localhost loaded", enabled: true, loaded: []string{"mine"}, deprecated: "localhost/mine", want: "mine"},
		{name: "enabled: pod's localhost", enabled: true, loaded: []string{"mine"}, pod: profile(local, "mine"), want: "mine"},
		{name: "enabled: container's wins", enabled: true, loaded: withDefault, ctr: profile(unc, ""), pod: profile(local, "mine"), want: ""},
		{name: "enabled: localhost not loaded", enabled: true, loaded: []string{"other"}, ctr: profile(local, "mine"), wantErr: errdefs.ErrInvalidArgument},
		{name: "enabled: runtime default loaded", enabled: true, loaded: withDefault, ctr: profile(rd, ""), want: DefaultAppArmorProfile},
		{name: "enabled: deprecated runtime/default", enabled: true, loaded: withDefault, deprecated: "runtime/default", want: DefaultAppArmorProfile},
		{name: "enabled: runtime default not loaded", enabled: true, loaded: []string{"mine"}, ctr: profile(rd, ""), wantErr: errdefs.ErrFailedPrecondition},
		{name: "enabled: unset gets the default when loaded", enabled: true, loaded: withDefault, want: DefaultAppArmorProfile},
		{name: "enabled: unset, default not loaded", enabled: true, loaded: []string{"mine"}, want: ""},
		{name: "enabled: unconfined", enabled: true, loaded: withDefault, ctr: profile(unc, ""), want: ""},
		{name: "enabled: privileged gets no default", enabled: true, loaded: withDefault, ctr: profile(rd, ""), privileged: true, want: ""},
		{name: "unknown deprecated", deprecated: "fancy", wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Host.AppArmor = tc.enabled
			in.Host.AppArmorProfiles = func() ([]string, error) { return tc.loaded, nil }
			sc := linuxSC(&in)
			sc.Apparmor, sc.ApparmorProfile = tc.ctr, tc.deprecated //nolint:staticcheck // the deprecated field is tested
			podSC(&in).Apparmor = tc.pod
			if tc.privileged {
				privileged(&in)
			}
			s, err := Generate(in)
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			if s.Process.ApparmorProfile != tc.want {
				t.Errorf("apparmor profile %q, want %q", s.Process.ApparmorProfile, tc.want)
			}
		})
	}
}

func TestSELinux(t *testing.T) {
	label := &runtimeapi.SELinuxOption{Type: "container_t"}
	tests := []struct {
		name     string
		enabled  bool
		ctr, pod *runtimeapi.SELinuxOption
		relabel  bool
		wantErr  error
	}{
		{name: "disabled: labels ignored", ctr: label, pod: label, relabel: true},
		{name: "enabled: no label", enabled: true, ctr: &runtimeapi.SELinuxOption{}},
		{name: "enabled: container label", enabled: true, ctr: label, wantErr: errdefs.ErrFailedPrecondition},
		{name: "enabled: pod label", enabled: true, pod: &runtimeapi.SELinuxOption{Level: "s0:c1,c2"}, wantErr: errdefs.ErrFailedPrecondition},
		{name: "enabled: mount relabel", enabled: true, relabel: true, wantErr: errdefs.ErrFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.Host.SELinux = tc.enabled
			linuxSC(&in).SelinuxOptions = tc.ctr
			podSC(&in).SelinuxOptions = tc.pod
			in.Config.Mounts = []*runtimeapi.Mount{{ContainerPath: "/a", HostPath: "/h", SelinuxRelabel: tc.relabel}}
			s, err := Generate(in)
			if checkErr(t, err, tc.wantErr) && s.Process.SelinuxLabel != "" {
				t.Errorf("selinux label %q", s.Process.SelinuxLabel)
			}
		})
	}
}

func TestProbeHost(t *testing.T) {
	h := ProbeHost()
	_, err := os.Stat("/sys/module/apparmor/parameters/enabled")
	if err != nil && h.AppArmor {
		t.Error("AppArmor without its module")
	}
	_, err = os.Stat("/sys/fs/selinux/enforce")
	if (err == nil) != h.SELinux {
		t.Errorf("SELinux %v, enforce file: %v", h.SELinux, err)
	}
	t.Logf("host features: %+v", h)
}
