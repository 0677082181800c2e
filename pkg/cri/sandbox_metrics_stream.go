package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StreamPodSandboxMetrics implements RuntimeService.StreamPodSandboxMetrics:
// what ListPodSandboxMetrics answers, in messages of bounded size
// (sendChunks).
func (r *Runtime) StreamPodSandboxMetrics(_ *runtimeapi.StreamPodSandboxMetricsRequest, stream grpc.ServerStreamingServer[runtimeapi.StreamPodSandboxMetricsResponse]) error {
	if err := r.checkReady(); err != nil {
		return err
	}
	ctx := stream.Context()
	items := r.listPodSandboxMetrics(ctx)
	return sendChunks(ctx, "pod sandbox metrics", items, func(chunk []*runtimeapi.PodSandboxMetrics) error {
		return stream.Send(&runtimeapi.StreamPodSandboxMetricsResponse{PodSandboxMetrics: chunk})
	})
}
