package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// TestCellLimitsReadBack allocates a cell with every cpu, cpuset and memory
// limit and reads each back from the cgroup files the kernel serves: cpu.max,
// cpu.weight, cpuset.cpus/mems, memory.max/high/low on a cgroup v2 host (the
// VM of make test-cgroup2), their v1 counterparts on a v1 or hybrid host,
// where memory high and min are refused naming the field.
func TestCellLimitsReadBack(t *testing.T) {
	a := startAuraed(t)
	cell := &cellsv0.Cell{
		Name:   "limits",
		Cpu:    &cellsv0.CpuController{Weight: proto.Uint64(200), Max: proto.Int64(20000), Period: proto.Uint64(50000)},
		Cpuset: &cellsv0.CpusetController{Cpus: proto.String("0"), Mems: proto.String("0")},
		Memory: &cellsv0.MemoryController{Max: proto.Int64(64 << 20), High: proto.Int64(48 << 20), Low: proto.Int64(8 << 20)},
	}
	type file struct{ controller, name, want string }
	var files []file
	if cgroup.Unified() {
		files = []file{
			{"cpu", "cpu.max", "20000 50000"},
			{"cpu", "cpu.weight", "200"},
			{"cpuset", "cpuset.cpus", "0"},
			{"cpuset", "cpuset.mems", "0"},
			{"memory", "memory.max", "67108864"},
			{"memory", "memory.high", "50331648"},
			{"memory", "memory.low", "8388608"},
		}
	} else {
		_, err := a.Client().Cells.Allocate(t.Context(), &cellsv0.CellServiceAllocateRequest{Cell: cell})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "memory high") {
			t.Fatalf("memory high on cgroup v1: %v, want FailedPrecondition naming memory high", err)
		}
		cell.Memory.High = nil
		files = []file{
			{"cpu", "cpu.cfs_quota_us", "20000"},
			{"cpu", "cpu.cfs_period_us", "50000"},
			{"cpu", "cpu.shares", strconv.FormatUint(cgroup.SharesFromWeight(200), 10)},
			{"cpuset", "cpuset.cpus", "0"},
			{"cpuset", "cpuset.mems", "0"},
			{"memory", "memory.limit_in_bytes", "67108864"},
			{"memory", "memory.soft_limit_in_bytes", "8388608"},
		}
	}
	allocateCell(t, a, cell)
	for _, f := range files {
		p := cgroup.ControllerFile(cellCgroup(a, "limits"), f.controller, f.name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", f.name, err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != f.want {
			t.Errorf("%s = %q, want %q", p, got, f.want)
		}
	}
	// A process started in the cell is in the cgroup the limits are on.
	pid := startIn(t, a, "limits", "sleeper", "sleep 30")
	b, err := os.ReadFile(cgroup.ControllerFile(cellCgroup(a, "limits"), "memory", "cgroup.procs"))
	if err != nil || !containsField(string(b), pid) {
		t.Errorf("pid %d not in the cell's cgroup.procs %q (%v)", pid, b, err)
	}
}

func containsField(s string, pid int64) bool {
	for _, f := range strings.Fields(s) {
		if f == strconv.FormatInt(pid, 10) {
			return true
		}
	}
	return false
}
