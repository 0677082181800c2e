package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// CreateContainer implements RuntimeService.CreateContainer: the rootfs
// snapshot is prepared and mounted, the OCI spec generated and kept; the
// process starts with StartContainer.
func (r *Runtime) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (_ *runtimeapi.CreateContainerResponse, retErr error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	cfg := req.GetConfig()
	if cfg == nil {
		return nil, fmt.Errorf("container config is missing: %w", errInvalid)
	}
	if err := checkContainerMetadata(cfg.GetMetadata()); err != nil {
		return nil, err
	}
	if cfg.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("container image is missing: %w", errInvalid)
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || sb.Status.Removing {
		return nil, fmt.Errorf("pod %s is not ready: %w", sb.ID, errPrecondition)
	}
	logRel, err := cleanRelative("log path", cfg.GetLogPath())
	if err != nil {
		return nil, err
	}
	// Checked now (a refused request changes nothing); its directories are
	// made below, once the container is reserved.
	if _, err := containerLogPath(sb.Config.GetLogDirectory(), logRel, false); err != nil {
		return nil, err
	}
	imgMounts, err := imageMounts(cfg)
	if err != nil {
		return nil, err
	}
	for _, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() == "" {
			if err := checkAbsolute("mount host path", m.GetHostPath()); err != nil {
				return nil, err
			}
		}
		if err := checkAbsolute("mount container path", m.GetContainerPath()); err != nil {
			return nil, err
		}
	}
	// CDI devices are the host's device nodes: a VM's guest has none of
	// them.
	cdiDevices, err := ocispec.CDIDevices(cfg)
	if err != nil {
		return nil, err
	}
	if len(cdiDevices) > 0 && slices.Contains(vm.Handlers, sb.RuntimeHandler) {
		return nil, fmt.Errorf("CDI devices %s in pod %s of VM handler %q: %w",
			strings.Join(cdiDevices, ", "), sb.ID, sb.RuntimeHandler, errPrecondition)
	}
	steps := timing.Start()
	name := containerName(cfg.GetMetadata(), sb.Config.GetMetadata())
	id := newID()
	if err := r.store.ReserveName(name, id); err != nil {
		// A CreateContainer retried after a client timeout gets the
		// container it already made.
		if holder, ok := r.store.NameHolder(name); ok {
			if c, err := r.store.Container(holder); err == nil && c.SandboxID == sb.ID && c.Status.State == runtimeapi.ContainerState_CONTAINER_CREATED {
				return &runtimeapi.CreateContainerResponse{ContainerId: holder}, nil
			}
		}
		return nil, err
	}
	log := r.log.With("pod", sb.ID, "container", id, "container_name", name)
	defer func() {
		if retErr != nil {
			r.store.ReleaseName(name, id)
		}
		steps.Log(ctx, log, "create container steps", "ok", retErr == nil)
	}()
	steps.Done("reserve")

	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	img, err := r.cfg.Images.Resolve(callCtx, cfg.GetImage().GetImage())
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", cfg.GetImage().GetImage(), err)
	}
	vols, err := r.resolveImageVolumes(callCtx, imgMounts, log)
	if err != nil {
		return nil, err
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	steps.Done("resolve_image")
	// The intent (CREATING) is recorded before each side effect, so that
	// a restart after a crash undoes what this call made; storing the
	// container completes it.
	rootfs := r.rootfsDir(id)
	intent := sandbox.Intent{Kind: sandbox.IntentContainer, ID: id, PodID: sb.ID, Name: name, RuntimeHandler: sb.RuntimeHandler,
		CreatedAt: time.Now(), Rootfs: true, Snapshot: image.RootfsKey(id), Lease: image.RootfsLease(id), RootfsDir: rootfs,
		ImageVolumes: volumeKeys(vols)}
	if err := r.store.PutIntent(intent); err != nil {
		return nil, err
	}
	steps.Done("intent")
	undone := true // every undo below succeeded
	defer func() {
		if retErr != nil {
			r.settleIntent(id, undone, log)
		}
	}()
	undoRootfs := func() {
		if !r.undoRootfs(id, log) {
			undone = false
		}
	}
	mounts, err := r.cfg.Images.PrepareRootfs(callCtx, id, img.ID)
	if err != nil {
		undoRootfs() // a lease or snapshot may be left of it
		return nil, fmt.Errorf("rootfs of %q: %w", name, err)
	}
	steps.Done("prepare_snapshot")
	if err := mountRootfs(mounts, rootfs, rootfsIDMapOf(sb)); err != nil {
		undoRootfs()
		return nil, err
	}
	defer func() {
		if retErr != nil {
			undoRootfs()
		}
	}()
	r.fault(FaultContainerRootfs)
	steps.Done("mount_rootfs")
	if len(vols) > 0 {
		defer func() {
			if retErr != nil {
				ctx, cancel := cleanupContext()
				defer cancel()
				undone = r.releaseImageVolumes(ctx, intent.ImageVolumes, id) && undone
			}
		}()
		if err := r.acquireImageVolumes(callCtx, id, vols, imgMounts, rootfsIDMapOf(sb)); err != nil {
			return nil, err
		}
		r.fault(FaultContainerImageVolumes)
	}
	imageSources := make(map[string]string, len(vols))
	for _, v := range vols {
		imageSources[v.ContainerPath] = v.Source
	}

	logPath, err := containerLogPath(sb.Config.GetLogDirectory(), logRel, true)
	if err != nil {
		return nil, err
	}
	files := controller.ContainerFiles{ID: id, Rootfs: rootfs, LogPath: logPath}
	for _, m := range cfg.GetMounts() {
		src := filepath.Clean(m.GetHostPath())
		if m.GetImage().GetImage() != "" {
			src = imageSources[filepath.Clean(m.GetContainerPath())]
		}
		files.Mounts = append(files.Mounts, controller.Mount{Source: src, Readonly: m.GetReadonly()})
	}
	if nso := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(); nso.GetPid() == runtimeapi.NamespaceMode_TARGET {
		if files.PIDTarget, err = r.pidTarget(sb.ID, nso.GetTargetId()); err != nil {
			return nil, err
		}
	}
	steps.Done("image_volumes_log_dir")
	intent.ControllerContainer = true
	if err := r.store.PutIntent(intent); err != nil {
		return nil, err
	}
	steps.Done("intent_controller")
	facts, err := ctrl.PrepareContainer(callCtx, sb.ID, files)
	if err != nil {
		undone = r.undoPrepareContainer(ctrl, sb.ID, id, log) && undone
		return nil, fmt.Errorf("prepare %q: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			undone = r.undoPrepareContainer(ctrl, sb.ID, id, log) && undone
		}
	}()
	r.fault(FaultContainerPrepared)
	steps.Done("prepare_container")
	spec, err := ocispec.Generate(ocispec.Input{
		ID:              id,
		SandboxID:       sb.ID,
		ImageName:       imageName(img.RepoTags, img.RepoDigests, img.ID),
		Config:          cfg,
		Sandbox:         sb.Config,
		Image:           img.Config,
		Pod:             facts,
		RootfsHere:      rootfs,
		RootfsReadonly:  cfg.GetLinux().GetSecurityContext().GetReadonlyRootfs(),
		SwapAccounting:  swapAccounting(),
		AllCapabilities: r.capabilities,
		Host:            r.host,
		CDI:             r.cfg.CDI,
		PidsLimit:       r.cfg.PidsLimit,
		ImageVolumes:    imageSources,
	})
	if err != nil {
		return nil, fmt.Errorf("spec of %q: %w", name, err)
	}
	stopSignal, err := stopSignal(cfg.GetStopSignal(), img.Config.StopSignal)
	if err != nil {
		return nil, err
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	steps.Done("spec")
	c := &sandbox.Container{
		ID: id, SandboxID: sb.ID, Name: name, Config: cfg,
		ImageRef: cfg.GetImage().GetImage(), ImageID: img.ID, ImageName: imageName(img.RepoTags, img.RepoDigests, img.ID),
		LogPath: logPath, Spec: specJSON, StopSignal: stopSignal, ImageVolumes: vols, CreatedAt: time.Now(),
		Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED},
	}
	if err := r.store.AddContainer(c); err != nil {
		return nil, err
	}
	steps.Done("store")
	r.publish(c.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT)
	log.Info("container created", "image", img.ID)
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

func imageName(tags, digests []string, id string) string {
	if len(tags) > 0 {
		return tags[0]
	}
	if len(digests) > 0 {
		return digests[0]
	}
	return id
}

// swapAccounting tells whether the memory cgroup accounts swap here, so
// that a memory limit may also bound memory+swap.
func swapAccounting() bool {
	for _, f := range []string{"/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"} {
		if _, err := os.Stat(f); err == nil {
			return true
		}
	}
	return false
}

// pidTarget checks the target of a container whose pid mode is TARGET: a
// running container of the same pod.
func (r *Runtime) pidTarget(podID, target string) (string, error) {
	if target == "" {
		return "", fmt.Errorf("pid namespace mode TARGET without a target_id: %w", errInvalid)
	}
	t, err := r.store.Container(target)
	if err != nil {
		return "", fmt.Errorf("pid namespace target %q: %w", target, err)
	}
	if t.SandboxID != podID {
		return "", fmt.Errorf("pid namespace target %s is not in pod %s: %w", t.ID, podID, errInvalid)
	}
	if t.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return "", fmt.Errorf("pid namespace target %s is %s, not running: %w", t.ID, t.Status.State, errPrecondition)
	}
	return t.ID, nil
}
