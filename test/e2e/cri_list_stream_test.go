package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// rawRuntime is a RuntimeService client over c's socket with gRPC's
// default limits (it reads 4 MiB a message), without the cri-client's
// fallback to the unary calls: a Stream* call that is not served fails.
func rawRuntime(t *testing.T, c *CRI) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// recvAll reads a stream to its EOF: the items of each message, and how
// many messages there were. A message without items fails the test.
func recvAll[M any, I any](t *testing.T, what string, stream grpc.ServerStreamingClient[M], err error, items func(*M) []I) ([]I, int) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var all []I
	n := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return all, n
		}
		if err != nil {
			t.Fatalf("%s: message %d: %v", what, n, err)
		}
		n++
		its := items(m)
		if len(its) == 0 {
			t.Fatalf("%s: message %d holds no item", what, n)
		}
		all = append(all, its...)
	}
}

// TestCRIListStreams: 20 pods with 240 KiB of annotations each (4.8 MiB,
// more than a client with gRPC's default limit reads in one message: the
// unary ListPodSandbox fails for it) are streamed whole by
// StreamPodSandboxes to that client; StreamContainers,
// StreamContainerStats and StreamPodSandboxStats answer what their unary
// calls answer, with their filters, each call under its deadline.
func TestCRIListStreams(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	raw := rawRuntime(t, c)

	const pods = 20
	var ids []string
	var ctrs []string
	for i := range pods {
		pod := c.podConfig(t, fmt.Sprintf("stream-%d", i))
		pod.Labels["half"] = []string{"even", "odd"}[i%2]
		pod.Annotations = map[string]string{"big": strings.Repeat("a", 240<<10)}
		id, err := c.Runtime.RunPodSandbox(ctx, pod, "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if i < 2 {
			cfg := containerConfig(fmt.Sprintf("sleeper-%d", i), image, "sleep", "3600")
			ctrs = append(ctrs, runContainer(t, c, id, pod, cfg))
		}
	}
	// Without streams, this client cannot have the list.
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := raw.ListPodSandbox(lctx, &runtimeapi.ListPodSandboxRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("unary ListPodSandbox of 4.8 MiB to a 4 MiB client: %v, want ResourceExhausted (else the test proves nothing)", err)
	}

	call := func() context.Context {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(cancel)
		return cctx
	}
	s, err := raw.StreamPodSandboxes(call(), &runtimeapi.StreamPodSandboxesRequest{})
	got, msgs := recvAll(t, "StreamPodSandboxes", s, err, (*runtimeapi.StreamPodSandboxesResponse).GetPodSandboxes)
	var gotIDs []string
	for _, p := range got {
		gotIDs = append(gotIDs, p.GetId())
		if len(p.GetAnnotations()["big"]) != 240<<10 {
			t.Fatalf("pod %s streamed with %d bytes of annotation", p.GetId(), len(p.GetAnnotations()["big"]))
		}
	}
	slices.Sort(gotIDs)
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(gotIDs, want) || msgs < 5 {
		t.Fatalf("StreamPodSandboxes: %d pods in %d messages, want %d pods in 5 or more", len(gotIDs), msgs, pods)
	}
	t.Logf("StreamPodSandboxes: %d pods in %d messages", len(got), msgs)

	// The kubelet's client (cri-client with CRIListStreaming) gets them all.
	kctx, kcancel := context.WithTimeout(ctx, 30*time.Second)
	defer kcancel()
	kubelet, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(c.Endpoint).WithConnectionTimeout(time.Minute).WithUseStreaming(true).Build(kctx)
	if err != nil {
		t.Fatal(err)
	}
	if all, err := kubelet.ListPodSandbox(kctx, nil); err != nil || len(all) != pods {
		t.Fatalf("cri-client with streaming: %d pods, %v", len(all), err)
	}
	if all, err := kubelet.ListContainers(kctx, &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": "sleeper-0"}}); err != nil || len(all) != 1 {
		t.Fatalf("cri-client with streaming, containers of sleeper-0: %d, %v", len(all), err)
	}
	// It streamed (it falls back to ListContainers on Unimplemented): the
	// call is logged when it ends, maybe after the client has its answer.
	for streamed := 0; streamed == 0; time.Sleep(100 * time.Millisecond) {
		for _, r := range c.Records() {
			if r["method"] == "/runtime.v1.RuntimeService/StreamContainers" && r["code"] == "OK" {
				streamed++
			}
		}
		if kctx.Err() != nil {
			t.Fatal("the cri-client's ListContainers did not call StreamContainers")
		}
	}

	// Filters, as the unary calls.
	odd := map[string]string{"half": "odd"}
	s, err = raw.StreamPodSandboxes(call(), &runtimeapi.StreamPodSandboxesRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: odd}})
	got, _ = recvAll(t, "StreamPodSandboxes odd", s, err, (*runtimeapi.StreamPodSandboxesResponse).GetPodSandboxes)
	if len(got) != pods/2 {
		t.Fatalf("StreamPodSandboxes half=odd: %d pods, want %d", len(got), pods/2)
	}
	cs, err := raw.StreamContainers(call(), &runtimeapi.StreamContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: ids[1]}})
	ctrList, _ := recvAll(t, "StreamContainers", cs, err, (*runtimeapi.StreamContainersResponse).GetContainers)
	if len(ctrList) != 1 || ctrList[0].GetId() != ctrs[1] {
		t.Fatalf("StreamContainers of pod %s: %v, want %s alone", ids[1], ctrList, ctrs[1])
	}
	cs, err = raw.StreamContainers(call(), &runtimeapi.StreamContainersRequest{})
	ctrList, _ = recvAll(t, "StreamContainers", cs, err, (*runtimeapi.StreamContainersResponse).GetContainers)
	if len(ctrList) != 2 {
		t.Fatalf("StreamContainers: %d containers, want 2", len(ctrList))
	}

	css, err := raw.StreamContainerStats(call(), &runtimeapi.StreamContainerStatsRequest{})
	cstats, _ := recvAll(t, "StreamContainerStats", css, err, (*runtimeapi.StreamContainerStatsResponse).GetContainerStats)
	var statIDs []string
	for _, st := range cstats {
		statIDs = append(statIDs, st.GetAttributes().GetId())
		if st.GetMemory().GetWorkingSetBytes().GetValue() == 0 {
			t.Errorf("container %s streamed without its memory: %v", st.GetAttributes().GetId(), st)
		}
	}
	slices.Sort(statIDs)
	if !slices.Equal(statIDs, slices.Sorted(slices.Values(ctrs))) {
		t.Fatalf("StreamContainerStats: %v, want %v", statIDs, ctrs)
	}
	css, err = raw.StreamContainerStats(call(), &runtimeapi.StreamContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{Id: ctrs[0][:12]}})
	cstats, _ = recvAll(t, "StreamContainerStats by id", css, err, (*runtimeapi.StreamContainerStatsResponse).GetContainerStats)
	if len(cstats) != 1 || cstats[0].GetAttributes().GetId() != ctrs[0] {
		t.Fatalf("StreamContainerStats of %s: %v", ctrs[0], cstats)
	}

	pss, err := raw.StreamPodSandboxStats(call(), &runtimeapi.StreamPodSandboxStatsRequest{})
	pstats, msgs := recvAll(t, "StreamPodSandboxStats", pss, err, (*runtimeapi.StreamPodSandboxStatsResponse).GetPodSandboxStats)
	if len(pstats) != pods || msgs < 5 {
		t.Fatalf("StreamPodSandboxStats: %d pods in %d messages, want %d in 5 or more", len(pstats), msgs, pods)
	}
	pss, err = raw.StreamPodSandboxStats(call(), &runtimeapi.StreamPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{Id: ids[0]}})
	pstats, _ = recvAll(t, "StreamPodSandboxStats by id", pss, err, (*runtimeapi.StreamPodSandboxStatsResponse).GetPodSandboxStats)
	if len(pstats) != 1 || len(pstats[0].GetLinux().GetContainers()) != 1 || pstats[0].GetLinux().GetCpu() == nil {
		t.Fatalf("StreamPodSandboxStats of %s: %v", ids[0], pstats)
	}
	unary, err := c.Runtime.ListPodSandboxStats(call(), &runtimeapi.PodSandboxStatsFilter{LabelSelector: odd})
	if err != nil {
		t.Fatal(err)
	}
	pss, err = raw.StreamPodSandboxStats(call(), &runtimeapi.StreamPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{LabelSelector: odd}})
	pstats, _ = recvAll(t, "StreamPodSandboxStats odd", pss, err, (*runtimeapi.StreamPodSandboxStatsResponse).GetPodSandboxStats)
	if len(pstats) != len(unary) || len(pstats) != pods/2 {
		t.Fatalf("StreamPodSandboxStats half=odd: %d, unary %d, want %d", len(pstats), len(unary), pods/2)
	}
}
