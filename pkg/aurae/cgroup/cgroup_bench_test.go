package cgroup

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

func BenchmarkNewDelete(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	root := fmt.Sprintf("aurae-bench-%d", os.Getpid())
	for i := 0; i < b.N; i++ {
		cg, err := New(fmt.Sprintf("%s/c%d", root, i), Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := cg.Kill(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := cg.Delete(); err != nil {
			b.Fatal(err)
		}
	}
	removeDirs(root)
}

// BenchmarkAddProc moves a process between two cgroups back to back.
func BenchmarkAddProc(b *testing.B) { benchAddProc(b, 0) }

// BenchmarkAddProcAfterIdle moves a process after 20 ms without migrations,
// as a cell's first process is: on cgroup v1 the kernel then waits for an RCU
// grace period before the move (cgroup_threadgroup_rwsem), which is most of
// the cost of starting a process in a new cell there.
func BenchmarkAddProcAfterIdle(b *testing.B) { benchAddProc(b, 20*time.Millisecond) }

func benchAddProc(b *testing.B, idle time.Duration) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	root := fmt.Sprintf("aurae-bench-%d", os.Getpid())
	a, err := New(root+"/a", Limits{})
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(root+"/b", Limits{})
	if err != nil {
		b.Fatal(err)
	}
	p, err := os.StartProcess("/bin/sleep", []string{"sleep", "100"}, &os.ProcAttr{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := a
		if i%2 == 1 {
			dst = c
		}
		if idle > 0 {
			b.StopTimer()
			time.Sleep(idle)
			b.StartTimer()
		}
		if err := dst.AddProc(p.Pid); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = p.Kill()
	_, _ = p.Wait()
	_ = a.Delete()
	_ = c.Delete()
	removeDirs(root)
}
