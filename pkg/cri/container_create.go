package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	imageRef := cfg.GetImage().GetImage()
	var ckpt *checkpointSource
	if isCheckpointImage(imageRef) {
		// A checkpoint archive, as CRI-O takes it: the new container runs
		// the image the checkpointed one ran, with its rootfs changes, and
		// is restored from its CRIU images at start.
		if slices.Contains(vm.Handlers, sb.RuntimeHandler) {
			return nil, fmt.Errorf("restore of checkpoint %s into pod %s of VM handler %q: %w", imageRef, sb.ID, sb.RuntimeHandler, errPrecondition)
		}
		if ckpt, err = r.openCheckpoint(callCtx, imageRef); err != nil {
			return nil, err
		}
		defer func() {
			if err := os.RemoveAll(ckpt.dir); err != nil {
				log.Warn("remove checkpoint work dir", "path", ckpt.dir, "error", err)
			}
		}()
		imageRef = ckpt.config.RootfsImageRef
	}
	img, err := r.cfg.Images.Resolve(callCtx, imageRef)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", imageRef, err)
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
	// It names all this call may make, the controller's container too (its
	// undo, a RemoveContainer, takes an unknown container as removed): one
	// commit before the first side effect.
	rootfs := r.rootfsDir(id)
	intent := sandbox.Intent{Kind: sandbox.IntentContainer, ID: id, PodID: sb.ID, Name: name, RuntimeHandler: sb.RuntimeHandler,
		CreatedAt: time.Now(), Rootfs: true, Snapshot: image.RootfsKey(id), RootfsDir: rootfs,
		ImageVolumes: volumeKeys(vols), ControllerContainer: true}
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
	restoreFrom := ""
	if ckpt != nil {
		if err := applyRootfsDiff(callCtx, rootfs, ckpt.dir); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", cfg.GetImage().GetImage(), err)
		}
		// Beside the rootfs mount point: removed with it.
		restoreFrom = filepath.Join(filepath.Dir(rootfs), metadata.CheckpointDirectory)
		if err := os.Rename(ckpt.imagesDir(), restoreFrom); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", cfg.GetImage().GetImage(), err)
		}
	}
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
	in := ocispec.Input{
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
	}
	spec, err := ocispec.Generate(in)
	if err != nil {
		return nil, fmt.Errorf("spec of %q: %w", name, err)
	}
	stopSignal, err := stopSignal(cfg.GetStopSignal(), img.Config.StopSignal)
	if err != nil {
		return nil, err
	}
	c := &sandbox.Container{
		ID: id, SandboxID: sb.ID, Name: name, Config: cfg,
		ImageRef: imageRef, ImageID: img.ID, RestoreFrom: restoreFrom, ImageName: imageName(img.RepoTags, img.RepoDigests, img.ID),
		LogPath: logPath, StopSignal: stopSignal, ImageVolumes: vols, UpperDir: upperDirOf(mounts), CreatedAt: time.Now(),
		Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED},
	}
	// NRI plugins adjust the container before it is stored (and listed);
	// their checked adjustment is applied by the one spec writer.
	unblock := r.nri.BlockSync()
	defer unblock()
	if spec, err = r.nriCreate(ctx, sb, c, in, spec, log); err != nil {
		return nil, fmt.Errorf("create %q: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			cctx, cancel := cleanupContext()
			defer cancel()
			r.nri.RemoveContainer(cctx, sb, *c)
		}
	}()
	if c.Spec, err = json.Marshal(spec); err != nil {
		return nil, err
	}
	steps.Done("spec")
	if err := r.store.AddContainer(c); err != nil {
		return nil, err
	}
	steps.Done("store")
	unblock()
	nriCtx, nriCancel := bounded(ctx, nriCallTimeout)
	r.nri.PostCreateContainer(nriCtx, sb, *c)
	nriCancel()
	r.publish(c.ID, sb.ID, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT)
	log.Info("container created", "image", img.ID)
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

// nriCreate asks NRI plugins for their adjustment of the container whose
// spec from the request is spec, and answers the spec with it applied.
func (r *Runtime) nriCreate(ctx context.Context, sb sandbox.Sandbox, c *sandbox.Container, in ocispec.Input, spec *specs.Spec, log *slog.Logger) (*specs.Spec, error) {
	nriCtx, cancel := bounded(ctx, nriCallTimeout)
	defer cancel()
	adj, err := r.nri.CreateContainer(nriCtx, sb, *c, spec, in.Pod.OOMScoreAdjMin)
	if err != nil || adj == nil {
		return spec, err
	}
	in.Adjustment = adj
	adjusted, err := ocispec.Generate(in)
	if err != nil {
		return nil, fmt.Errorf("spec as NRI adjusted it: %w", err)
	}
	log.Info("container spec adjusted by NRI", "by", adj.By)
	return adjusted, nil
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
