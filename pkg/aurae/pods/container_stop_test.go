package pods

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// TestStopSignal: Stop delivers the stop signal it is given (here SIGQUIT,
// which the container's shell traps to exit with 42), and refuses a name
// that is not a signal before touching the container.
func TestStopSignal(t *testing.T) {
	e := newEnv(t)
	e.allocate(&podsv0.Pod{Id: "sig", Namespaces: &podsv0.NamespaceOptions{Pid: podsv0.NamespaceMode_NAMESPACE_MODE_CONTAINER}})
	c := e.container("quitter", spec(t, nil, "sh", "-c", "trap 'exit 42' QUIT; trap 'exit 1' TERM; echo ready; while true; do sleep 0.1; done"))
	e.start("sig", c)
	waitLogLine(t, c.GetLogPath(), "ready") // the traps are set

	for _, bad := range []string{"QUIT", "3", "SIGFLY", "sigquit"} {
		_, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: "quitter", TimeoutSeconds: 30, Signal: bad})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("signal %q: %v, want InvalidArgument", bad, err)
		}
	}
	if st := e.status("quitter"); st.GetState() != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("a refused stop changed the container: %v", st)
	}

	begin := time.Now()
	if _, err := e.svc.Stop(context.Background(), &podsv0.StopRequest{ContainerId: "quitter", TimeoutSeconds: 30, Signal: "SIGQUIT"}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("stop took %s: SIGQUIT did not end it", d)
	}
	if st := e.status("quitter"); st.GetExitCode() != 42 {
		t.Errorf("after SIGQUIT: %v, want exit code 42 from the QUIT trap", st)
	}
}
