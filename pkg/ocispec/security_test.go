package ocispec

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCapabilities(t *testing.T) {
	without := func(drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(DefaultCapabilities), func(c string) bool { return slices.Contains(drop, c) })
	}
	runtimeCaps := []string{"CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
	allButSysAdmin := slices.DeleteFunc(slices.Clone(KnownCapabilities), func(c string) bool { return c == "CAP_SYS_ADMIN" })
	tests := []struct {
		name       string
		add, drop  []string
		privileged bool
		all        []string
		want       []string
		wantErr    bool
	}{
		{name: "default set", want: DefaultCapabilities},
		{name: "add with and without CAP_, any case", add: []string{"NET_ADMIN", "cap_sys_time", "chown"}, want: append(slices.Clone(DefaultCapabilities), "CAP_NET_ADMIN", "CAP_SYS_TIME")},
		{name: "drop", drop: []string{"NET_RAW", "CAP_MKNOD"}, want: without("CAP_NET_RAW", "CAP_MKNOD")},
		{name: "drop ALL then add", drop: []string{"ALL"}, add: []string{"NET_BIND_SERVICE"}, want: []string{"CAP_NET_BIND_SERVICE"}},
		{name: "drop all, lower case", drop: []string{"all"}, want: nil},
		{name: "add ALL then drop", add: []string{"ALL"}, drop: []string{"SYS_ADMIN"}, want: allButSysAdmin},
		{name: "add ALL uses the runtime's set", add: []string{"ALL"}, all: runtimeCaps, want: runtimeCaps},
		{name: "add ALL and drop ALL", add: []string{"ALL"}, drop: []string{"ALL"}, want: nil},
		{name: "privileged gets the runtime's set", privileged: true, all: runtimeCaps, drop: []string{"ALL"}, want: runtimeCaps},
		{name: "privileged without a runtime set gets every known one", privileged: true, want: KnownCapabilities},
		{name: "unknown add", add: []string{"FLY"}, wantErr: true},
		{name: "unknown drop", drop: []string{"CAP_FLY"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			in.AllCapabilities = tc.all
			sc := linuxSC(&in)
			sc.Capabilities = &runtimeapi.Capability{AddCapabilities: tc.add, DropCapabilities: tc.drop}
			if tc.privileged {
				privileged(&in)
			}
			s, err := Generate(in)
			if tc.wantErr {
				checkErr(t, err, errdefs.ErrInvalidArgument)
				return
			}
			checkErr(t, err, nil)
			want := tc.want
			c := s.Process.Capabilities
			for name, got := range map[string][]string{"bounding": c.Bounding, "effective": c.Effective, "permitted": c.Permitted} {
				if !slices.Equal(got, want) {
					t.Errorf("%s %q, want %q", name, got, want)
				}
			}
			if len(c.Ambient) != 0 || len(c.Inheritable) != 0 {
				t.Errorf("ambient %q inheritable %q", c.Ambient, c.Inheritable)
			}
		})
	}
}

func TestCapabilitySetsAreDistinct(t *testing.T) {
	s := mustGenerate(t, testInput())
	s.Process.Capabilities.Bounding[0] = "CHANGED"
	if s.Process.Capabilities.Effective[0] == "CHANGED" || DefaultCapabilities[0] == "CHANGED" {
		t.Error("capability sets share their backing array")
	}
}

func TestCapabilitiesOfMask(t *testing.T) {
	tests := []struct {
		mask    string
		want    []string
		wantErr bool
	}{
		{mask: "0000000000000000", want: []string{}},
		{mask: "0000000000000001", want: []string{"CAP_CHOWN"}},
		{mask: "00000000a80425fb", want: []string{
			"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
			"CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
		}},
		{mask: "000001ffffffffff", want: KnownCapabilities},
		{mask: "ffffffffffffffff", want: KnownCapabilities},
		{mask: "xyz", wantErr: true},
	}
	for _, tc := range tests {
		got, err := capabilitiesOfMask(tc.mask)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("capabilitiesOfMask(%q) = %q, %v; want %q", tc.mask, got, err, tc.want)
		}
	}
}

func TestCurrentCapabilities(t *testing.T) {
	caps, err := CurrentCapabilities()
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, c := range caps {
		if !slices.Contains(KnownCapabilities, c) {
			t.Errorf("unknown capability %q", c)
		}
	}
}

func TestMaskedPaths(t *testing.T) {
	tests := []struct {
		name                   string
		masked, readonly       []string
		privileged             bool
		wantMasked, wantReadon []string
	}{
		{name: "defaults", wantMasked: DefaultMaskedPaths, wantReadon: DefaultReadonlyPaths},
		{name: "security context overrides", masked: []string{"/proc/x"}, readonly: []string{"/proc/y"}, wantMasked: []string{"/proc/x"}, wantReadon: []string{"/proc/y"}},
		{name: "only masked given", masked: []string{"/proc/x"}, wantMasked: []string{"/proc/x"}, wantReadon: DefaultReadonlyPaths},
		{name: "privileged: none", masked: []string{"/proc/x"}, privileged: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := testInput()
			sc := linuxSC(&in)
			sc.MaskedPaths, sc.ReadonlyPaths = tc.masked, tc.readonly
			if tc.privileged {
				privileged(&in)
			}
			s := mustGenerate(t, in)
			if !slices.Equal(s.Linux.MaskedPaths, tc.wantMasked) || !slices.Equal(s.Linux.ReadonlyPaths, tc.wantReadon) {
				t.Errorf("masked %q readonly %q, want %q %q", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths, tc.wantMasked, tc.wantReadon)
			}
		})
	}
}
