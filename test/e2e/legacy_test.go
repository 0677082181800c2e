package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	observeapi "github.com/aurae-runtime/aurae-cri/api/observe"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	runtimecellv0 "github.com/aurae-runtime/aurae-cri/api/runtime/cell/v0"
)

// sameNamespace tells whether pid is in the test's namespace of kind.
func sameNamespace(t *testing.T, pid int32, kind string) bool {
	t.Helper()
	theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		t.Fatal(err)
	}
	ours, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	return theirs == ours
}

// TestLegacyCellV0 drives aurae.runtime.cell.v0.CellService through its
// own method paths: a cell that shares all but the network namespace runs
// its executable in a network namespace of its own (and, always, a cgroup
// namespace of its own); one that shares none is isolated; mixed process
// namespaces are refused.
func TestLegacyCellV0(t *testing.T) {
	a := startAuraed(t)
	ctx := testContext(t)
	cells := runtimecellv0.NewCellServiceClient(a.Client().Conn)

	netOnly := &runtimecellv0.Cell{Name: "netonly", CpuShares: 100, NsShareMount: true, NsShareUts: true, NsShareIpc: true, NsSharePid: true, NsShareNet: false}
	if resp, err := cells.Allocate(ctx, &runtimecellv0.CellServiceAllocateRequest{Cell: netOnly}); err != nil || resp.GetCellName() != "netonly" {
		t.Fatalf("Allocate: %v, %v", resp, err)
	}
	started, err := cells.Start(ctx, &runtimecellv0.CellServiceStartRequest{CellName: "netonly", Executable: &runtimecellv0.Executable{Name: "sleeper", Command: "sleep 1000"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	pid := started.GetPid()
	if sameNamespace(t, pid, "net") {
		t.Error("ns_share_net: false, yet the executable is in the host's network namespace")
	}
	if !sameNamespace(t, pid, "uts") || !sameNamespace(t, pid, "mnt") {
		t.Error("shared uts and mount namespaces are not the host's")
	}
	if sameNamespace(t, pid, "cgroup") {
		t.Error("the cgroup namespace is the host's; want the cell's own")
	}
	// The same cell through today's service: the shares became its weight.
	list, err := a.Client().Cells.List(ctx, &cellsv0.CellServiceListRequest{})
	if err != nil || len(list.GetCells()) != 1 || list.GetCells()[0].GetCell().GetCpu().GetWeight() != 100 || !list.GetCells()[0].GetCell().GetIsolateNetwork() {
		t.Fatalf("the cell in aurae.cells.v0's List: %v, %v", list, err)
	}
	if _, err := cells.Stop(ctx, &runtimecellv0.CellServiceStopRequest{CellName: "netonly", ExecutableName: "sleeper"}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := cells.Free(ctx, &runtimecellv0.CellServiceFreeRequest{CellName: "netonly"}); err != nil {
		t.Fatalf("Free: %v", err)
	}

	// Nothing shared: as isolated as auraed makes a cell.
	if _, err := cells.Allocate(ctx, &runtimecellv0.CellServiceAllocateRequest{Cell: &runtimecellv0.Cell{Name: "alone"}}); err != nil {
		t.Fatal(err)
	}
	started, err = cells.Start(ctx, &runtimecellv0.CellServiceStartRequest{CellName: "alone", Executable: &runtimecellv0.Executable{Name: "sleeper", Command: "sleep 1000"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"pid", "ipc", "uts", "mnt", "net", "cgroup"} {
		if sameNamespace(t, started.GetPid(), kind) {
			t.Errorf("a cell that shares nothing runs in the host's %s namespace", kind)
		}
	}
	if _, err := cells.Free(ctx, &runtimecellv0.CellServiceFreeRequest{CellName: "alone"}); err != nil {
		t.Fatal(err)
	}

	_, err = cells.Allocate(ctx, &runtimecellv0.CellServiceAllocateRequest{Cell: &runtimecellv0.Cell{Name: "mixed", NsSharePid: true}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "must agree") {
		t.Fatalf("Allocate with mixed process namespaces = %v, want InvalidArgument", err)
	}
	if _, err := cells.Free(ctx, &runtimecellv0.CellServiceFreeRequest{CellName: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Free of an unknown cell = %v, want NotFound", err)
	}
}

func TestLegacyObserveStatus(t *testing.T) {
	a := startAuraed(t)
	resp, err := observeapi.NewObserveClient(a.Client().Conn).Status(testContext(t), &observeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetMeta().GetName() != "auraed" || !strings.Contains(resp.GetMeta().GetMessage(), "serving, version "+e2eVersion) {
		t.Fatalf("Status = %v", resp)
	}
}

// TestLegacyRunExecutable runs commands to completion through runtime.Core:
// echo's output and exit code, a failing command's stderr and code, an
// empty command refused; no cell is left behind.
func TestLegacyRunExecutable(t *testing.T) {
	a := startAuraed(t)
	ctx := testContext(t)
	core := runtimeapi.NewCoreClient(a.Client().Conn)

	resp, err := core.RunExecutable(ctx, &runtimeapi.Executable{Meta: &metaapi.AuraeMeta{Name: "greeting"}, Command: "echo hello aurae"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStdout() != "hello aurae\n" || resp.GetStderr() != "" || resp.GetExitCode() != "0" || resp.GetStatus() != metaapi.Status_STATUS_COMPLETE ||
		resp.GetProc().GetPid() == 0 || resp.GetMeta().GetName() != "greeting" {
		t.Fatalf("RunExecutable(echo) = %v", resp)
	}
	resp, err = core.RunExecutable(ctx, &runtimeapi.Executable{Command: `sh -c 'echo one; echo oops >&2; exit 3'`})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStdout() != "one\n" || resp.GetStderr() != "oops\n" || resp.GetExitCode() != "3" || resp.GetStatus() != metaapi.Status_STATUS_COMPLETE {
		t.Fatalf("RunExecutable(exit 3) = %v", resp)
	}
	resp, err = core.RunExecutable(ctx, &runtimeapi.Executable{Command: `sh -c 'kill -9 $$'`})
	if err != nil || resp.GetExitCode() != "137" || resp.GetStatus() != metaapi.Status_STATUS_ERROR || !strings.Contains(resp.GetMeta().GetMessage(), "signal 9") {
		t.Fatalf("RunExecutable(kill -9) = %v, %v", resp, err)
	}
	if _, err := core.RunExecutable(ctx, &runtimeapi.Executable{Command: "  "}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("RunExecutable of an empty command = %v, want InvalidArgument", err)
	}
	list, err := a.Client().Cells.List(ctx, &cellsv0.CellServiceListRequest{})
	if err != nil || len(list.GetCells()) != 0 {
		t.Fatalf("cells left after the runs: %v, %v", list, err)
	}
}
