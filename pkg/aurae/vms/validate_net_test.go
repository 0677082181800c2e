package vms

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

func TestValidNetAndShares(t *testing.T) {
	dir := t.TempDir()
	good := &vmsv0.VirtualMachine{
		Id:                   "v",
		NetworkNamespacePath: "/proc/self/ns/net",
		NetworkInterfaces:    []*vmsv0.NetworkInterface{{TapName: "tap0", MacAddress: "4a:1b:2c:3d:4e:5f"}},
		SharedDirectories:    []*vmsv0.SharedDirectory{{Tag: "aurae-shared", HostPath: dir, IsWriteable: true}},
	}
	if err := validNetAndShares(good); err != nil {
		t.Fatal(err)
	}
	var cfg hypervisor.VMConfig
	netAndShares(good, &cfg)
	if cfg.NetNSPath != "/proc/self/ns/net" || len(cfg.NICs) != 1 || cfg.NICs[0].MAC == "" || len(cfg.Shares) != 1 || cfg.Shares[0].ReadOnly {
		t.Fatalf("boot config %+v", cfg)
	}
	for name, m := range map[string]*vmsv0.VirtualMachine{
		"relative netns":  {NetworkNamespacePath: "ns/net"},
		"missing netns":   {NetworkNamespacePath: "/nonexistent/ns"},
		"long tap":        {NetworkInterfaces: []*vmsv0.NetworkInterface{{TapName: "a-very-long-tap-name"}}},
		"duplicate tap":   {NetworkInterfaces: []*vmsv0.NetworkInterface{{TapName: "tap0"}, {TapName: "tap0"}}},
		"bad mac":         {NetworkInterfaces: []*vmsv0.NetworkInterface{{TapName: "tap0", MacAddress: "nope"}}},
		"empty tag":       {SharedDirectories: []*vmsv0.SharedDirectory{{HostPath: dir}}},
		"missing dir":     {SharedDirectories: []*vmsv0.SharedDirectory{{Tag: "x", HostPath: "/nonexistent/dir"}}},
		"relative dir":    {SharedDirectories: []*vmsv0.SharedDirectory{{Tag: "x", HostPath: "d"}}},
		"duplicate tag":   {SharedDirectories: []*vmsv0.SharedDirectory{{Tag: "x", HostPath: dir}, {Tag: "x", HostPath: dir}}},
		"file not a dir ": {SharedDirectories: []*vmsv0.SharedDirectory{{Tag: "x", HostPath: "/proc/self/status"}}},
	} {
		if err := validNetAndShares(m); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
}
