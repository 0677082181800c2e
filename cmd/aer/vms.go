package main

import (
	"context"
	"flag"
	"strings"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
)

var vmsResource = resource{name: "vms", short: "microVMs whose init is a nested auraed", commands: []command{
	{use: "list", short: "the VMs", setup: vmsList},
	{use: "create ID", short: "define a VM (nothing runs yet)", args: 1, setup: vmsCreate},
	{use: "start ID", short: "boot a VM; prints the address of its auraed", args: 1, setup: vmsStart},
	{use: "stop ID", short: "stop a VM", args: 1, setup: vmsStop},
	{use: "free ID", short: "stop a VM and remove it", args: 1, setup: vmsFree},
}}

func vmsList(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := a.client.Vms.List(ctx, &vmsv0.VmServiceListRequest{})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"VM", "STATE", "VCPUS", "MEMORY (MiB)", "ACCELERATOR", "AURAED"}, func() [][]string {
			var rows [][]string
			for _, m := range resp.GetMachines() {
				rows = append(rows, []string{m.GetId(), enumName(m.GetState().String(), "VM_STATE_"), itoa(m.GetMachine().GetVcpuCount()),
					itoa(m.GetMachine().GetMemSizeMb()), orDash(m.GetAccelerator()), orDash(m.GetAuraedAddress())})
			}
			return rows
		})
	}
}

func vmsCreate(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	kernel := fs.String("kernel", "", "guest kernel image (make vm-image's vmlinux)")
	kernelArgs := fs.String("kernel-args", "", "guest kernel command line, space-separated")
	vcpus := fs.Uint("vcpus", 1, "virtual CPUs")
	memory := fs.Uint("memory-mib", 512, "memory in MiB")
	root := fs.String("root-drive", "", "root drive image")
	writable := fs.Bool("root-writable", false, "the root drive is writable")
	return func(ctx context.Context, a *app, args []string) error {
		m := &vmsv0.VirtualMachine{Id: args[0], KernelImgPath: *kernel, KernelArgs: strings.Fields(*kernelArgs), VcpuCount: uint32(*vcpus), MemSizeMb: uint32(*memory)}
		if *root != "" {
			m.RootDrive = &vmsv0.RootDrive{HostPath: *root, IsWriteable: *writable}
		}
		resp, err := a.client.Vms.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: m})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"VM"}, func() [][]string { return [][]string{{resp.GetVmId()}} })
	}
}

func vmsStart(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Vms.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"VM", "AURAED"}, func() [][]string { return [][]string{{args[0], resp.GetAuraedAddress()}} })
	}
}

func vmsStop(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Vms.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"STOPPED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}

func vmsFree(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Vms.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"FREED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}
