package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// PodSandboxStatus implements RuntimeService.PodSandboxStatus, from memory.
func (r *Runtime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: sandboxStatus(sb)}
	if req.GetVerbose() {
		info := map[string]any{
			"name": sb.Name, "runtimeHandler": sb.RuntimeHandler, "netNamespacePath": sb.Status.NetNSPath,
			"cgroupPath": sb.Status.CgroupPath, "networkUp": sb.Status.NetworkUp, "config": sb.Config,
		}
		if sb.Status.ResourcesApplied {
			// What the last UpdatePodSandboxResources applied (also in
			// config, beside what the pod was created with otherwise).
			info["podResources"] = map[string]any{"overhead": sb.Config.GetLinux().GetOverhead(), "resources": sb.Config.GetLinux().GetResources()}
		}
		if sb.Status.CleanupError != "" {
			info["cleanupError"] = sb.Status.CleanupError
		}
		b, err := json.Marshal(info)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func sandboxStatus(sb sandbox.Sandbox) *runtimeapi.PodSandboxStatus {
	st := &runtimeapi.PodSandboxStatus{
		Id:             sb.ID,
		Metadata:       sb.Config.GetMetadata(),
		State:          sb.Status.State,
		CreatedAt:      sb.CreatedAt.UnixNano(),
		Labels:         sb.Config.GetLabels(),
		Annotations:    sb.Config.GetAnnotations(),
		RuntimeHandler: sb.RuntimeHandler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: sb.Config.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if len(sb.Status.IPs) > 0 {
		st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: sb.Status.IPs[0]}
		for _, ip := range sb.Status.IPs[1:] {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return st
}

// ListPodSandbox implements RuntimeService.ListPodSandbox, from memory.
func (r *Runtime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	return &runtimeapi.ListPodSandboxResponse{Items: r.listPodSandboxes(req.GetFilter())}, nil
}

// listPodSandboxes are the pods matching f (all for nil), from memory:
// what ListPodSandbox and StreamPodSandboxes answer.
func (r *Runtime) listPodSandboxes(f *runtimeapi.PodSandboxFilter) []*runtimeapi.PodSandbox {
	var out []*runtimeapi.PodSandbox
	for _, sb := range r.store.Sandboxes() {
		if f != nil {
			if f.GetId() != "" && !hasIDPrefix(sb.ID, f.GetId()) {
				continue
			}
			if f.GetState() != nil && f.GetState().GetState() != sb.Status.State {
				continue
			}
			if !matchLabels(sb.Config.GetLabels(), f.GetLabelSelector()) {
				continue
			}
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: sb.ID, Metadata: sb.Config.GetMetadata(), State: sb.Status.State, CreatedAt: sb.CreatedAt.UnixNano(),
			Labels: sb.Config.GetLabels(), Annotations: sb.Config.GetAnnotations(), RuntimeHandler: sb.RuntimeHandler,
		})
	}
	return out
}

func hasIDPrefix(id, prefix string) bool { return len(prefix) <= len(id) && id[:len(prefix)] == prefix }

func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
