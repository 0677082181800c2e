package cri

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// UpdatePodSandboxResources implements RuntimeService.UpdatePodSandboxResources,
// which the kubelet calls on an in-place pod resize once it has resized
// its own pod cgroup: the pod's controller applies the pod-level resources
// (and overhead) as a whole to the pod, as far as its kind can, and the
// pod's record keeps them (its config's linux.overhead and
// linux.resources, shown by the verbose PodSandboxStatus). The intent is
// recorded first: a resize cut short by a crash is finished at recovery.
// A resize the pod cannot take is refused and the pod keeps what it had.
func (r *Runtime) UpdatePodSandboxResources(ctx context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if req.GetPodSandboxId() == "" {
		return nil, fmt.Errorf("pod sandbox id is empty: %w", errInvalid)
	}
	res, err := podResources(req.GetOverhead(), req.GetResources())
	if err != nil {
		return nil, err
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	unlock := r.lockPod(sb.ID)
	defer unlock()
	if sb, err = r.store.Sandbox(sb.ID); err != nil {
		return nil, err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || sb.Status.Removing {
		return nil, fmt.Errorf("pod sandbox %s is not ready (%s): %w", sb.ID, sb.Status.State, errPrecondition)
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	log := r.log.With("pod", sb.ID)
	// Plugins hear of the resize before anything changes: one may refuse it.
	nriCtx, nriCancel := bounded(ctx, nriCallTimeout)
	err = r.nri.UpdatePodSandbox(nriCtx, sb, req.GetOverhead(), req.GetResources())
	nriCancel()
	if err != nil {
		return nil, fmt.Errorf("update resources of pod %s: %w", sb.ID, err)
	}
	intent := sandbox.Intent{Kind: sandbox.IntentResize, ID: sb.ID, Name: sb.Name, RuntimeHandler: sb.RuntimeHandler, CreatedAt: time.Now(),
		Config: &runtimeapi.PodSandboxConfig{Linux: &runtimeapi.LinuxPodSandboxConfig{Overhead: req.GetOverhead(), Resources: req.GetResources()}}}
	if err := r.store.PutIntent(intent); err != nil {
		return nil, err
	}
	r.fault(FaultPodResizeRecorded)
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	if err := ctrl.UpdatePodResources(callCtx, sb.ID, res); err != nil {
		r.undoResize(ctrl, sb, log)
		return nil, fmt.Errorf("update resources of pod %s: %w", sb.ID, err)
	}
	r.fault(FaultPodResized)
	resized, err := r.store.CommitResize(sb.ID, req.GetOverhead(), req.GetResources())
	if err != nil {
		return nil, err
	}
	nriCtx, nriCancel = bounded(ctx, nriCallTimeout)
	r.nri.PostUpdatePodSandbox(nriCtx, resized)
	nriCancel()
	log.Info("pod sandbox resources updated", "runtime_handler", sb.RuntimeHandler,
		"cpu_shares", res.Resources.CPUShares, "cpu_quota", res.Resources.CPUQuota, "cpu_period", res.Resources.CPUPeriod,
		"memory_limit", res.Resources.MemoryLimitBytes, "overhead_memory", res.Overhead.MemoryLimitBytes)
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

// undoResize puts back what the pod had before a resize that failed part
// way (under a fresh context), and forgets its intent: the resources the
// store records, or none when no resize was ever applied.
func (r *Runtime) undoResize(ctrl controller.Controller, sb sandbox.Sandbox, log *slog.Logger) {
	var prev controller.PodResources
	if sb.Status.ResourcesApplied {
		var err error
		if prev, err = podResources(sb.Config.GetLinux().GetOverhead(), sb.Config.GetLinux().GetResources()); err != nil {
			log.Error("undo resize: the recorded resources are invalid", "error", err)
		}
	}
	ctx, cancel := cleanupContext()
	defer cancel()
	if err := ctrl.UpdatePodResources(ctx, sb.ID, prev); err != nil && !errdefs.IsNotFound(err) {
		log.Error("undo resize: the pod may keep part of the refused resources until the next resize", "error", err)
	}
	if err := r.store.DeleteIntent(sb.ID); err != nil {
		log.Error("forget resize intent", "error", err)
	}
}

// recoverResizes finishes the resizes a crash cut short, once the
// controllers know their pods again: the pod gets the resources its intent
// names and the store records them; a pod no longer ready, or one whose
// controller refuses, gets back what the store records.
func (r *Runtime) recoverResizes(ctx context.Context) {
	for _, in := range r.store.Intents() {
		if in.Kind != sandbox.IntentResize {
			continue
		}
		log := r.log.With("pod", in.ID)
		sb, err := r.store.Sandbox(in.ID)
		if err != nil {
			log.Warn("resize of a pod that is gone: forgotten")
			if err := r.store.DeleteIntent(in.ID); err != nil {
				log.Error("forget resize intent", "error", err)
			}
			continue
		}
		ctrl, err := r.controller(sb.RuntimeHandler)
		if err != nil {
			log.Error("finish resize: kept for the next start", "error", err)
			continue
		}
		overhead, resources := in.Config.GetLinux().GetOverhead(), in.Config.GetLinux().GetResources()
		res, err := podResources(overhead, resources)
		if err == nil && sb.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			callCtx, cancel := bounded(ctx, podCallTimeout)
			err = ctrl.UpdatePodResources(callCtx, sb.ID, res)
			cancel()
			if err == nil {
				if _, err := r.store.CommitResize(sb.ID, overhead, resources); err != nil {
					log.Error("finish resize: kept for the next start", "error", err)
					continue
				}
				log.Info("finished a pod resize cut short", "memory_limit", res.Resources.MemoryLimitBytes, "cpu_quota", res.Resources.CPUQuota)
				continue
			}
		}
		log.Warn("a pod resize cut short could not be finished: the pod gets back its recorded resources", "state", sb.Status.State, "error", err)
		if sb.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			r.undoResize(ctrl, sb, log)
		} else if err := r.store.DeleteIntent(sb.ID); err != nil {
			log.Error("forget resize intent", "error", err)
		}
	}
}

// Bounds of the kernel's CFS bandwidth and of cgroup v1 cpu.shares.
const (
	minCFSPeriod = 1000    // µs
	maxCFSPeriod = 1000000 // µs
	minCFSQuota  = 1000    // µs
	minCPUShares = 2
	maxCPUShares = 262144
)

// podResources checks the pod-level resources of a resize, naming the
// field of what is refused, and converts them.
func podResources(overhead, resources *runtimeapi.LinuxContainerResources) (controller.PodResources, error) {
	o, err := linuxResources("overhead", overhead)
	if err != nil {
		return controller.PodResources{}, err
	}
	r, err := linuxResources("resources", resources)
	if err != nil {
		return controller.PodResources{}, err
	}
	return controller.PodResources{Overhead: o, Resources: r}, nil
}

func linuxResources(field string, lr *runtimeapi.LinuxContainerResources) (controller.LinuxResources, error) {
	var out controller.LinuxResources
	if lr == nil {
		return out, nil
	}
	bad := func(name string, v any, why string) error {
		return fmt.Errorf("%s.%s %v %s: %w", field, name, v, why, errInvalid)
	}
	if v := lr.GetCpuShares(); v != 0 && (v < minCPUShares || v > maxCPUShares) {
		return out, bad("cpu_shares", v, fmt.Sprintf("is out of [%d, %d]", minCPUShares, maxCPUShares))
	}
	if v := lr.GetCpuPeriod(); v != 0 && (v < minCFSPeriod || v > maxCFSPeriod) {
		return out, bad("cpu_period", v, fmt.Sprintf("µs is out of [%d, %d]", minCFSPeriod, maxCFSPeriod))
	}
	if v := lr.GetCpuQuota(); v != 0 && v != -1 && v < minCFSQuota {
		return out, bad("cpu_quota", v, fmt.Sprintf("µs is neither -1 (none) nor at least %d", minCFSQuota))
	}
	if v := lr.GetMemoryLimitInBytes(); v < 0 {
		return out, bad("memory_limit_in_bytes", v, "is negative")
	}
	if v := lr.GetMemorySwapLimitInBytes(); v != 0 && v != -1 && (v < 0 || lr.GetMemoryLimitInBytes() <= 0 || v < lr.GetMemoryLimitInBytes()) {
		return out, bad("memory_swap_limit_in_bytes", v, "is neither -1 (none) nor at least memory_limit_in_bytes")
	}
	if v := lr.GetOomScoreAdj(); v != 0 {
		return out, bad("oom_score_adj", v, "is a container's setting: a pod has none")
	}
	if err := checkCPUList(field+".cpuset_cpus", lr.GetCpusetCpus()); err != nil {
		return out, err
	}
	if err := checkCPUList(field+".cpuset_mems", lr.GetCpusetMems()); err != nil {
		return out, err
	}
	out = controller.LinuxResources{
		CPUShares: lr.GetCpuShares(), CPUQuota: lr.GetCpuQuota(), CPUPeriod: lr.GetCpuPeriod(),
		Cpus: lr.GetCpusetCpus(), Mems: lr.GetCpusetMems(),
		MemoryLimitBytes: lr.GetMemoryLimitInBytes(), MemorySwapBytes: max(lr.GetMemorySwapLimitInBytes(), 0),
		Unified: lr.GetUnified(),
	}
	for _, h := range lr.GetHugepageLimits() {
		if !linux.ValidPageSize(h.GetPageSize()) {
			return out, bad("hugepage_limits.page_size", strconv.Quote(h.GetPageSize()), "is not a size such as 2MB or 1GB")
		}
		if out.Hugepages == nil {
			out.Hugepages = map[string]uint64{}
		}
		if _, dup := out.Hugepages[h.GetPageSize()]; dup {
			return out, bad("hugepage_limits.page_size", h.GetPageSize(), "is named twice")
		}
		out.Hugepages[h.GetPageSize()] = h.GetLimit()
	}
	for k := range lr.GetUnified() {
		if k == "" || strings.ContainsAny(k, "/\x00") || strings.HasPrefix(k, "cgroup.") || !strings.Contains(k, ".") {
			return out, bad("unified", strconv.Quote(k), "is not the name of a controller's interface file")
		}
	}
	return out, nil
}

// checkCPUList checks a cpuset list ("0-3,6"); "" is none.
func checkCPUList(field, s string) error {
	if s != "" && !linux.ValidCPUList(s) {
		return fmt.Errorf("%s %q is not a cpu list such as 0-3,6 (ascending, below %d): %w", field, s, linux.MaxCPUNumber, errInvalid)
	}
	return nil
}
