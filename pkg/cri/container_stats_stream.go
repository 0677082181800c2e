package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StreamContainerStats implements RuntimeService.StreamContainerStats:
// what ListContainerStats answers (the same fan-out, bounded by statsWait
// and the call's deadline, a wedged pod with its last known figures), in
// messages of bounded size (sendChunks).
func (r *Runtime) StreamContainerStats(req *runtimeapi.StreamContainerStatsRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamContainerStatsResponse]) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	ctx := stream.Context()
	items := r.listContainerStats(ctx, req.GetFilter())
	return sendChunks(ctx, "container stats", items, func(chunk []*runtimeapi.ContainerStats) error {
		return stream.Send(&runtimeapi.StreamContainerStatsResponse{ContainerStats: chunk})
	})
}
