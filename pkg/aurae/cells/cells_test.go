package cells

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
)

// newTestService starts a service on a cgroup root of its own and frees
// whatever the test left allocated.
func newTestService(t *testing.T) *Service {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cells need root: cgroups and namespaces")
	}
	root := fmt.Sprintf("aurae-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	s, err := NewService(context.Background(), Config{StateDir: t.TempDir(), CgroupRoot: root, Hub: observe.NewHub(observe.HubConfig{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		resp, _ := s.List(context.Background(), &cellsv0.CellServiceListRequest{})
		for _, n := range resp.GetCells() {
			if _, err := s.Free(context.Background(), &cellsv0.CellServiceFreeRequest{CellName: n.GetCell().GetName()}); err != nil {
				t.Errorf("free %s: %v", n.GetCell().GetName(), err)
			}
		}
		_ = s.Close()
		removeCgroupRoot(t, root)
	})
	return s
}

// removeCgroupRoot removes the (empty) per-test cgroup root in every hierarchy.
func removeCgroupRoot(t *testing.T, root string) {
	dirs, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", root))
	dirs = append(dirs, filepath.Join(cgroup.Root, root))
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			t.Errorf("cgroup root left behind: %v", err)
		}
	}
}

func allocate(t *testing.T, s *Service, c *cellsv0.Cell) {
	t.Helper()
	if _, err := s.Allocate(context.Background(), &cellsv0.CellServiceAllocateRequest{Cell: c}); err != nil {
		t.Fatalf("allocate %s: %v", c.GetName(), err)
	}
}

func startExec(t *testing.T, s *Service, cell, name, command string) int {
	t.Helper()
	resp, err := s.Start(context.Background(), &cellsv0.CellServiceStartRequest{CellName: proto.String(cell), Executable: &cellsv0.Executable{Name: name, Command: command}})
	if err != nil {
		t.Fatalf("start %s in %s: %v", command, cell, err)
	}
	return int(resp.GetPid())
}

func waitExit(t *testing.T, s *Service, cell, name string) *cellsv0.ExecutableStatus {
	t.Helper()
	c, err := s.lookup(cell)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	e := c.execs[name]
	c.mu.Unlock()
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s in %s did not exit", name, cell)
	}
	return e.status()
}

func TestStartRunsInCgroupBeforeExec(t *testing.T) {
	s := newTestService(t)
	allocate(t, s, &cellsv0.Cell{Name: "c1"})
	out := filepath.Join(t.TempDir(), "cgroup")
	startExec(t, s, "c1", "sh", fmt.Sprintf("sh -c 'cat /proc/self/cgroup > %s'", out))
	st := waitExit(t, s, "c1", "sh")
	if st.GetExitCode() != 0 {
		t.Fatalf("exit %d", st.GetExitCode())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), ":memory:/"+s.cgroupPath("c1")+"\n") && !strings.Contains(string(b), "0::/"+s.cgroupPath("c1")+"\n") {
		t.Fatalf("process not in its cell's cgroup:\n%s", b)
	}
}

