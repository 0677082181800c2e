package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

func allocateCell(t *testing.T, a *Auraed, c *cellsv0.Cell) {
	t.Helper()
	if _, err := a.Client().Cells.Allocate(t.Context(), &cellsv0.CellServiceAllocateRequest{Cell: c}); err != nil {
		t.Fatalf("allocate %s: %v", c.GetName(), err)
	}
}

func startIn(t *testing.T, a *Auraed, cell, name, command string) int64 {
	t.Helper()
	resp, err := a.Client().Cells.Start(t.Context(), &cellsv0.CellServiceStartRequest{
		CellName: proto.String(cell), Executable: &cellsv0.Executable{Name: name, Command: command},
	})
	if err != nil {
		t.Fatalf("start %q in %s: %v", command, cell, err)
	}
	return int64(resp.GetPid())
}

// executable finds an executable's status in List.
func executable(t *testing.T, a *Auraed, cell, name string) *cellsv0.ExecutableStatus {
	t.Helper()
	resp, err := a.Client().Cells.List(t.Context(), &cellsv0.CellServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var find func([]*cellsv0.CellGraphNode) *cellsv0.ExecutableStatus
	find = func(nodes []*cellsv0.CellGraphNode) *cellsv0.ExecutableStatus {
		for _, n := range nodes {
			if n.GetCell().GetName() == cell {
				for _, e := range n.GetExecutables() {
					if e.GetName() == name {
						return e
					}
				}
			}
			if e := find(n.GetChildren()); e != nil {
				return e
			}
		}
		return nil
	}
	return find(resp.GetCells())
}

// waitExited polls List until the executable has ended.
func waitExited(t *testing.T, a *Auraed, cell, name string) *cellsv0.ExecutableStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if e := executable(t, a, cell, name); e != nil && e.GetState() != cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING {
			return e
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s in %s did not exit", name, cell)
	return nil
}

// output collects one stream of a process until it ends.
func output(t *testing.T, a *Auraed, pid int64, ch observev0.LogChannelType) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	stream, err := a.Client().Observe.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: ch, ProcessId: pid})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for {
		item, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return lines
		}
		if err != nil {
			t.Fatalf("output of %d after %d lines: %v", pid, len(lines), err)
		}
		lines = append(lines, item.GetLine())
	}
}

func cellCgroup(a *Auraed, cell string) string { return a.CgroupRoot + "/" + cell }

func TestMemoryLimitKillsOnOOM(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "mem", Memory: &cellsv0.MemoryController{Max: proto.Int64(32 << 20)}})
	file, limit := "memory.limit_in_bytes", "33554432"
	if cgroup.Unified() {
		file = "memory.max"
	}
	b, err := os.ReadFile(cgroup.ControllerFile(cellCgroup(a, "mem"), "memory", file))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != limit {
		t.Fatalf("%s = %s, want %s", file, got, limit)
	}

	events := signalEvents(t, a, "mem")
	// dd allocates and fills one 64 MiB buffer.
	pid := startIn(t, a, "mem", "hog", "dd if=/dev/zero of=/dev/null bs=64M count=1")
	select {
	case got := <-events:
		if got.GetProcessId() != pid || got.GetSignal() != int32(syscall.SIGKILL) || got.GetExecutableName() != "hog" {
			t.Fatalf("signal event %v, want SIGKILL for hog (pid %d)", got, pid)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no signal event for the OOM kill")
	}
	st := waitExited(t, a, "mem", "hog")
	if st.GetSignal() != int32(syscall.SIGKILL) {
		t.Fatalf("hog ended with %v, want SIGKILL", st)
	}
}

