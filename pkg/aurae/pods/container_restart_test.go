package pods

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// TestRestartExitedContainer: Restart starts an exited container again
// from its bundle, appending to its log, with a new pid and status; an
// unknown id is NotFound.
func TestRestartExitedContainer(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "again", Namespaces: &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}})
	c := e.container("once", spec(t, func(s *specs.Spec) {
		v := 999
		s.Process.OOMScoreAdj = &v
	}, "sh", "-c", "echo ran; exit 7"))
	e.start("again", c)
	first := e.waitExited("once", 10*time.Second)
	if first.GetExitCode() != 7 {
		t.Fatalf("first run: %v", first)
	}
	st, err := e.svc.Restart(context.Background(), "once", time.Second)
	if err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if st.GetPid() == 0 || st.GetPid() == first.GetPid() || st.GetStartedAt() <= first.GetStartedAt() {
		t.Fatalf("restarted: %v; first run %v", st, first)
	}
	second := e.waitExited("once", 10*time.Second)
	if second.GetExitCode() != 7 || second.GetFinishedAt() < st.GetStartedAt() {
		t.Fatalf("second run: %v", second)
	}
	if n := strings.Count(strings.Join(readLines(t, c.GetLogPath()), "\n"), " ran"); n != 2 {
		t.Fatalf("log has %d lines of the runs, want both: %q", n, readLines(t, c.GetLogPath()))
	}
	if _, err := e.svc.Restart(context.Background(), "nobody", time.Second); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Restart of an unknown container = %v, want NotFound", err)
	}
}
