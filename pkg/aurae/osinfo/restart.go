package osinfo

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	commonapi "github.com/aurae-runtime/aurae-cri/api/common"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
)

func (s *Service) restart(ctx context.Context, req *osapi.RestartRequest) (*osapi.RestartResponse, error) {
	switch req.GetDriver() {
	case commonapi.ContainerDriver_CONTAINERD:
	case commonapi.ContainerDriver_CRI:
		// The kubelet owns a CRI container's lifecycle and the CRI has no
		// restart: auraed restarts only what it runs itself.
		return nil, fmt.Errorf("restart of CRI containers: the CRI has no restart and the kubelet owns their lifecycle; restart a container auraed runs with driver CONTAINERD: %w", errdefs.ErrFailedPrecondition)
	default:
		return nil, unknownDriver(req.GetDriver())
	}
	id := req.GetId()
	if id == "" {
		return nil, fmt.Errorf("restart: container id is empty: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetNamespace() == NamespaceCells || strings.Contains(id, "/") {
		// Their credentials are not recorded: a restart could not keep them.
		return nil, fmt.Errorf("restart of cell executable %q: only pod containers are restarted; stop and start it through the CellService: %w", id, errdefs.ErrFailedPrecondition)
	}
	// The namespace, when given, must be the container's.
	if ns := req.GetNamespace(); ns != "" {
		found := false
		for _, c := range s.cfg.Pods.Containers() {
			if c.Status.GetId() == id {
				found = podNamespace(c) == ns
			}
		}
		if !found {
			return nil, fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
	}
	if _, err := s.cfg.Pods.Restart(ctx, id, s.cfg.StopGracePeriod); err != nil {
		return nil, err
	}
	return &osapi.RestartResponse{Messages: []*osapi.Restart{{Metadata: s.meta()}}}, nil
}
