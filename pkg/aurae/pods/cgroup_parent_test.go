package pods

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// A pod whose cgroup parent is absolute (the kubelet's pod cgroup with
// cgroupsPerQOS) lives exactly there, and its removal leaves the parent,
// which is the kubelet's; a parent that does not exist is refused.
func TestAbsoluteCgroupParent(t *testing.T) {
	e := newEnv(t)
	kube := e.cgRoot + "-kube"
	parent := kube + "/kubepods/burstable/pod0123"
	if _, err := cgroup.New(parent, cgroup.Limits{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroupTree(kube); err != nil {
			t.Errorf("remove %s: %v", kube, err)
		}
	})
	paths := e.allocate(&podsv0.Pod{Id: "kubepod", CgroupParent: "/" + parent})
	if want := parent + "/kubepod"; paths.GetCgroupPath() != want {
		t.Errorf("pod cgroup %s, want %s", paths.GetCgroupPath(), want)
	}
	e.start("kubepod", e.container("a", spec(t, nil, "sleep", "1000")))
	if got := e.mustExec("a", "cat", "/proc/self/cgroup"); !strings.Contains(got, "/"+parent+"/kubepod/a") {
		t.Errorf("the container is not in the kubelet's pod cgroup:\n%s", got)
	}
	if _, err := e.svc.Free(context.Background(), &podsv0.FreeRequest{PodId: "kubepod"}); err != nil {
		t.Fatal(err)
	}
	if cgroup.Exists(parent + "/kubepod") {
		t.Error("pod cgroup left")
	}
	if !cgroup.Exists(parent) {
		t.Error("the kubelet's pod cgroup was removed")
	}
	_, err := e.svc.Allocate(context.Background(), &podsv0.AllocateRequest{Pod: &podsv0.Pod{Id: "nowhere", CgroupParent: "/" + kube + "/kubepods/besteffort/pod9999"}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("missing absolute parent: %v, want FailedPrecondition", err)
	}
	if cgroup.Exists(kube + "/kubepods/besteffort") {
		t.Error("a refused pod made cgroups")
	}
}
