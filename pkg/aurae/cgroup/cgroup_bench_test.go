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

func BenchmarkAddProc(b *testing.B) {
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
		if os.Getenv("GAP") != "" { b.StopTimer(); time.Sleep(20 * time.Millisecond); b.StartTimer() }
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
