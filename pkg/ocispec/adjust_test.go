package ocispec

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestAdjustmentApplied(t *testing.T) {
	in := testInput()
	base := mustGenerate(t, in)
	limit, adj := int64(32<<20), 500
	in.Adjustment = &Adjustment{
		By:          "NRI plugin 10-test",
		Annotations: map[string]string{"nri/x": "y"},
		Env:         []string{"NRI=1"},
		Mounts:      []specs.Mount{{Destination: "/nri", Type: "bind", Source: "/srv/nri", Options: []string{"ro"}}, {Destination: "/scratch", Type: "tmpfs", Source: "tmpfs"}},
		Devices:     []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}},
		DeviceRules: []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: i64p(10), Minor: i64p(229), Access: "rw"}},
		Resources:   &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}},
		Hooks:       &specs.Hooks{CreateRuntime: []specs.Hook{{Path: "/usr/bin/true"}}},
		Rlimits:     []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}},
		OOMScoreAdj: &adj,
	}
	s := mustGenerate(t, in)
	if s.Annotations["nri/x"] != "y" || !slices.Contains(s.Process.Env, "NRI=1") {
		t.Errorf("annotations %v env %v", s.Annotations, s.Process.Env)
	}
	var bind *specs.Mount
	for i := range s.Mounts {
		if s.Mounts[i].Destination == "/nri" {
			bind = &s.Mounts[i]
		}
	}
	if bind == nil || bind.Source != "/srv/nri" || !slices.Contains(bind.Options, "rbind") || !slices.Contains(bind.Options, "ro") {
		t.Errorf("bind mount %+v", bind)
	}
	if len(s.Mounts) != len(base.Mounts)+2 {
		t.Errorf("%d mounts, want %d", len(s.Mounts), len(base.Mounts)+2)
	}
	if !slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/fuse" }) ||
		len(s.Linux.Resources.Devices) != len(base.Linux.Resources.Devices)+1 {
		t.Errorf("devices %v rules %v", s.Linux.Devices, s.Linux.Resources.Devices)
	}
	if *s.Linux.Resources.Memory.Limit != limit || *s.Process.OOMScoreAdj != adj || len(s.Hooks.CreateRuntime) != 1 {
		t.Errorf("memory %v oom %v hooks %+v", *s.Linux.Resources.Memory.Limit, *s.Process.OOMScoreAdj, s.Hooks)
	}
	if !slices.Contains(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Soft: 100, Hard: 200}) {
		t.Errorf("rlimits %v", s.Process.Rlimits)
	}
}

func TestAdjustmentRefused(t *testing.T) {
	low := -1000
	for name, tc := range map[string]struct {
		adj  Adjustment
		want error
	}{
		"cri annotation":  {Adjustment{Annotations: map[string]string{AnnotationSandboxID: "x"}}, errdefs.ErrInvalidArgument},
		"proc mount":      {Adjustment{Mounts: []specs.Mount{{Destination: "/p", Type: "proc", Source: "proc"}}}, errdefs.ErrInvalidArgument},
		"relative source": {Adjustment{Mounts: []specs.Mount{{Destination: "/p", Type: "bind", Source: "etc"}}}, errdefs.ErrInvalidArgument},
		"dotdot dest":     {Adjustment{Mounts: []specs.Mount{{Destination: "/a/../..", Type: "tmpfs"}}}, errdefs.ErrInvalidArgument},
		"oom below floor": {Adjustment{OOMScoreAdj: &low}, errdefs.ErrInvalidArgument},
		"device off /dev": {Adjustment{Devices: []specs.LinuxDevice{{Path: "/etc/x", Type: "c"}}}, errdefs.ErrInvalidArgument},
		"blockio":         {Adjustment{Resources: &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{}}}, errdefs.ErrNotImplemented},
		"relative hook":   {Adjustment{Hooks: &specs.Hooks{Poststop: []specs.Hook{{Path: "true"}}}}, errdefs.ErrInvalidArgument},
		"soft above hard": {Adjustment{Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 2, Hard: 1}}}, errdefs.ErrInvalidArgument},
		"env without =":   {Adjustment{Env: []string{"X"}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			in := testInput()
			in.Pod.OOMScoreAdjMin = -500
			tc.adj.By = "NRI plugin 10-bad"
			in.Adjustment = &tc.adj
			_, err := Generate(in)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "10-bad") {
				t.Errorf("error %v, want %v naming the plugin", err, tc.want)
			}
		})
	}
}

// A VM pod's guest sees only the host paths its controller shared.
func TestAdjustmentHostPathInVMPod(t *testing.T) {
	in := testInput()
	in.Pod.MountSources = map[string]string{}
	in.Adjustment = &Adjustment{Mounts: []specs.Mount{{Destination: "/x", Type: "bind", Source: "/etc"}}}
	if _, err := Generate(in); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("error %v, want InvalidArgument", err)
	}
}
