package cri

import (
	"context"
	"log/slog"
	"sort"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// Fault points: where Config.Fault is called, each right after a side
// effect and before the record that would say it is done. Fault injection
// tests kill aurae-cri there.
const (
	// FaultPodCreated: the controller made the pod; no network yet.
	FaultPodCreated = "pod-created"
	// FaultPodNetwork: CNI set the pod's network up; the pod is not started.
	FaultPodNetwork = "pod-network"
	// FaultPodStarted: the pod is started, not yet stored.
	FaultPodStarted = "pod-started"
	// FaultContainerRootfs: the container's rootfs snapshot is prepared and
	// mounted; the controller knows nothing of it.
	FaultContainerRootfs = "container-rootfs"
	// FaultContainerImageVolumes: the container's image volumes are
	// prepared and mounted; the container is not stored.
	FaultContainerImageVolumes = "container-image-volumes"
	// FaultContainerPrepared: the controller prepared the container, not
	// yet stored.
	FaultContainerPrepared = "container-prepared"
	// FaultContainerRemoving: RemoveContainer removed the container from
	// its controller; its record is still there, and its rootfs (a native
	// pod's goes at the same time as the container).
	FaultContainerRemoving = "container-removing"
	// FaultPodRemoving: RemovePodSandbox removed the pod's containers; the
	// pod and its record are still there.
	FaultPodRemoving = "pod-removing"
	// FaultPodResizeRecorded: UpdatePodSandboxResources recorded its
	// intent; the pod is not resized yet.
	FaultPodResizeRecorded = "pod-resize-recorded"
	// FaultPodResized: the controller resized the pod; the store does not
	// record it yet.
	FaultPodResized = "pod-resized"
)

// FaultPoints are every fault point of a pod's life, in the order it
// meets them (the resize's, FaultPodResizeRecorded and FaultPodResized,
// are met only by a resize, and driven by its own test).
var FaultPoints = []string{
	FaultPodCreated, FaultPodNetwork, FaultPodStarted, FaultContainerRootfs,
	FaultContainerImageVolumes, FaultContainerPrepared, FaultContainerRemoving, FaultPodRemoving,
}

// fault calls the test hook, if any, at a fault point.
func (r *Runtime) fault(point string) {
	if r.cfg.Fault != nil {
		r.cfg.Fault(point)
	}
}

// cniConfig is what CNI DEL needs of a pod's config, kept in its intent:
// its identity (CNI_ARGS), port mappings (portmap) and DNS, not its labels
// and annotations (up to 256 KiB).
func cniConfig(cfg *runtimeapi.PodSandboxConfig) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{Metadata: cfg.GetMetadata(), PortMappings: cfg.GetPortMappings(), DnsConfig: cfg.GetDnsConfig()}
}

// settleIntent ends the intent of a call that failed: gone when every undo
// succeeded, else kept, so that recovery at the next start finishes the
// undo.
func (r *Runtime) settleIntent(id string, undone bool, log *slog.Logger) {
	if !undone {
		log.Warn("undo incomplete: its intent stays, for recovery at the next start")
		return
	}
	if err := r.store.DeleteIntent(id); err != nil {
		log.Error("forget intent", "error", err)
	}
}

// undoCreatePod frees what CreatePod made of a pod (under a fresh context);
// it reports whether that worked.
func (r *Runtime) undoCreatePod(ctrl controller.Controller, podID string, log *slog.Logger) bool {
	ctx, cancel := cleanupContext()
	defer cancel()
	if err := ctrl.RemovePod(ctx, podID); err != nil && !errdefs.IsNotFound(err) {
		log.Error("roll back pod", "error", err)
		return false
	}
	return true
}

// undoPrepareContainer undoes PrepareContainer (under a fresh context); it
// reports whether that worked.
func (r *Runtime) undoPrepareContainer(ctrl controller.Controller, podID, id string, log *slog.Logger) bool {
	ctx, cancel := cleanupContext()
	defer cancel()
	if err := ctrl.RemoveContainer(ctx, podID, id); err != nil && !errdefs.IsNotFound(err) {
		log.Error("roll back container", "error", err)
		return false
	}
	return true
}