func TestCPUMaxThrottles(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "cpu", Cpu: &cellsv0.CpuController{Max: proto.Int64(10000), Period: proto.Uint64(100000)}})
	startIn(t, a, "cpu", "spin", `sh -c 'while :; do :; done'`)
	cg, err := cgroup.Load(cellCgroup(a, "cpu"))
	if err != nil {
		t.Fatal(err)
	}
	before, err := cg.CPUUsage()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(2 * time.Second)
	after, err := cg.CPUUsage()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0)
	share := float64(after-before) / float64(wall)
	t.Logf("busy loop used %.1f%% of one CPU over %v", share*100, wall.Round(time.Millisecond))
	if share > 0.15 {
		t.Fatalf("busy loop got %.1f%% of a CPU, want at most ~10%% (cpu max 10000/100000)", share*100)
	}
	if share < 0.02 {
		t.Fatalf("busy loop got %.1f%% of a CPU: did it run?", share*100)
	}
	if _, err := a.Client().Cells.Stop(t.Context(), &cellsv0.CellServiceStopRequest{CellName: proto.String("cpu"), ExecutableName: "spin", GracePeriodMs: proto.Uint32(1000)}); err != nil {
		t.Fatal(err)
	}
}

func TestIsolatedCellThroughTheAPI(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "box", IsolateProcess: true, IsolateNetwork: true})
	startIn(t, a, "box", "a", "sleep 300")
	pid := startIn(t, a, "box", "b", `sh -c 'echo pid=$$; hostname; ls /proc; cat /proc/net/dev'`)
	lines := output(t, a, pid, observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT)
	text := strings.Join(lines, "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "pid=") {
		t.Fatalf("output: %q", text)
	}
	if n, _ := strconv.Atoi(strings.TrimPrefix(lines[0], "pid=")); n < 2 || n > 10 {
		t.Errorf("pid inside the cell = %d, want a low pid", n)
	}
	if lines[1] != "box" {
		t.Errorf("hostname = %q, want box", lines[1])
	}
	procs := 0
	for _, l := range lines[2:] {
		if _, err := strconv.Atoi(l); err == nil {
			procs++
		}
	}
	if procs < 3 || procs > 4 {
		t.Errorf("the cell sees %d processes, want init, a, and b (with its ls): %q", procs, text)
	}
	if strings.Contains(text, "eth") || !strings.Contains(text, "lo:") {
		t.Errorf("network namespace not isolated: %q", text)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "stubborn"})
	startIn(t, a, "stubborn", "ignore", `sh -c 'trap "" TERM; while :; do sleep 0.1; done'`)
	time.Sleep(200 * time.Millisecond) // let the shell install its trap
	t0 := time.Now()
	resp, err := a.Client().Cells.Stop(t.Context(), &cellsv0.CellServiceStopRequest{
		CellName: proto.String("stubborn"), ExecutableName: "ignore", GracePeriodMs: proto.Uint32(700),
	})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < 700*time.Millisecond {
		t.Fatalf("stopped after %v, before the grace period ended", took)
	}
	if st := resp.GetStatus(); st.GetSignal() != int32(syscall.SIGKILL) || st.GetState() != cellsv0.ExecutableState_EXECUTABLE_STATE_EXITED {
		t.Fatalf("status %v, want killed by SIGKILL", st)
	}
	// A process that honours SIGTERM ends with it.
	startIn(t, a, "stubborn", "polite", "sleep 300")
	resp, err = a.Client().Cells.Stop(t.Context(), &cellsv0.CellServiceStopRequest{CellName: proto.String("stubborn"), ExecutableName: "polite"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetSignal() != int32(syscall.SIGTERM) {
		t.Fatalf("status %v, want ended by SIGTERM", resp.GetStatus())
	}
}

func TestOutputStreamDeliversEveryLine(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "talk"})
	pid := startIn(t, a, "talk", "seq", "seq 1 10000")
	lines := output(t, a, pid, observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT)
	if len(lines) != 10000 {
		t.Fatalf("got %d lines, want 10000", len(lines))
	}
	for i, l := range lines {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d = %q", i+1, l)
		}
	}
	errPid := startIn(t, a, "talk", "err", `sh -c 'echo oops >&2'`)
	if got := output(t, a, errPid, observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR); len(got) != 1 || got[0] != "oops" {
		t.Fatalf("stderr = %q", got)
	}
}

