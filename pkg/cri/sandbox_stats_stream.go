package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StreamPodSandboxStats implements RuntimeService.StreamPodSandboxStats:
// what ListPodSandboxStats answers (the same fan-out, a wedged pod with its
// last known figures), in messages of bounded size (sendChunks).
func (r *Runtime) StreamPodSandboxStats(req *runtimeapi.StreamPodSandboxStatsRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamPodSandboxStatsResponse]) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	ctx := stream.Context()
	items := r.listPodSandboxStats(ctx, req.GetFilter())
	return sendChunks(ctx, "pod sandbox stats", items, func(chunk []*runtimeapi.PodSandboxStats) error {
		return stream.Send(&runtimeapi.StreamPodSandboxStatsResponse{PodSandboxStats: chunk})
	})
}
