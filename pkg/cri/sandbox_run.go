package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

const podCallTimeout = 2 * time.Minute

// RunPodSandbox implements RuntimeService.RunPodSandbox.
func (r *Runtime) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (_ *runtimeapi.RunPodSandboxResponse, retErr error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	cfg := req.GetConfig()
	if cfg == nil {
		return nil, fmt.Errorf("sandbox config is missing: %w", errInvalid)
	}
	if err := checkSandboxMetadata(cfg.GetMetadata()); err != nil {
		return nil, err
	}
	if d := cfg.GetLogDirectory(); d != "" {
		if err := checkAbsolute("log directory", d); err != nil {
			return nil, err
		}
	}
	for _, pm := range cfg.GetPortMappings() {
		if pm.GetContainerPort() <= 0 || pm.GetContainerPort() > 65535 || pm.GetHostPort() < 0 || pm.GetHostPort() > 65535 {
			return nil, fmt.Errorf("port mapping %v is out of range: %w", pm, errInvalid)
		}
	}
	if err := checkUserNamespace(cfg); err != nil {
		return nil, err
	}
	if userNamespace(cfg) != nil && !r.userNamespaces(req.GetRuntimeHandler()) {
		return nil, fmt.Errorf("user namespaces (hostUsers: false) are not supported by handler %q here (see Status): %w", req.GetRuntimeHandler(), errPrecondition)
	}
	if err := r.checkCgroupDriver(req.GetRuntimeHandler()); err != nil {
		return nil, err
	}
	ctrl, err := r.controller(req.GetRuntimeHandler())
	if err != nil {
		return nil, err
	}
	steps := timing.Start()
	name := sandboxName(cfg.GetMetadata())
	id := newID()
	if err := r.store.ReserveName(name, id); err != nil {
		// The kubelet retries a RunPodSandbox that timed out on its side:
		// the pod it asked for already exists, so answer with it.
		if holder, ok := r.store.NameHolder(name); ok {
			if sb, err := r.store.Sandbox(holder); err == nil && sb.Status.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				return &runtimeapi.RunPodSandboxResponse{PodSandboxId: holder}, nil
			}
		}
		return nil, err
	}
	log := r.log.With("pod", id, "pod_name", name)
	defer func() {
		if retErr != nil {
			r.store.ReleaseName(name, id)
		}
		steps.Log(ctx, log, "run pod sandbox steps", "ok", retErr == nil)
	}()
	lock := r.lockPod(id)
	defer lock()
	steps.Done("reserve")

	// The intent (CREATING) is recorded before each side effect, so that
	// a restart after a crash undoes what this call made; storing the pod
	// completes it.
	intent := sandbox.Intent{Kind: sandbox.IntentSandbox, ID: id, Name: name, RuntimeHandler: req.GetRuntimeHandler(),
		CreatedAt: time.Now(), ControllerPod: true}
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
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	pod, err := ctrl.CreatePod(callCtx, podSpec(id, cfg, req.GetRuntimeHandler(), r.cfg.CgroupParent))
	if err != nil {
		undone = r.undoCreatePod(ctrl, id, log) // it may have made part of the pod
		return nil, fmt.Errorf("run pod %q: %w", name, err)
	}
	steps.Done("create_pod")
	defer func() {
		if retErr != nil {
			undone = r.undoCreatePod(ctrl, id, log) && undone
		}
	}()
	if err := r.checkPodCgroupDriver(pod); err != nil {
		return nil, fmt.Errorf("run pod %q: %w", name, err)
	}
	r.fault(FaultPodCreated)
	hostNetwork := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
	var network *controller.Network
	if !hostNetwork {
		intent.Network, intent.NetNSPath, intent.Config = true, pod.NetNSPath, cniConfig(cfg)
		if err := r.store.PutIntent(intent); err != nil {
			return nil, err
		}
		steps.Done("intent_network")
		ips, err := r.cfg.Network.Setup(callCtx, id, pod.NetNSPath, cfg)
		if err != nil {
			return nil, fmt.Errorf("set up network of pod %q: %w", name, err)
		}
		defer func() {
			if retErr != nil {
				cctx, cancel := cleanupContext()
				defer cancel()
				if err := r.cfg.Network.Teardown(cctx, id, pod.NetNSPath, cfg); err != nil {
					undone = false
					log.Error("roll back pod network", "error", err)
				}
			}
		}()
		network = &controller.Network{NetNSPath: pod.NetNSPath, IPs: ips}
		steps.Done("cni")
		r.fault(FaultPodNetwork)
	}
	if err := ctrl.StartPod(callCtx, id, network); err != nil {
		return nil, fmt.Errorf("start pod %q: %w", name, err)
	}
	r.fault(FaultPodStarted)
	steps.Done("start_pod")
	sb := &sandbox.Sandbox{
		ID: id, Name: name, Config: cfg, RuntimeHandler: req.GetRuntimeHandler(), CreatedAt: time.Now(),
		Status: sandbox.SandboxStatus{
			State:      runtimeapi.PodSandboxState_SANDBOX_READY,
			NetNSPath:  pod.NetNSPath,
			CgroupPath: pod.CgroupPath,
			NetworkUp:  !hostNetwork,
			UserNSPath: pod.UserNamespacePath,
		},
	}
	if network != nil {
		sb.Status.IPs = network.IPs
	}
	// NRI plugins see the pod before anyone else can: it is stored (and
	// listed) once they answered; one that fails fails the pod.
	unblock := r.nri.BlockSync()
	defer unblock()
	nriCtx, nriCancel := bounded(ctx, nriCallTimeout)
	err = r.nri.RunPodSandbox(nriCtx, *sb)
	nriCancel()
	if err != nil {
		return nil, fmt.Errorf("run pod %q: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			cctx, cancel := cleanupContext()
			defer cancel()
			r.nri.RemovePodSandbox(cctx, *sb)
		}
	}()
	if err := r.store.AddSandbox(sb); err != nil {
		return nil, err
	}
	steps.Done("store")
	log.Info("pod sandbox ready", "ips", sb.Status.IPs, "host_network", hostNetwork, "runtime_handler", req.GetRuntimeHandler())
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// podSpec is what the CRI pod config asks of the controller.
func podSpec(id string, cfg *runtimeapi.PodSandboxConfig, handler, defaultParent string) controller.PodSpec {
	linux := cfg.GetLinux()
	nso := linux.GetSecurityContext().GetNamespaceOptions()
	parent := linux.GetCgroupParent()
	if parent == "" {
		parent = defaultParent
	}
	spec := controller.PodSpec{
		ID:             id,
		RuntimeHandler: handler,
		CgroupParent:   parent,
		Hostname:       cfg.GetHostname(),
		Network:        namespaceMode(nso.GetNetwork()),
		PID:            namespaceMode(nso.GetPid()),
		IPC:            namespaceMode(nso.GetIpc()),
		Sysctls:        linux.GetSysctls(),
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		UserNamespace:  userNamespace(cfg),
	}
	if res := linux.GetResources(); res != nil {
		spec.Resources = controller.Resources{CPUPeriod: res.GetCpuPeriod(), CPUQuota: res.GetCpuQuota(), MemoryLimitBytes: res.GetMemoryLimitInBytes()}
	}
	if dns := cfg.GetDnsConfig(); dns != nil {
		spec.DNS = controller.DNS{Servers: dns.GetServers(), Searches: dns.GetSearches(), Options: dns.GetOptions()}
	}
	return spec
}

func namespaceMode(m runtimeapi.NamespaceMode) controller.NamespaceMode {
	switch m {
	case runtimeapi.NamespaceMode_POD:
		return controller.NamespacePod
	case runtimeapi.NamespaceMode_CONTAINER:
		return controller.NamespaceContainer
	case runtimeapi.NamespaceMode_NODE:
		return controller.NamespaceNode
	}
	return controller.NamespaceMode(m) // the controller refuses it
}
