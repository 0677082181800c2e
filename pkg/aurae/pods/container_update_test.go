package pods

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

func TestUpdateContainerResources(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "upd"})
	e.start("upd", e.container("c", spec(t, nil, "sleep", "1000")))
	limit := int64(64 << 20)
	res, _ := json.Marshal(specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
	if _, err := e.svc.UpdateContainerResources(ctx, &podsv0.UpdateContainerResourcesRequest{ContainerId: "c", LinuxResources: res}); err != nil {
		t.Fatal(err)
	}
	path := e.status("c").GetCgroupPath()
	file := cgroup.ControllerFile(path, "memory", "memory.limit_in_bytes")
	if cgroup.Unified() {
		file = cgroup.ControllerFile(path, "", "memory.max")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "67108864" {
		t.Errorf("memory limit after update: %s", b)
	}
	for _, tc := range []struct {
		name string
		req  *podsv0.UpdateContainerResourcesRequest
		want codes.Code
	}{
		{"bad json", &podsv0.UpdateContainerResourcesRequest{ContainerId: "c", LinuxResources: []byte("{")}, codes.InvalidArgument},
		{"unknown", &podsv0.UpdateContainerResourcesRequest{ContainerId: "nobody", LinuxResources: res}, codes.NotFound},
	} {
		if _, err := e.svc.UpdateContainerResources(ctx, tc.req); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
}

func TestReopenContainerLog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "rot"})
	c := e.container("c", spec(t, nil, "sh", "-c", "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two; sleep 1000"))
	e.start("rot", c)
	waitLog := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(c.GetLogPath())
			if strings.Contains(string(b), " stdout F "+want+"\n") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("log %q: no line %q", b, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog("one")
	// The kubelet rotates: rename, then reopen.
	if err := os.Rename(c.GetLogPath(), c.GetLogPath()+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ReopenContainerLog(ctx, &podsv0.ReopenContainerLogRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	e.mustExec("c", "sh", "-c", ": > /tmp/go")
	waitLog("two")
	if b, _ := os.ReadFile(c.GetLogPath()); strings.Contains(string(b), "one") {
		t.Errorf("new log has the old line: %q", b)
	}
	if _, err := e.svc.Stop(ctx, &podsv0.StopRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ReopenContainerLog(ctx, &podsv0.ReopenContainerLogRequest{ContainerId: "c"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("reopen of a stopped container: %v, want FailedPrecondition", err)
	}
}
