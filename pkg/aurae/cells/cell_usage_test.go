package cells

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
)

// TestUsageReadsTheCellsCgroup: a nested cell's CPU time is its own
// executable's, and counts in its parent's; a running executable's memory
// shows in its cell's working set.
func TestUsageReadsTheCellsCgroup(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	allocate(t, s, &cellsv0.Cell{Name: "u"})
	allocate(t, s, &cellsv0.Cell{Name: "u/inner"})
	startExec(t, s, "u/inner", "burn", "sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done'")
	if st := waitExit(t, s, "u/inner", "burn"); st.GetExitCode() != 0 {
		t.Fatalf("burn exited %d", st.GetExitCode())
	}
	inner, err := s.Usage(ctx, "u/inner")
	if err != nil {
		t.Fatal(err)
	}
	if inner.CPU <= 0 {
		t.Fatalf("u/inner used %v of CPU after a busy loop, want more than none", inner.CPU)
	}
	startExec(t, s, "u", "sleep", "sleep 60")
	outer, err := s.Usage(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if outer.CPU < inner.CPU || outer.MemoryWorkingSet == 0 {
		t.Fatalf("u: %+v, want at least u/inner's CPU %v and memory for its sleep", outer, inner.CPU)
	}

	if _, err := s.Usage(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Usage of an unknown cell = %v, want NotFound", err)
	}
	if _, err := s.Usage(ctx, "../etc"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Usage of ../etc = %v, want InvalidArgument", err)
	}
}
