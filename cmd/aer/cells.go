package main

import (
	"context"
	"flag"
	"path"
	"time"

	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
)

var cellsResource = resource{name: "cells", short: "cells: cgroups and namespaces that run executables", commands: []command{
	{use: "list", short: "the cells, nested, with their executables", setup: cellsList},
	{use: "allocate NAME", short: "allocate a cell (parent/child nests it)", args: 1, setup: cellsAllocate},
	{use: "free NAME", short: "stop what runs in a cell and its children and remove them", args: 1, setup: cellsFree},
	{use: "start CELL NAME COMMAND", short: "run COMMAND (one argument, split by shell word rules, run without a shell) as executable NAME in CELL", args: 3, setup: cellsStart},
	{use: "stop CELL NAME", short: "stop an executable: SIGTERM, then SIGKILL after the grace period", args: 2, setup: cellsStop},
}}

func cellsList(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, _ []string) error {
		resp, err := a.client.Cells.List(ctx, &cellsv0.CellServiceListRequest{})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"CELL", "EXECUTABLE", "PID", "STATE", "EXIT", "COMMAND"}, func() [][]string {
			var rows [][]string
			var walk func(nodes []*cellsv0.CellGraphNode)
			walk = func(nodes []*cellsv0.CellGraphNode) {
				for _, n := range nodes {
					name := n.GetCell().GetName()
					if len(n.GetExecutables()) == 0 {
						rows = append(rows, []string{name, "-", "-", "-", "-", "-"})
					}
					for _, e := range n.GetExecutables() {
						exit := "-"
						if e.GetState() == cellsv0.ExecutableState_EXECUTABLE_STATE_EXITED {
							exit = itoa(e.GetExitCode())
							if e.GetSignal() != 0 {
								exit = "signal " + itoa(e.GetSignal())
							}
						}
						rows = append(rows, []string{name, e.GetName(), itoa(e.GetPid()),
							enumName(e.GetState().String(), "EXECUTABLE_STATE_"), exit, e.GetCommand()})
					}
					walk(n.GetChildren())
				}
			}
			walk(resp.GetCells())
			return rows
		})
	}
}

func cellsAllocate(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	cpuWeight := fs.Uint64("cpu-weight", 0, "relative CPU share, 1..10000 (0: unset)")
	cpuMax := fs.Int64("cpu-max", 0, "microseconds of CPU per period (0: no limit)")
	cpuPeriod := fs.Uint64("cpu-period", 0, "period in microseconds (0: the default, 100000)")
	cpus := fs.String("cpuset-cpus", "", "CPUs, e.g. 0-2,4")
	mems := fs.String("cpuset-mems", "", "memory nodes")
	memMax := fs.Int64("memory-max", 0, "memory limit in bytes (0: none)")
	memHigh := fs.Int64("memory-high", 0, "memory throttle limit in bytes (cgroup v2; 0: none)")
	isolateProcess := fs.Bool("isolate-process", false, "own pid, ipc, uts and mount namespaces")
	isolateNetwork := fs.Bool("isolate-network", false, "own network namespace (loopback only)")
	return func(ctx context.Context, a *app, args []string) error {
		cell := &cellsv0.Cell{Name: args[0], IsolateProcess: *isolateProcess, IsolateNetwork: *isolateNetwork}
		if *cpuWeight != 0 || *cpuMax != 0 || *cpuPeriod != 0 {
			cell.Cpu = &cellsv0.CpuController{}
			if *cpuWeight != 0 {
				cell.Cpu.Weight = cpuWeight
			}
			if *cpuMax != 0 {
				cell.Cpu.Max = cpuMax
			}
			if *cpuPeriod != 0 {
				cell.Cpu.Period = cpuPeriod
			}
		}
		if *cpus != "" || *mems != "" {
			cell.Cpuset = &cellsv0.CpusetController{}
			if *cpus != "" {
				cell.Cpuset.Cpus = cpus
			}
			if *mems != "" {
				cell.Cpuset.Mems = mems
			}
		}
		if *memMax != 0 || *memHigh != 0 {
			cell.Memory = &cellsv0.MemoryController{}
			if *memMax != 0 {
				cell.Memory.Max = memMax
			}
			if *memHigh != 0 {
				cell.Memory.High = memHigh
			}
		}
		resp, err := a.client.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: cell})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"CELL", "CGROUP V2"}, func() [][]string {
			return [][]string{{resp.GetCellName(), boolStr(resp.GetCgroupV2())}}
		})
	}
}

func cellsFree(*flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: args[0]})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"FREED"}, func() [][]string { return [][]string{{args[0]}} })
	}
}

func cellsStart(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	description := fs.String("description", "", "what the executable is for")
	return func(ctx context.Context, a *app, args []string) error {
		resp, err := a.client.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
			CellName:   proto.String(args[0]),
			Executable: &cellsv0.Executable{Name: args[1], Command: args[2], Description: *description},
		})
		if err != nil {
			return err
		}
		return a.emit(resp, []string{"EXECUTABLE", "PID"}, func() [][]string {
			return [][]string{{path.Join(args[0], args[1]), itoa(resp.GetPid())}}
		})
	}
}

func cellsStop(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	grace := fs.Duration("grace", 0, "time between SIGTERM and SIGKILL (0: auraed's --stop-grace-period)")
	return func(ctx context.Context, a *app, args []string) error {
		req := &cellsv0.CellServiceStopRequest{CellName: proto.String(args[0]), ExecutableName: args[1]}
		if *grace > 0 {
			req.GracePeriodMs = proto.Uint32(uint32(*grace / time.Millisecond))
		}
		resp, err := a.client.Cells.Stop(ctx, req)
		if err != nil {
			return err
		}
		st := resp.GetStatus()
		return a.emit(resp, []string{"EXECUTABLE", "PID", "EXIT", "SIGNAL"}, func() [][]string {
			return [][]string{{path.Join(args[0], st.GetName()), itoa(st.GetPid()), itoa(st.GetExitCode()), itoa(st.GetSignal())}}
		})
	}
}

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
