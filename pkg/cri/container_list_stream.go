package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StreamContainers implements RuntimeService.StreamContainers: what
// ListContainers answers, in messages of bounded size (sendChunks).
func (r *Runtime) StreamContainers(req *runtimeapi.StreamContainersRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamContainersResponse]) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	items := r.listContainers(req.GetFilter())
	return sendChunks(stream.Context(), "containers", items, func(chunk []*runtimeapi.Container) error {
		return stream.Send(&runtimeapi.StreamContainersResponse{Containers: chunk})
	})
}
