package cells

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
)

func TestIsolatedCell(t *testing.T) {
	s := newTestService(t)
	allocate(t, s, &cellsv0.Cell{Name: "iso", IsolateProcess: true, IsolateNetwork: true})
	startExec(t, s, "iso", "sleeper", "sleep 100")
	dir := t.TempDir()
	script := fmt.Sprintf(`echo $$ > %[1]s/pid; hostname > %[1]s/hostname; ls /proc > %[1]s/proc; tr "\\000" " " < /proc/1/cmdline > %[1]s/init; cat /proc/net/dev > %[1]s/netdev`, dir)
	startExec(t, s, "iso", "probe", "sh -c 'exec 2>"+dir+"/err; "+script+"'")
	if st := waitExit(t, s, "iso", "probe"); st.GetExitCode() != 0 {
		b, _ := os.ReadFile(filepath.Join(dir, "err"))
		t.Fatalf("probe exited %d: %s", st.GetExitCode(), b)
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if pid, _ := strconv.Atoi(read("pid")); pid < 2 || pid > 10 {
		t.Errorf("pid in the cell = %q, want a low pid of the cell's own namespace", read("pid"))
	}
	if h := read("hostname"); h != "iso" {
		t.Errorf("hostname = %q, want the cell's", h)
	}
	if init := read("init"); !strings.HasPrefix(init, "aurae-cell-init") {
		t.Errorf("pid 1 is %q, want the cell init", init)
	}
	var pids []int
	for _, f := range strings.Fields(read("proc")) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	// init, the sleeper, the probe's shell and its ls: nothing of the host.
	if len(pids) > 4 {
		t.Errorf("the cell sees %d processes (%v), want only its own", len(pids), pids)
	}
	if len(pids) < 3 {
		t.Errorf("the cell sees %v; want init, the sleeper and the probe", pids)
	}
	var ifaces []string
	for _, line := range strings.Split(read("netdev"), "\n")[2:] {
		name, _, _ := strings.Cut(strings.TrimSpace(line), ":")
		ifaces = append(ifaces, name)
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" {
		t.Errorf("interfaces = %v, want only lo", ifaces)
	}
	host, _ := os.Hostname()
	if host == "iso" {
		t.Fatal("the cell's hostname leaked to the host")
	}
}

func TestNestedCells(t *testing.T) {
	s := newTestService(t)
	allocate(t, s, &cellsv0.Cell{Name: "parent", IsolateProcess: true})
	allocate(t, s, &cellsv0.Cell{Name: "parent/child"})
	allocate(t, s, &cellsv0.Cell{Name: "parent/child/leaf", IsolateNetwork: true})
	startExec(t, s, "parent/child/leaf", "sleeper", "sleep 100")
	for _, n := range []string{"parent", "parent/child", "parent/child/leaf"} {
		if _, err := os.Stat(filepath.Dir(filepathOf(s, n, "tasks"))); err != nil {
			t.Fatalf("cgroup of %s: %v", n, err)
		}
	}
	resp, err := s.List(t.Context(), &cellsv0.CellServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Cells) != 1 || len(resp.Cells[0].Children) != 1 || len(resp.Cells[0].Children[0].Children) != 1 {
		t.Fatalf("tree = %v", resp)
	}
	if got := resp.Cells[0].Children[0].Children[0].Executables; len(got) != 1 || got[0].GetState() != cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING {
		t.Fatalf("leaf executables = %v", got)
	}
	if _, err := s.Free(t.Context(), &cellsv0.CellServiceFreeRequest{CellName: "parent"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(filepathOf(s, "parent", "tasks"))); !os.IsNotExist(err) {
		t.Fatalf("parent cgroup still there: %v", err)
	}
	if l := listing(t, s); l != "" {
		t.Fatalf("cells left: %s", l)
	}
}

// TestCgroupNamespace: a cell that isolates only its cgroup namespace has
// an init, and its executables see the cell's cgroup as the root while
// they are in it on the host.
func TestCgroupNamespace(t *testing.T) {
	s := newTestService(t)
	allocate(t, s, &cellsv0.Cell{Name: "cgns", IsolateCgroup: true})
	dir := t.TempDir()
	pid := startExec(t, s, "cgns", "probe", "sh -c 'cat /proc/self/cgroup > "+dir+"/cgroup; exec sleep 100'")
	var inside string
	for i := 0; i < 200 && inside == ""; i++ {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup"))
		inside = strings.TrimSpace(string(b))
		if inside == "" {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, line := range strings.Split(inside, "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) != 3 || parts[2] != "/" {
			t.Errorf("inside the cell, /proc/self/cgroup has %q; want every hierarchy at /", line)
		}
	}
	host, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(host), "/cgns") {
		t.Errorf("from the host the probe is in %q, want the cell's cgroup", host)
	}
	self, _ := os.Readlink("/proc/self/ns/cgroup")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/cgroup", pid))
	if theirs == "" || theirs == self {
		t.Errorf("cgroup namespace of the probe %q, the test's %q: want its own", theirs, self)
	}
}
