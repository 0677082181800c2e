package osinfo

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

const (
	// NamespacePods is the namespace of pod containers that aurae-cri did
	// not make (no Kubernetes namespace); NamespaceCells that of cells'
	// executables.
	NamespacePods  = "aurae"
	NamespaceCells = "cells"
	// labelPodNamespace is the kubelet's label of a pod's namespace.
	labelPodNamespace = "io.kubernetes.pod.namespace"
)

func (s *Service) containers(ctx context.Context, req *osapi.ContainersRequest) (*osapi.ContainersResponse, error) {
	var list []*osapi.ContainerInfo
	switch req.GetDriver() {
	case commonapi.ContainerDriver_CRI:
		cri, err := s.dialCRI(ctx)
		if err != nil {
			return nil, err
		}
		defer cri.close()
		if list, err = cri.containers(ctx, req.GetNamespace()); err != nil {
			return nil, err
		}
	case commonapi.ContainerDriver_CONTAINERD:
		for _, c := range s.cfg.Pods.Containers() {
			if info := podContainer(c); matches(req.GetNamespace(), info.GetNamespace()) {
				list = append(list, info)
			}
		}
		if matches(req.GetNamespace(), NamespaceCells) {
			cells, err := s.cfg.Cells.List(ctx, &cellsv0.CellServiceListRequest{})
			if err != nil {
				return nil, err
			}
			list = appendExecutables(list, cells.GetCells())
		}
	default:
		return nil, unknownDriver(req.GetDriver())
	}
	return &osapi.ContainersResponse{Messages: []*osapi.Container{{Metadata: s.meta(), Containers: list}}}, nil
}

func matches(want, namespace string) bool { return want == "" || want == namespace }

func unknownDriver(d commonapi.ContainerDriver) error {
	return fmt.Errorf("unknown container driver %s: %w", d, errdefs.ErrInvalidArgument)
}

// podContainer is what Containers shows of a pod container; aurae-cri's
// containers carry their Kubernetes namespace, name and image in their
// spec's annotations.
func podContainer(c pods.ContainerInfo) *osapi.ContainerInfo {
	st := c.Status
	info := &osapi.ContainerInfo{
		Namespace: podNamespace(c),
		Id:        st.GetId(),
		Image:     c.Annotations[ocispec.AnnotationImageName],
		Pid:       uint32(max(st.GetPid(), 0)),
		Status:    containerState(st.GetState()),
		PodId:     st.GetPodId(),
		Name:      c.Annotations[ocispec.AnnotationContainerName],
	}
	if info.Name == "" {
		info.Name = st.GetId()
	}
	return info
}

func podNamespace(c pods.ContainerInfo) string {
	if ns := c.Annotations[ocispec.AnnotationSandboxNamespace]; ns != "" {
		return ns
	}
	if ns := c.PodLabels[labelPodNamespace]; ns != "" {
		return ns
	}
	return NamespacePods
}

func containerState(s podsv0.ContainerState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CONTAINER_STATE_"))
}

// appendExecutables adds the executables of cells and their children: id
// "<cell>/<executable>", the cell as the pod.
func appendExecutables(list []*osapi.ContainerInfo, cells []*cellsv0.CellGraphNode) []*osapi.ContainerInfo {
	for _, n := range cells {
		cell := n.GetCell().GetName()
		for _, e := range n.GetExecutables() {
			list = append(list, &osapi.ContainerInfo{
				Namespace: NamespaceCells,
				Id:        path.Join(cell, e.GetName()),
				Pid:       uint32(max(e.GetPid(), 0)),
				Status:    strings.ToLower(strings.TrimPrefix(e.GetState().String(), "EXECUTABLE_STATE_")),
				PodId:     cell,
				Name:      e.GetName(),
			})
		}
		list = appendExecutables(list, n.GetChildren())
	}
	return list
}