func TestRestartKeepsCells(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "keep", IsolateProcess: true})
	inner := &cellsv0.Cell{Name: "keep/inner", Memory: &cellsv0.MemoryController{Max: proto.Int64(64 << 20)}}
	if cgroup.Unified() {
		// keep's init lives in keep's cgroup: cgroup v2 gives its children
		// no controllers, and a limit there is refused, naming the parent.
		_, err := a.Client().Cells.Allocate(t.Context(), &cellsv0.CellServiceAllocateRequest{Cell: inner})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `parent cell "keep"`) {
			t.Fatalf("limited child of an isolated cell on cgroup v2: %v, want FailedPrecondition naming the parent", err)
		}
		inner.Memory = nil
	}
	allocateCell(t, a, inner)
	pid := startIn(t, a, "keep/inner", "sleeper", "sleep 300")
	a.Kill9()
	a.Restart(t)
	st := executable(t, a, "keep/inner", "sleeper")
	if st == nil || st.GetState() != cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING || int64(st.GetPid()) != pid {
		t.Fatalf("after restart: %v, want the sleeper running as pid %d", st, pid)
	}
	// The cell still works: new executables join its namespaces.
	p2 := startIn(t, a, "keep/inner", "hello", "echo hello")
	if got := output(t, a, p2, observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT); len(got) != 1 || got[0] != "hello" {
		t.Fatalf("output after restart: %q", got)
	}
	if _, err := a.Client().Cells.Free(t.Context(), &cellsv0.CellServiceFreeRequest{CellName: "keep"}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(pid), 0); err == nil {
		t.Fatalf("the sleeper (pid %d) survived Free", pid)
	}
	if cgroup.Exists(cellCgroup(a, "keep")) {
		t.Fatal("cgroup of the freed cell is still there")
	}
	resp, err := a.Client().Cells.List(t.Context(), &cellsv0.CellServiceListRequest{})
	if err != nil || len(resp.GetCells()) != 0 {
		t.Fatalf("cells after free: %v %v", resp, err)
	}
}

// leftovers lists what this run's tests left on the machine: cgroups
// under its daemons' cgroup roots and processes of its test cells (those
// in one of its cgroups). Another run beside it has roots of its own.
func leftovers() []string {
	var out []string
	prefix := cgroupRootPrefix()
	dirs, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", prefix+"*"))
	more, _ := filepath.Glob(filepath.Join(cgroup.Root, prefix+"*"))
	out = append(out, dirs...)
	out = append(out, more...)
	out = append(out, systemdLeftovers()...)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(b), "aurae-cell-init") {
			continue
		}
		if cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup")); err == nil && strings.Contains(string(cg), prefix) {
			out = append(out, fmt.Sprintf("%s: %q", p, b))
		}
	}
	return out
}

// signalEvents subscribes to the signals of a cell and returns once the
// subscription is live: it starts probes that kill themselves with SIGUSR1
// until one's event arrives. Probe events are not passed on.
func signalEvents(t *testing.T, a *Auraed, cell string) <-chan *observev0.Signal {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	stream, err := a.Client().Observe.GetPosixSignalsStream(ctx, &observev0.GetPosixSignalsStreamRequest{
		Workload: &observev0.WorkloadReference{WorkloadType: observev0.WorkloadType_WORKLOAD_TYPE_CELL, Id: cell},
	})
	if err != nil {
		t.Fatal(err)
	}
	all := make(chan *observev0.Signal, 64)
	go func() {
		defer close(all)
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			all <- ev.GetSignal()
		}
	}()
	out := make(chan *observev0.Signal, 64)
	for i := 0; ; i++ {
		if i == 50 {
			t.Fatal("signal stream never delivered a probe's signal")
		}
		startIn(t, a, cell, fmt.Sprintf("probe-%d", i), `sh -c 'kill -USR1 $$'`)
		select {
		case ev := <-all:
			if !strings.HasPrefix(ev.GetExecutableName(), "probe-") || ev.GetSignal() != int32(syscall.SIGUSR1) {
				t.Fatalf("unexpected event %v", ev)
			}
			go func() {
				defer close(out)
				for ev := range all {
					if !strings.HasPrefix(ev.GetExecutableName(), "probe-") {
						out <- ev
					}
				}
			}()
			return out
		case <-time.After(200 * time.Millisecond):
		}
	}
}
