package cri

import (
	"context"
	"encoding/json"
	"sort"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const criAPIVersion = "v1"

// Version implements RuntimeService.Version.
func (r *Runtime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0",
		RuntimeName:       r.cfg.RuntimeName,
		RuntimeVersion:    r.cfg.RuntimeVersion,
		RuntimeApiVersion: criAPIVersion,
	}, nil
}

// Status implements RuntimeService.Status: RuntimeReady once recovered,
// NetworkReady when CNI has a usable config.
func (r *Runtime) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	runtimeCond := &runtimeapi.RuntimeCondition{Type: runtimeapi.RuntimeReady, Status: true}
	if err := r.checkReady(); err != nil {
		runtimeCond.Status, runtimeCond.Reason, runtimeCond.Message = false, "Recovering", err.Error()
	}
	netCond := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if err := r.cfg.Network.Ready(); err != nil {
		netCond.Status, netCond.Reason, netCond.Message = false, "NetworkPluginNotReady", err.Error()
	}
	resp := &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{runtimeCond, netCond}}}
	var handlers []string
	for h := range r.cfg.Controllers {
		handlers = append(handlers, h)
	}
	sort.Strings(handlers)
	for _, h := range handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{
			Name:     h,
			Features: &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: r.host.RecursiveReadOnly, UserNamespaces: r.userNamespaces(h)},
		})
	}
	// ContainerStatus reports the user (ContainerUser) and the policy is
	// applied by pkg/ocispec.
	resp.Features = &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true}
	if req.GetVerbose() {
		// stateDir as containerd's: where rootfs are mounted (critest probes
		// id-mapped mounts there).
		b, _ := json.Marshal(map[string]any{"handlers": handlers, "podCIDR": r.podCIDR.Load(), "stateDir": r.cfg.RootDir})
		resp.Info = map[string]string{"config": string(b)}
	}
	return resp, nil
}

// RuntimeConfig implements RuntimeService.RuntimeConfig: the cgroup driver
// in use (the kubelet 1.31+ takes its own from it).
func (r *Runtime) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	d := runtimeapi.CgroupDriver_CGROUPFS
	if r.systemdDriver() {
		d = runtimeapi.CgroupDriver_SYSTEMD
	}
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: d}}, nil
}

// UpdateRuntimeConfig implements RuntimeService.UpdateRuntimeConfig: the
// kubelet tells the pod CIDR; CNI's IPAM config decides addresses, so it
// is recorded for Status only.
func (r *Runtime) UpdateRuntimeConfig(_ context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	if cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr(); cidr != "" {
		r.podCIDR.Store(cidr)
		r.log.Info("pod CIDR updated", "pod_cidr", cidr)
	}
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}
