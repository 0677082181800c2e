package cri

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCheckpointContainerRefusals: what a checkpoint refuses before and
// after the controller, and that a refused one leaves nothing.
func TestCheckpointContainerRefusals(t *testing.T) {
	f := newFixture(t, true)
	f.startContainers(t, 1)
	loc := filepath.Join(t.TempDir(), "c0.tar")
	for _, tc := range []struct {
		name string
		req  *runtimeapi.CheckpointContainerRequest
		want codes.Code
	}{
		{"unknown container", &runtimeapi.CheckpointContainerRequest{ContainerId: "nobody", Location: loc}, codes.NotFound},
		{"relative location", &runtimeapi.CheckpointContainerRequest{ContainerId: "c0", Location: "c0.tar"}, codes.InvalidArgument},
		{"negative timeout", &runtimeapi.CheckpointContainerRequest{ContainerId: "c0", Location: loc, Timeout: -1}, codes.InvalidArgument},
		// The fake controller cannot checkpoint (as a VM pod's, or a
		// machine without CRIU): its FailedPrecondition reaches the caller.
		{"controller cannot", &runtimeapi.CheckpointContainerRequest{ContainerId: "c0", Location: loc}, codes.FailedPrecondition},
	} {
		_, err := f.rt.CheckpointContainer(t.Context(), tc.req)
		if code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if _, err := os.Lstat(loc); err == nil {
		t.Error("a refused checkpoint left an archive")
	}
	if ents, _ := os.ReadDir(filepath.Join(f.dir, "checkpoints")); len(ents) != 0 {
		t.Errorf("work dirs left: %v", ents)
	}
	if _, err := f.rt.StopContainer(t.Context(), &runtimeapi.StopContainerRequest{ContainerId: "c0"}); err != nil {
		t.Fatal(err)
	}
	_, err := f.rt.CheckpointContainer(t.Context(), &runtimeapi.CheckpointContainerRequest{ContainerId: "c0", Location: loc})
	if code(err) != codes.FailedPrecondition {
		t.Errorf("checkpoint of a stopped container: %v, want FailedPrecondition", err)
	}
}