// undoRootfs unmounts a container's rootfs and removes its snapshot and
// lease (under a fresh context); it reports whether that worked.
func (r *Runtime) undoRootfs(id string, log *slog.Logger) bool {
	ok := true
	if err := unmountRootfs(r.rootfsDir(id)); err != nil {
		log.Error("roll back rootfs mount", "error", err)
		ok = false
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	if err := r.cfg.Images.RemoveRootfs(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		log.Error("roll back rootfs snapshot", "error", err)
		ok = false
	}
	return ok
}

// recoverIntents runs first in Recover. Every pod or container left
// CREATING (a RunPodSandbox or CreateContainer cut short: nobody got its
// id) is undone, from what its intent says was begun; every one left
// REMOVING is removed. A failure is logged and leaves the record for the
// next start: it does not stop aurae-cri.
func (r *Runtime) recoverIntents(ctx context.Context) {
	intents := r.store.Intents()
	// Containers first: the pod of one may be going too.
	sort.SliceStable(intents, func(i, j int) bool {
		return intents[i].Kind == sandbox.IntentContainer && intents[j].Kind != sandbox.IntentContainer
	})
	for _, in := range intents {
		switch in.Kind {
		case sandbox.IntentContainer:
			r.undoContainerIntent(ctx, in)
		case sandbox.IntentSandbox:
			r.undoPodIntent(ctx, in)
		case sandbox.IntentResize:
			// Finished once the controllers know their pods again
			// (recoverResizes).
		default:
			r.log.Error("intent of an unknown kind: kept", "kind", in.Kind, "id", in.ID)
		}
	}
	for _, c := range r.store.Containers() {
		if c.Status.Removing {
			r.log.Info("finishing the removal of a container", "pod", c.SandboxID, "container", c.ID)
			if err := r.removeContainer(ctx, c.ID, removeNow); err != nil {
				r.log.Error("finish removing container", "pod", c.SandboxID, "container", c.ID, "error", err)
			}
		}
	}
	for _, sb := range r.store.Sandboxes() {
		if sb.Status.Removing {
			r.log.Info("finishing the removal of a pod", "pod", sb.ID)
			if err := r.removePod(ctx, sb); err != nil {
				r.log.Error("finish removing pod", "pod", sb.ID, "error", err)
			}
		}
	}
}

// undoContainerIntent undoes a CreateContainer cut short: the controller's
// container, the rootfs mount, the snapshot and its lease.
func (r *Runtime) undoContainerIntent(ctx context.Context, in sandbox.Intent) {
	log := r.log.With("pod", in.PodID, "container", in.ID, "container_name", in.Name)
	if !validID(in.ID) {
		log.Error("intent with an invalid container id: kept")
		return
	}
	if in.ControllerContainer {
		ctrl, err := r.controller(in.RuntimeHandler)
		if err != nil {
			log.Error("undo container: kept", "error", err)
			return
		}
		callCtx, cancel := bounded(ctx, podCallTimeout)
		err = ctrl.RemoveContainer(callCtx, in.PodID, in.ID)
		cancel()
		if err != nil && !errdefs.IsNotFound(err) {
			log.Error("undo container: kept for the next start", "error", err)
			return
		}
	}
	if in.Rootfs && !r.undoRootfs(in.ID, log) {
		log.Error("undo container rootfs: kept for the next start")
		return
	}
	if !r.releaseImageVolumes(ctx, in.ImageVolumes, in.ID) {
		log.Error("undo container image volumes: kept for the next start")
		return
	}
	if err := r.store.DeleteIntent(in.ID); err != nil {
		log.Error("forget intent", "error", err)
		return
	}
	r.store.ReleaseName(in.Name, in.ID)
	log.Warn("undid a container creation cut short", "snapshot", in.Snapshot, "lease", in.Lease, "rootfs", in.RootfsDir)
}

// undoPodIntent undoes a RunPodSandbox cut short: CNI DEL, then the
// controller's pod (made by this aurae-cri: its intent says so).
func (r *Runtime) undoPodIntent(ctx context.Context, in sandbox.Intent) {
	log := r.log.With("pod", in.ID, "pod_name", in.Name, "runtime_handler", in.RuntimeHandler)
	if in.Network {
		callCtx, cancel := bounded(ctx, podCallTimeout)
		err := r.cfg.Network.Teardown(callCtx, in.ID, in.NetNSPath, in.Config)
		cancel()
		if err != nil {
			log.Error("undo pod network: kept for the next start", "error", err)
			return
		}
	}
	if in.ControllerPod {
		ctrl, err := r.controller(in.RuntimeHandler)
		if err != nil {
			log.Error("undo pod: kept", "error", err)
			return
		}
		callCtx, cancel := bounded(ctx, podCallTimeout)
		err = ctrl.RemovePod(callCtx, in.ID)
		cancel()
		if err != nil && !errdefs.IsNotFound(err) {
			log.Error("undo pod: kept for the next start", "error", err)
			return
		}
	}
	if err := r.store.DeleteIntent(in.ID); err != nil {
		log.Error("forget intent", "error", err)
		return
	}
	r.store.ReleaseName(in.Name, in.ID)
	log.Warn("undid a pod creation cut short", "netns", in.NetNSPath, "network", in.Network)
}

// unknownPod decides about a pod a controller runs that the store does
// not hold. One still named by an intent is left for the next start (its
// undo failed above). Any other was not made by this aurae-cri (or its
// records were lost with an unreadable state file): it is left alone.
func (r *Runtime) unknownPod(handlers []string, id string) {
	log := r.log.With("pod", id, "runtime_handlers", handlers)
	if _, ok := r.store.Intent(id); ok {
		log.Warn("a pod cut short in its creation could not be undone: retried at the next start")
		return
	}
	if aside := r.store.MovedAside(); aside != "" {
		log.Warn("the runtime runs a pod the lost state file may have held: left alone", "moved_aside", aside)
		return
	}
	log.Warn("the runtime runs a pod aurae-cri did not create: left alone")
}

// validID tells an id newID made from anything else: recovery builds paths
// from the ids it reads back.
func validID(id string) bool { return sandbox.ValidID(id) }
