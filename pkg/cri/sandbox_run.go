package cri

import (
	"context"
	"fmt"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
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
	ctrl, err := r.controller(req.GetRuntimeHandler())
	if err != nil {
		return nil, err
	}
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
	}()
	lock := r.lockPod(id)
	defer lock()

	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	alloc, err := ctrl.RunPod(callCtx, podSpec(id, cfg, req.GetRuntimeHandler(), r.cfg.CgroupParent))
	if err != nil {
		return nil, fmt.Errorf("run pod %q: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			cctx, cancel := cleanupContext()
			defer cancel()
			if err := ctrl.RemovePod(cctx, id); err != nil {
				log.Error("roll back pod", "error", err)
			}
		}
	}()
	hostNetwork := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
	var ips []string
	if !hostNetwork {
		ips, err = r.cfg.Network.Setup(callCtx, id, alloc.GetNetworkNamespacePath(), cfg)
		if err != nil {
			return nil, fmt.Errorf("set up network of pod %q: %w", name, err)
		}
		defer func() {
			if retErr != nil {
				cctx, cancel := cleanupContext()
				defer cancel()
				if err := r.cfg.Network.Teardown(cctx, id, alloc.GetNetworkNamespacePath(), cfg); err != nil {
					log.Error("roll back pod network", "error", err)
				}
			}
		}()
		if a, ok := ctrl.(sandbox.NetworkAttacher); ok {
			if err := a.AttachNetwork(callCtx, id, alloc.GetNetworkNamespacePath(), ips); err != nil {
				return nil, fmt.Errorf("attach network of pod %q: %w", name, err)
			}
		}
	}
	sb := &sandbox.Sandbox{
		ID: id, Name: name, Config: cfg, RuntimeHandler: req.GetRuntimeHandler(), CreatedAt: time.Now(),
		Status: sandbox.SandboxStatus{
			State:          runtimeapi.PodSandboxState_SANDBOX_READY,
			NetNSPath:      alloc.GetNetworkNamespacePath(),
			CgroupPath:     alloc.GetCgroupPath(),
			ResolvConfPath: alloc.GetResolvConfPath(),
			HostsPath:      alloc.GetHostsPath(),
			HostnamePath:   alloc.GetHostnamePath(),
			IPCNSPath:      alloc.GetIpcNamespacePath(),
			UTSNSPath:      alloc.GetUtsNamespacePath(),
			PIDNSPath:      alloc.GetPidNamespacePath(),
			IPs:            ips,
			NetworkUp:      !hostNetwork,
		},
	}
	if hostNetwork {
		sb.Status.NetNSPath = ""
	}
	if err := r.store.AddSandbox(sb); err != nil {
		return nil, err
	}
	log.Info("pod sandbox ready", "ips", ips, "host_network", hostNetwork, "runtime_handler", req.GetRuntimeHandler())
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// podSpec translates the CRI pod config into an Aurae pod.
func podSpec(id string, cfg *runtimeapi.PodSandboxConfig, handler, defaultParent string) *podsv0.Pod {
	linux := cfg.GetLinux()
	nso := linux.GetSecurityContext().GetNamespaceOptions()
	parent := linux.GetCgroupParent()
	if parent == "" {
		parent = defaultParent
	}
	pod := &podsv0.Pod{
		Id:           id,
		CgroupParent: parent,
		Hostname:     cfg.GetHostname(),
		Namespaces: &podsv0.NamespaceOptions{
			Network: podsv0.NamespaceMode(nso.GetNetwork()),
			Pid:     podsv0.NamespaceMode(nso.GetPid()),
			Ipc:     podsv0.NamespaceMode(nso.GetIpc()),
		},
		Sysctls:        linux.GetSysctls(),
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		RuntimeHandler: handler,
	}
	if res := linux.GetResources(); res != nil {
		pod.Resources = &podsv0.PodResources{CpuPeriod: res.GetCpuPeriod(), CpuQuota: res.GetCpuQuota(), MemoryLimitBytes: res.GetMemoryLimitInBytes()}
	}
	if dns := cfg.GetDnsConfig(); dns != nil {
		pod.Dns = &podsv0.DNSConfig{Servers: dns.GetServers(), Searches: dns.GetSearches(), Options: dns.GetOptions()}
	}
	return pod
}
