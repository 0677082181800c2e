package cri

import (
	"context"
	"encoding/json"
	"path"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// ContainerStatus implements RuntimeService.ContainerStatus, from memory.
func (r *Runtime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	c, err := r.store.Container(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(c)}
	if req.GetVerbose() {
		b, err := json.Marshal(map[string]any{
			"sandboxID": c.SandboxID, "name": c.Name, "pid": c.Status.Pid, "imageID": c.ImageID,
			"rootfs": "", "logPath": c.LogPath, "removing": c.Status.Removing, "runtimeSpec": json.RawMessage(c.Spec),
		})
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

func containerStatus(c sandbox.Container) *runtimeapi.ContainerStatus {
	st := &runtimeapi.ContainerStatus{
		Id:          c.ID,
		Metadata:    c.Config.GetMetadata(),
		State:       c.Status.State,
		CreatedAt:   c.CreatedAt.UnixNano(),
		ExitCode:    c.Status.ExitCode,
		Image:       &runtimeapi.ImageSpec{Image: c.ImageName, Annotations: c.Config.GetImage().GetAnnotations()},
		ImageRef:    c.ImageID,
		ImageId:     c.ImageID,
		Reason:      c.Status.Reason,
		Message:     c.Status.Message,
		Labels:      c.Config.GetLabels(),
		Annotations: c.Config.GetAnnotations(),
		Mounts:      containerMounts(c),
		LogPath:     c.LogPath,
		Resources:   &runtimeapi.ContainerResources{Linux: c.Config.GetLinux().GetResources()},
		User:        containerUser(c.Spec),
		StopSignal:  criSignal(c.StopSignal),
	}
	if !c.Status.StartedAt.IsZero() {
		st.StartedAt = c.Status.StartedAt.UnixNano()
	}
	if !c.Status.FinishedAt.IsZero() {
		st.FinishedAt = c.Status.FinishedAt.UnixNano()
	}
	return st
}

// ListContainers implements RuntimeService.ListContainers, from memory.
func (r *Runtime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	return &runtimeapi.ListContainersResponse{Containers: r.listContainers(req.GetFilter())}, nil
}

// listContainers are the containers matching f (all for nil), from
// memory: what ListContainers and StreamContainers answer.
func (r *Runtime) listContainers(f *runtimeapi.ContainerFilter) []*runtimeapi.Container {
	var out []*runtimeapi.Container
	for _, c := range r.store.Containers() {
		if f != nil {
			if f.GetId() != "" && !hasIDPrefix(c.ID, f.GetId()) {
				continue
			}
			if f.GetState() != nil && f.GetState().GetState() != c.Status.State {
				continue
			}
			if f.GetPodSandboxId() != "" && !hasIDPrefix(c.SandboxID, f.GetPodSandboxId()) {
				continue
			}
			if !matchLabels(c.Config.GetLabels(), f.GetLabelSelector()) {
				continue
			}
		}
		out = append(out, &runtimeapi.Container{
			Id: c.ID, PodSandboxId: c.SandboxID, Metadata: c.Config.GetMetadata(),
			Image: &runtimeapi.ImageSpec{Image: c.ImageName}, ImageRef: c.ImageID, ImageId: c.ImageID,
			State: c.Status.State, CreatedAt: c.CreatedAt.UnixNano(),
			Labels: c.Config.GetLabels(), Annotations: c.Config.GetAnnotations(),
		})
	}
	return out
}

// containerUser is the user the container's first process starts as: the
// process.user of its spec.
func containerUser(spec []byte) *runtimeapi.ContainerUser {
	var s struct {
		Process *struct {
			User specs.User `json:"user"`
		} `json:"process"`
	}
	if err := json.Unmarshal(spec, &s); err != nil || s.Process == nil {
		return nil
	}
	u := &runtimeapi.LinuxContainerUser{Uid: int64(s.Process.User.UID), Gid: int64(s.Process.User.GID)}
	for _, g := range s.Process.User.AdditionalGids {
		u.SupplementalGroups = append(u.SupplementalGroups, int64(g))
	}
	return &runtimeapi.ContainerUser{Linux: u}
}

// containerMounts are the container's mounts as requested, each image
// volume's with the id of its image in image_ref (the digest the kubelet
// reports for the volume).
func containerMounts(c sandbox.Container) []*runtimeapi.Mount {
	mounts := c.Config.GetMounts()
	if len(c.ImageVolumes) == 0 {
		return mounts
	}
	out := make([]*runtimeapi.Mount, len(mounts))
	for i, m := range mounts {
		out[i] = m
		if m.GetImage().GetImage() == "" {
			continue
		}
		for _, v := range c.ImageVolumes {
			if v.ContainerPath == path.Clean(m.GetContainerPath()) {
				m = proto.Clone(m).(*runtimeapi.Mount)
				m.Image.ImageRef = v.ImageID
				out[i] = m
				break
			}
		}
	}
	return out
}
