package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
)

var runtimeResource = resource{name: "runtime", short: "runtime.Core of the 2022 API: run an executable, a cell or a pod of images, a VM", commands: []command{
	{use: "run NAME COMMAND", short: "run COMMAND (one argument) to completion in a throwaway cell; print its output, exit with its status", args: 2, setup: runtimeRun},
	{use: "cell CELL [NAME=]IMAGE...", short: "pull the images and run them as the containers of pod CELL (free it with aer pods free CELL); give --timeout for slow pulls", args: -2, setup: runtimeCell},
	{use: "pod POD CELL/[NAME=]IMAGE...", short: "boot a VM and run the images as the cells' containers in it (free it with aer pods free POD); give --timeout 5m under TCG", args: -2, setup: runtimePod},
	{use: "vm NAME", short: "boot a VM of auraed's guest image (free it with aer vms free NAME)", args: 1, setup: runtimeVM},
	{use: "spawn", short: "boot a nested instance removed once it exits; prints its VM id and address", setup: runtimeSpawn},
}}

func runtimeRun(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	comment := fs.String("comment", "", "what the executable is for")
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := runtimeapi.NewCoreClient(a.client.Conn).RunExecutable(ctx,
			&runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: args[0]}, Command: args[1], Comment: *comment})
		if err != nil {
			return err
		}
		if a.output == "json" {
			if err := a.emit(resp, nil, nil); err != nil {
				return err
			}
		} else {
			_, _ = fmt.Fprint(a.stdout, resp.GetStdout())
			_, _ = fmt.Fprint(a.stderr, resp.GetStderr())
			if m := resp.GetMeta().GetMessage(); m != "" {
				printf(a.stderr, "aer runtime run: %s\n", m)
			}
		}
		if code, err := strconv.Atoi(resp.GetExitCode()); err == nil && code != 0 {
			return exitCodeError{code: code}
		}
		return nil
	}
}

// parseContainer reads [NAME=]IMAGE.
func parseContainer(arg string) *runtimeapi.Container {
	c := &runtimeapi.Container{Image: arg}
	if name, image, ok := strings.Cut(arg, "="); ok {
		c.Meta, c.Image = &metaapi.AuraeMeta{Name: name}, image
	}
	return c
}

func runtimeCell(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		cell := &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: args[0]}}
		for _, arg := range args[1:] {
			cell.Containers = append(cell.Containers, parseContainer(arg))
		}
		resp, err := runtimeapi.NewCoreClient(a.client.Conn).RunCell(ctx, cell)
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"CELL", "CONTAINER", "PID", "STATUS", "DETAILS"}, func() [][]string {
			return cellRows(resp)
		})
	}
}

func cellRows(cs *runtimeapi.CellStatus) [][]string {
	var rows [][]string
	for _, c := range cs.GetContainerStatuses() {
		rows = append(rows, []string{cs.GetMeta().GetName(), c.GetMeta().GetName(), itoa(c.GetProc().GetPid()),
			enumName(c.GetStatus().String(), "STATUS_"), orDash(c.GetMeta().GetMessage())})
	}
	return rows
}

func runtimePod(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		pod := &runtimeapi.Pod{Meta: &metaapi.AuraeMeta{Name: args[0]}}
		cells := map[string]*runtimeapi.Cell{}
		for _, arg := range args[1:] {
			name, ctr, ok := strings.Cut(arg, "/")
			if !ok || name == "" || ctr == "" {
				return usagef("%q: want CELL/[NAME=]IMAGE", arg)
			}
			c := cells[name]
			if c == nil {
				c = &runtimeapi.Cell{Meta: &metaapi.AuraeMeta{Name: name}}
				cells[name] = c
				pod.Cells = append(pod.Cells, c)
			}
			c.Containers = append(c.Containers, parseContainer(ctr))
		}
		resp, err := runtimeapi.NewCoreClient(a.client.Conn).RunPod(ctx, pod)
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"POD", "VM", "STATUS", "CONTAINERS"}, func() [][]string {
			return [][]string{{resp.GetMeta().GetName(), resp.GetSpawnResponse().GetVmId(),
				enumName(resp.GetStatus().String(), "STATUS_"), orDash(resp.GetMeta().GetMessage())}}
		})
	}
}

func runtimeVM(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := runtimeapi.NewCoreClient(a.client.Conn).RunVirtualMachine(ctx, &runtimeapi.VirtualMachine{Name: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"VM", "STATUS", "DETAILS"}, func() [][]string {
			return [][]string{{resp.GetMeta().GetName(), enumName(resp.GetStatus().String(), "STATUS_"), orDash(resp.GetMeta().GetMessage())}}
		})
	}
}

func runtimeSpawn(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := runtimeapi.NewCoreClient(a.client.Conn).Spawn(ctx, &runtimeapi.SpawnRequest{})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"VM", "AURAED"}, func() [][]string {
			return [][]string{{resp.GetVmId(), resp.GetAuraedAddress()}}
		})
	}
}
