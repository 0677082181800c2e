// Package legacy serves the earlier generations of the Aurae API as thin
// adapters over today's cells: aurae.runtime.cell.v0.CellService,
// observe.Observe/Status, runtime.Core's RunExecutable (a throwaway cell)
// and schedule.* (a cell per scheduled executable). Each translates its
// messages and calls the cells; only the scheduler keeps state of its own
// (which executables are scheduled).
package legacy

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	runtimecellv0 "github.com/aurae-runtime/aurae-cri/api/runtime/cell/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// Cells is the current CellService.
type Cells interface {
	Allocate(context.Context, *cellsv0.CellServiceAllocateRequest) (*cellsv0.CellServiceAllocateResponse, error)
	Free(context.Context, *cellsv0.CellServiceFreeRequest) (*cellsv0.CellServiceFreeResponse, error)
	Start(context.Context, *cellsv0.CellServiceStartRequest) (*cellsv0.CellServiceStartResponse, error)
	Stop(context.Context, *cellsv0.CellServiceStopRequest) (*cellsv0.CellServiceStopResponse, error)
	List(context.Context, *cellsv0.CellServiceListRequest) (*cellsv0.CellServiceListResponse, error)
}

// CellV0 serves aurae.runtime.cell.v0.CellService.
type CellV0 struct {
	runtimecellv0.UnimplementedCellServiceServer
	cells Cells
}

// NewCellV0 returns the service over cells.
func NewCellV0(cells Cells) *CellV0 { return &CellV0{cells: cells} }

// cellOf translates an early cell: cpu_shares is the weight, cpu_quota the
// max per (default) period, cpu_cpus and cpu_mems the cpuset; a namespace
// not shared is the cell's own (mount, uts, ipc and pid together, as the
// cells isolate them), and the cgroup namespace is always its own.
func cellOf(c *runtimecellv0.Cell) (*cellsv0.Cell, error) {
	if c == nil {
		return nil, fmt.Errorf("cell is missing: %w", errdefs.ErrInvalidArgument)
	}
	process := []bool{c.GetNsShareMount(), c.GetNsShareUts(), c.GetNsShareIpc(), c.GetNsSharePid()}
	for _, shared := range process[1:] {
		if shared != process[0] {
			return nil, fmt.Errorf("cell %q: ns_share_mount, ns_share_uts, ns_share_ipc and ns_share_pid must agree: auraed isolates these namespaces together: %w", c.GetName(), errdefs.ErrInvalidArgument)
		}
	}
	out := &cellsv0.Cell{
		Name:           c.GetName(),
		IsolateProcess: !process[0],
		IsolateNetwork: !c.GetNsShareNet(),
		IsolateCgroup:  true,
	}
	if c.GetCpuShares() != 0 || c.GetCpuQuota() != 0 {
		out.Cpu = &cellsv0.CpuController{}
		if c.GetCpuShares() != 0 {
			out.Cpu.Weight = proto.Uint64(c.GetCpuShares())
		}
		if c.GetCpuQuota() != 0 {
			out.Cpu.Max = proto.Int64(c.GetCpuQuota())
		}
	}
	if c.GetCpuCpus() != "" || c.GetCpuMems() != "" {
		out.Cpuset = &cellsv0.CpusetController{}
		if c.GetCpuCpus() != "" {
			out.Cpuset.Cpus = proto.String(c.GetCpuCpus())
		}
		if c.GetCpuMems() != "" {
			out.Cpuset.Mems = proto.String(c.GetCpuMems())
		}
	}
	return out, nil
}

// Allocate implements CellService.Allocate.
func (s *CellV0) Allocate(ctx context.Context, req *runtimecellv0.CellServiceAllocateRequest) (*runtimecellv0.CellServiceAllocateResponse, error) {
	cell, err := cellOf(req.GetCell())
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	resp, err := s.cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: cell})
	if err != nil {
		return nil, err
	}
	return &runtimecellv0.CellServiceAllocateResponse{CellName: resp.GetCellName(), CgroupV2: resp.GetCgroupV2()}, nil
}

// Free implements CellService.Free.
func (s *CellV0) Free(ctx context.Context, req *runtimecellv0.CellServiceFreeRequest) (*runtimecellv0.CellServiceFreeResponse, error) {
	if _, err := s.cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: req.GetCellName()}); err != nil {
		return nil, err
	}
	return &runtimecellv0.CellServiceFreeResponse{}, nil
}

// Start implements CellService.Start.
func (s *CellV0) Start(ctx context.Context, req *runtimecellv0.CellServiceStartRequest) (*runtimecellv0.CellServiceStartResponse, error) {
	e := req.GetExecutable()
	resp, err := s.cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String(req.GetCellName()),
		Executable: &cellsv0.Executable{Name: e.GetName(), Command: e.GetCommand(), Description: e.GetDescription()},
	})
	if err != nil {
		return nil, err
	}
	return &runtimecellv0.CellServiceStartResponse{Pid: resp.GetPid()}, nil
}

// Stop implements CellService.Stop.
func (s *CellV0) Stop(ctx context.Context, req *runtimecellv0.CellServiceStopRequest) (*runtimecellv0.CellServiceStopResponse, error) {
	if _, err := s.cells.Stop(ctx, &cellsv0.CellServiceStopRequest{CellName: proto.String(req.GetCellName()), ExecutableName: req.GetExecutableName()}); err != nil {
		return nil, err
	}
	return &runtimecellv0.CellServiceStopResponse{}, nil
}
