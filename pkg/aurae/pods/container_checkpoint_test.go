package pods

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

func TestCheckpointRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "ck"})
	e.start("ck", e.container("c", spec(t, nil, "sleep", "1000")))
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		req  *podsv0.CheckpointContainerRequest
		want codes.Code
	}{
		{"relative path", &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: "img"}, codes.InvalidArgument},
		{"unclean path", &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: dir + "/./img"}, codes.InvalidArgument},
		{"unknown container", &podsv0.CheckpointContainerRequest{ContainerId: "nobody", ImagePath: dir + "/img"}, codes.NotFound},
		{"existing dir", &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: dir}, codes.AlreadyExists},
	} {
		_, err := e.svc.CheckpointContainer(ctx, tc.req)
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}

	// Where CRIU cannot run: FailedPrecondition with its reason, nothing made.
	fake := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'vdso: Unexpected rt vDSO area bounds' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.svc.cfg.CRIU = fake
	_, err := e.svc.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: dir + "/img"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "Unexpected rt vDSO area bounds") {
		t.Errorf("checkpoint with a failing criu check: %v, want FailedPrecondition with its reason", err)
	}
	// Where `criu check` passes and a dump hangs (as on hosts whose kernel
	// never lets the dumped task trap): the test dump is cut at its
	// timeout, FailedPrecondition; the answer is kept, not probed again.
	hangs := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(hangs, []byte("#!/bin/sh\n[ \"$1\" = check ] && { echo 'Looks good.'; exit 0; }\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { criuProbeTimeout = d }(criuProbeTimeout)
	criuProbeTimeout = 2 * time.Second
	e.svc.cfg.CRIU = hangs
	for i := range 2 {
		begin := time.Now()
		_, err = e.svc.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: dir + "/img"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CRIU cannot checkpoint on this host") {
			t.Errorf("checkpoint %d with a criu whose dump hangs: %v, want FailedPrecondition", i, err)
		}
		if took := time.Since(begin); i == 1 && took > time.Second {
			t.Errorf("the second refusal took %s: the hung dump was tried again", took)
		}
	}
	if procs := processesMentioning(hangs); len(procs) > 0 {
		t.Errorf("the hung test dump left processes: %v", procs)
	}
	if st := e.status("c").GetState(); st != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Errorf("after refused checkpoints the container is %s", st)
	}
	e.svc.cfg.CRIU = filepath.Join(t.TempDir(), "no-criu")
	_, err = e.svc.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: dir + "/img"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("checkpoint without criu: %v, want FailedPrecondition", err)
	}
	if _, err := os.Lstat(dir + "/img"); err == nil {
		t.Error("a refused checkpoint left its image dir")
	}
}

func TestCheckpointAndRestore(t *testing.T) {
	if _, err := os.Stat(PinnedCRIU); err != nil {
		t.Fatalf("CRIU is not installed at %s (make deps builds it): %v", PinnedCRIU, err)
	}
	e := newEnv(t)
	ctx := context.Background()
	e.allocate(&podsv0.Pod{Id: "ckr"})
	e.start("ckr", e.container("c", spec(t, nil, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done")))
	img := filepath.Join(t.TempDir(), "img")
	if perr := ProbeCheckpoint(ctx, PinnedCRIU); perr != nil {
		// This host's kernel cannot be dumped by CRIU (ProbeCheckpoint
		// says why): the checkpoint is refused, the container runs on.
		t.Logf("CRIU cannot checkpoint here; checking the refusal: %v", perr)
		_, err := e.svc.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: img, LeaveRunning: true})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CRIU cannot checkpoint on this host") {
			t.Fatalf("checkpoint where CRIU cannot dump: %v, want FailedPrecondition", err)
		}
		if _, err := os.Lstat(img); err == nil {
			t.Error("the refused checkpoint left its image dir")
		}
		if st := e.status("c").GetState(); st != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
			t.Errorf("after the refused checkpoint the container is %s", st)
		}
		return
	}
	if _, err := e.svc.CheckpointContainer(ctx, &podsv0.CheckpointContainerRequest{ContainerId: "c", ImagePath: img, LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(img, "inventory.img")); err != nil {
		t.Fatalf("no CRIU images: %v", err)
	}
	if st := e.status("c").GetState(); st != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("after a leave-running checkpoint the container is %s", st)
	}
	if _, err := e.svc.Stop(ctx, &podsv0.StopRequest{ContainerId: "c", TimeoutSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	r := e.container("r", spec(t, nil, "sleep", "1000"))
	r.RestoreImagePath = img
	e.start("ckr", r)
	if st := e.status("r").GetState(); st != podsv0.ContainerState_CONTAINER_STATE_RUNNING {
		t.Fatalf("restored container is %s", st)
	}
	// The restored process is the counter (not the spec's sleep): it goes
	// on from where the checkpoint found it.
	first := strings.TrimSpace(e.mustExec("r", "cat", "/tmp/n"))
	deadline := time.Now().Add(30 * time.Second)
	for strings.TrimSpace(e.mustExec("r", "cat", "/tmp/n")) == first {
		if time.Now().After(deadline) {
			t.Fatalf("restored counter stays at %s", first)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
