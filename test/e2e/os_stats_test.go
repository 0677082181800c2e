package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// burnCommand keeps a CPU busy for a moment and exits.
const burnCommand = "sh -c 'i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done'"

// cellCPU reads a cell's cumulative CPU time from its cgroup's files.
func cellCPU(t *testing.T, a *Auraed, cell string) uint64 {
	t.Helper()
	path := cellCgroup(a, cell)
	if cgroup.Unified() {
		b, err := os.ReadFile(cgroup.ControllerFile(path, "", "cpu.stat"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n * uint64(time.Microsecond)
			}
		}
		t.Fatalf("cpu.stat of %s has no usage_usec:\n%s", path, b)
	}
	b, err := os.ReadFile(cgroup.ControllerFile(path, "cpuacct", "cpuacct.usage"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cellStats calls Stats for namespace cells and maps its answer by id,
// checking that each entry is one Containers lists under the same
// namespace, id, pod id and name.
func cellStats(t *testing.T, a *Auraed) map[string]*osapi.Stat {
	t.Helper()
	ctx := testContext(t)
	resp, err := a.Client().OS.Stats(ctx, &osapi.StatsRequest{Namespace: "cells"})
	if err != nil {
		t.Fatal(err)
	}
	ctrs, err := a.Client().OS.Containers(ctx, &osapi.ContainersRequest{Namespace: "cells"})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]*osapi.ContainerInfo{}
	for _, c := range ctrs.GetMessages()[0].GetContainers() {
		listed[c.GetId()] = c
	}
	out := map[string]*osapi.Stat{}
	for _, s := range resp.GetMessages()[0].GetStats() {
		c := listed[s.GetId()]
		if c == nil || c.GetNamespace() != s.GetNamespace() || c.GetPodId() != s.GetPodId() || c.GetName() != s.GetName() {
			t.Fatalf("Stats has %v, Containers %v", s, c)
		}
		out[s.GetId()] = s
	}
	if len(out) != len(listed) {
		t.Fatalf("Stats answers for %d executables, Containers lists %d: %v, %v", len(out), len(listed), out, listed)
	}
	return out
}

// TestOSStatsCellExecutables: Stats lists cells' executables as Containers
// does, each with its own cell's cgroup figures (the nested cell's, not
// its parent's): memory for a running one, CPU time that grows when the
// cell burns CPU. (On cgroup v2 a nested cell without a memory limit has
// no memory controller of its own: only the top-level cell's memory is
// checked.)
func TestOSStatsCellExecutables(t *testing.T) {
	a := startAuraed(t)
	allocateCell(t, a, &cellsv0.Cell{Name: "st"})
	allocateCell(t, a, &cellsv0.Cell{Name: "st/inner"})
	startIn(t, a, "st", "sleeper", "sleep 1000")
	startIn(t, a, "st/inner", "warm", burnCommand)
	waitExited(t, a, "st/inner", "warm")

	before := cellStats(t, a)
	sleeper, warm := before["st/sleeper"], before["st/inner/warm"]
	if sleeper == nil || sleeper.GetNamespace() != "cells" || sleeper.GetPodId() != "st" || sleeper.GetName() != "sleeper" || sleeper.GetMemoryUsage() == 0 {
		t.Fatalf("Stats has %v for the running executable, want it with memory", sleeper)
	}
	if warm == nil || warm.GetPodId() != "st/inner" || warm.GetCpuUsage() == 0 {
		t.Fatalf("Stats has %v for the exited executable of st/inner, want st/inner's CPU time", warm)
	}
	// st's figures include st/inner's and its sleeper's: more.
	if inner := cellCPU(t, a, "st/inner"); warm.GetCpuUsage() > inner || sleeper.GetCpuUsage() <= inner {
		t.Fatalf("st/inner/warm has CPU %d, st/sleeper %d; st/inner's cgroup has %d: want the nested cell's own figure", warm.GetCpuUsage(), sleeper.GetCpuUsage(), inner)
	}

	startIn(t, a, "st/inner", "burn", burnCommand)
	waitExited(t, a, "st/inner", "burn")
	after := cellStats(t, a)
	w, burn := after["st/inner/warm"], after["st/inner/burn"]
	if w == nil || w.GetCpuUsage() <= warm.GetCpuUsage() {
		t.Fatalf("after a busy loop in st/inner, warm's CPU is %v (before %d), want more", w, warm.GetCpuUsage())
	}
	if burn == nil || burn.GetCpuUsage() != w.GetCpuUsage() || burn.GetMemoryUsage() != w.GetMemoryUsage() {
		t.Fatalf("st/inner/burn has %v, warm %v: executables of one cell share its figures", burn, w)
	}
	if s := after["st/sleeper"]; s == nil || s.GetCpuUsage() <= w.GetCpuUsage() {
		t.Fatalf("st/sleeper has %v after st/inner burned %d ns: want st's figure, which holds st/inner's", s, w.GetCpuUsage())
	}

	// A freed cell's executables are gone from both answers.
	if _, err := a.Client().Cells.Free(testContext(t), &cellsv0.CellServiceFreeRequest{CellName: "st"}); err != nil {
		t.Fatal(err)
	}
	if gone := cellStats(t, a); len(gone) != 0 {
		t.Fatalf("after Free: %v, want none", gone)
	}
}
