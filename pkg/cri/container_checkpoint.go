package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// checkpointCeiling bounds a checkpoint whose request names no timeout.
const checkpointCeiling = 10 * time.Minute

// CheckpointContainer implements RuntimeService.CheckpointContainer: the
// running container is dumped with CRIU (it keeps running) and written, in
// the kubelet's checkpoint archive format (as CRI-O and containerd write
// it: checkpoint/, config.dump, spec.dump, rootfs-diff.tar,
// deleted.files), as a tar at location, which must not exist. The
// request's timeout bounds the whole call; on any failure nothing is left
// at location.
func (r *Runtime) CheckpointContainer(ctx context.Context, req *runtimeapi.CheckpointContainerRequest) (_ *runtimeapi.CheckpointContainerResponse, retErr error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if req.GetTimeout() < 0 {
		return nil, fmt.Errorf("checkpoint timeout %d is negative: %w", req.GetTimeout(), errInvalid)
	}
	loc, err := checkpointLocation(req.GetLocation())
	if err != nil {
		return nil, err
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING || c.Status.Removing {
		return nil, fmt.Errorf("container %s is %s, not running: %w", c.ID, c.Status.State, errPrecondition)
	}
	sb, err := r.store.Sandbox(c.SandboxID)
	if err != nil {
		return nil, err
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	d := checkpointCeiling
	if t := req.GetTimeout(); t > 0 && time.Duration(t)*time.Second < d {
		d = time.Duration(t) * time.Second
	}
	ctx, cancel := bounded(ctx, d)
	defer cancel()
	log := r.log.With("pod", sb.ID, "container", c.ID)
	start := time.Now()

	// The archive is assembled in a directory of ours (removed whatever
	// happens; one left by a crash goes at the next start) and written at
	// location only once complete.
	work, err := r.checkpointWorkDir()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := os.RemoveAll(work); err != nil {
			log.Warn("remove checkpoint work dir", "path", work, "error", err)
		}
	}()
	if err := ctrl.CheckpointContainer(ctx, c.ID, filepath.Join(work, metadata.CheckpointDirectory), true); err != nil {
		return nil, fmt.Errorf("checkpoint container %s: %w", c.ID, err)
	}
	if err := writeRootfsDiff(ctx, r.rootfsDir(c.ID), work); err != nil {
		return nil, fmt.Errorf("checkpoint container %s: rootfs diff: %w", c.ID, err)
	}
	cfg := metadata.ContainerConfig{
		ID: c.ID, Name: c.Config.GetMetadata().GetName(),
		RootfsImage: c.ImageRef, RootfsImageRef: c.ImageID, RootfsImageName: c.ImageName,
		OCIRuntime: "runc", CreatedTime: c.CreatedAt, CheckpointedAt: time.Now(),
	}
	if err := writeJSON(filepath.Join(work, metadata.ConfigDumpFile), cfg); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, metadata.SpecDumpFile), c.Spec, 0o600); err != nil {
		return nil, err
	}
	// What the CRI request said of the container, so that a restore can
	// tell what was asked (CRI-O keeps the same beside the spec).
	if err := writeJSON(filepath.Join(work, criConfigFile), c.Config); err != nil {
		return nil, err
	}
	size, err := writeArchive(ctx, work, loc)
	if err != nil {
		return nil, fmt.Errorf("checkpoint container %s: archive: %w", c.ID, err)
	}
	log.Info("container checkpointed", "location", loc, "bytes", size, "duration", time.Since(start))
	return &runtimeapi.CheckpointContainerResponse{}, nil
}

// criConfigFile holds the checkpointed container's CRI ContainerConfig.
const criConfigFile = "container.config.json"

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// checkpointWorkDir makes a fresh directory below RootDir/checkpoints.
func (r *Runtime) checkpointWorkDir() (string, error) {
	base := filepath.Join(r.cfg.RootDir, "checkpoints")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(base, "ckpt-")
}

// cleanCheckpointWorkDirs removes what a checkpoint or restore cut short
// by a crash left below RootDir/checkpoints (run before serving).
func (r *Runtime) cleanCheckpointWorkDirs() error {
	return os.RemoveAll(filepath.Join(r.cfg.RootDir, "checkpoints"))
}