func TestBadRequestsLeaveNothing(t *testing.T) {
	s := newTestService(t)
	allocate(t, s, &cellsv0.Cell{Name: "ok"})
	startExec(t, s, "ok", "sleeper", "sleep 100")
	long := strings.Repeat("a", 300)
	cases := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"no cell", func() error {
			_, err := s.Allocate(context.Background(), &cellsv0.CellServiceAllocateRequest{})
			return err
		}, codes.InvalidArgument},
		{"empty name", alloc(s, &cellsv0.Cell{Name: ""}), codes.InvalidArgument},
		{"dotdot", alloc(s, &cellsv0.Cell{Name: ".."}), codes.InvalidArgument},
		{"leading dot", alloc(s, &cellsv0.Cell{Name: ".pods"}), codes.InvalidArgument},
		{"dotdot nested", alloc(s, &cellsv0.Cell{Name: "ok/../x"}), codes.InvalidArgument},
		{"absolute", alloc(s, &cellsv0.Cell{Name: "/abs"}), codes.InvalidArgument},
		{"control char", alloc(s, &cellsv0.Cell{Name: "a\nb"}), codes.InvalidArgument},
		{"too long", alloc(s, &cellsv0.Cell{Name: long}), codes.InvalidArgument},
		{"weight 0", alloc(s, &cellsv0.Cell{Name: "w0", Cpu: &cellsv0.CpuController{Weight: proto.Uint64(0)}}), codes.InvalidArgument},
		{"weight 10001", alloc(s, &cellsv0.Cell{Name: "w1", Cpu: &cellsv0.CpuController{Weight: proto.Uint64(10001)}}), codes.InvalidArgument},
		{"max 0", alloc(s, &cellsv0.Cell{Name: "m0", Cpu: &cellsv0.CpuController{Max: proto.Int64(0)}}), codes.InvalidArgument},
		{"period 10", alloc(s, &cellsv0.Cell{Name: "p0", Cpu: &cellsv0.CpuController{Period: proto.Uint64(10)}}), codes.InvalidArgument},
		{"bad cpuset", alloc(s, &cellsv0.Cell{Name: "cs", Cpuset: &cellsv0.CpusetController{Cpus: proto.String("0-x")}}), codes.InvalidArgument},
		{"offline cpu", alloc(s, &cellsv0.Cell{Name: "cs2", Cpuset: &cellsv0.CpusetController{Cpus: proto.String("4000")}}), codes.InvalidArgument},
		{"negative memory", alloc(s, &cellsv0.Cell{Name: "nm", Memory: &cellsv0.MemoryController{Max: proto.Int64(-1)}}), codes.InvalidArgument},
		{"duplicate cell", alloc(s, &cellsv0.Cell{Name: "ok"}), codes.AlreadyExists},
		{"orphan child", alloc(s, &cellsv0.Cell{Name: "nope/child"}), codes.NotFound},
		{"start unknown cell", start(s, "nope", "x", "true"), codes.NotFound},
		{"start no cell name", func() error {
			_, err := s.Start(context.Background(), &cellsv0.CellServiceStartRequest{Executable: &cellsv0.Executable{Name: "x", Command: "true"}})
			return err
		}, codes.InvalidArgument},
		{"start bad exec name", start(s, "ok", "a/b", "true"), codes.InvalidArgument},
		{"start empty command", start(s, "ok", "x", "  "), codes.InvalidArgument},
		{"start unknown program", start(s, "ok", "x", "no-such-program-here"), codes.InvalidArgument},
		{"start relative path", start(s, "ok", "x", "./true"), codes.InvalidArgument},
		{"start unbalanced quote", start(s, "ok", "x", "echo 'a"), codes.InvalidArgument},
		{"duplicate executable", start(s, "ok", "sleeper", "true"), codes.AlreadyExists},
		{"stop unknown executable", func() error {
			_, err := s.Stop(context.Background(), &cellsv0.CellServiceStopRequest{CellName: proto.String("ok"), ExecutableName: "nope"})
			return err
		}, codes.NotFound},
		{"free unknown", func() error {
			_, err := s.Free(context.Background(), &cellsv0.CellServiceFreeRequest{CellName: "nope"})
			return err
		}, codes.NotFound},
	}
	if !cgroup.Unified() {
		cases = append(cases, struct {
			name string
			call func() error
			code codes.Code
		}{"memory high on v1", alloc(s, &cellsv0.Cell{Name: "mh", Memory: &cellsv0.MemoryController{High: proto.Int64(1 << 20)}}), codes.FailedPrecondition})
	}
	before := listing(t, s)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}
	if after := listing(t, s); after != before {
		t.Fatalf("bad requests changed the cells:\n%s\n%s", before, after)
	}
	entries, _ := os.ReadDir(filepath.Dir(cgroup.ControllerFile(s.cgroupPath("ok"), "memory", "")))
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 {
		t.Fatalf("cgroups left behind: %v", dirs)
	}
}

func alloc(s *Service, c *cellsv0.Cell) func() error {
	return func() error {
		_, err := s.Allocate(context.Background(), &cellsv0.CellServiceAllocateRequest{Cell: c})
		return err
	}
}

func start(s *Service, cell, name, command string) func() error {
	return func() error {
		_, err := s.Start(context.Background(), &cellsv0.CellServiceStartRequest{CellName: proto.String(cell), Executable: &cellsv0.Executable{Name: name, Command: command}})
		return err
	}
}

func listing(t *testing.T, s *Service) string {
	resp, err := s.List(context.Background(), &cellsv0.CellServiceListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, n := range resp.GetCells() {
		fmt.Fprintf(&b, "%s:%d ", n.GetCell().GetName(), len(n.GetExecutables()))
	}
	return b.String()
}

func filepathOf(s *Service, cell, file string) string {
	return cgroup.ControllerFile(s.cgroupPath(cell), "memory", file)
}
