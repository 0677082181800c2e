package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StreamPodSandboxes implements RuntimeService.StreamPodSandboxes: what
// ListPodSandbox answers, in messages of bounded size (sendChunks).
func (r *Runtime) StreamPodSandboxes(req *runtimeapi.StreamPodSandboxesRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamPodSandboxesResponse]) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	items := r.listPodSandboxes(req.GetFilter())
	return sendChunks(stream.Context(), "pod sandboxes", items, func(chunk []*runtimeapi.PodSandbox) error {
		return stream.Send(&runtimeapi.StreamPodSandboxesResponse{PodSandboxes: chunk})
	})
}
