package cri

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// fakeStream is the server side of a Stream* call: it keeps what is sent.
type fakeStream[T any] struct {
	grpc.ServerStream
	ctx  context.Context
	sent []*T
}

func (s *fakeStream[T]) Context() context.Context     { return s.ctx }
func (s *fakeStream[T]) Send(m *T) error              { s.sent = append(s.sent, m); return nil }
func (s *fakeStream[T]) SetHeader(metadata.MD) error  { return nil }
func (s *fakeStream[T]) SendHeader(metadata.MD) error { return nil }
func (s *fakeStream[T]) SetTrailer(metadata.MD)       {}

func newStream[T any](ctx context.Context) *fakeStream[T] { return &fakeStream[T]{ctx: ctx} }

// bigPods runs n pods (pod-0…) labelled app=a for even ones, app=b for odd
// ones, each with annotations of size bytes and one running container
// (ctr-<i>) with annotations of the same size.
func (f *fixture) bigPods(t *testing.T, n, size int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		cfg := podConfig(fmt.Sprintf("pod-%d", i))
		cfg.Labels = map[string]string{"app": []string{"a", "b"}[i%2]}
		cfg.Annotations = map[string]string{"big": strings.Repeat("x", size)}
		pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("ctr-%d", i)
		c := &sandbox.Container{ID: id, SandboxID: pod.GetPodSandboxId(), Name: id + "_big", CreatedAt: time.Now(),
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: id}, Labels: cfg.Labels,
				Annotations: map[string]string{"big": strings.Repeat("y", size)},
			},
			Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
		if err := f.store.AddContainer(c); err != nil {
			t.Fatal(err)
		}
		if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, pod.GetPodSandboxId())
	}
	return ids
}

// checkChunks: every message is under the budget (but for a message of one
// item), holds at least one item, and the items, in order, are want.
func checkChunks[M proto.Message, I proto.Message](t *testing.T, what string, msgs []M, items func(M) []I, id func(I) string, want []string) {
	t.Helper()
	var got []string
	total := 0
	for i, m := range msgs {
		its := items(m)
		size := proto.Size(m)
		total += size
		if len(its) == 0 {
			t.Errorf("%s: message %d is empty", what, i)
		}
		if len(its) > 1 && size > streamChunkBytes {
			t.Errorf("%s: message %d is %d bytes with %d items, over the %d budget", what, i, size, len(its), streamChunkBytes)
		}
		for _, it := range its {
			got = append(got, id(it))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: streamed %d items %v…, want %d %v…", what, len(got), got[:min(3, len(got))], len(want), want[:min(3, len(want))])
	}
	t.Logf("%s: %d items in %d messages, %d bytes", what, len(got), len(msgs), total)
}

func podIDs(ps []*runtimeapi.PodSandbox) (out []string) {
	for _, p := range ps {
		out = append(out, p.GetId())
	}
	return out
}

func containerIDs(cs []*runtimeapi.Container) (out []string) {
	for _, c := range cs {
		out = append(out, c.GetId())
	}
	return out
}

// TestStreamsChunkManyLargePods: 110 pods with 100 KiB of annotations each
// (11 MiB: more than a 4 MiB client reads in one message) and a container
// each are streamed by the four Stream* lists in messages under the
// budget, each item once, the same items as the unary calls.
func TestStreamsChunkManyLargePods(t *testing.T) {
	f := newFixture(t, true)
	f.bigPods(t, 110, 100<<10)
	ctx := t.Context()

	list, err := f.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(list.GetItems()) != 110 {
		t.Fatalf("ListPodSandbox: %d %v", len(list.GetItems()), err)
	}
	if size := proto.Size(list); size < 4<<20 {
		t.Fatalf("the unary answer is %d bytes: too small for the test to mean anything", size)
	}
	pods := newStream[runtimeapi.StreamPodSandboxesResponse](ctx)
	if err := f.rt.StreamPodSandboxes(&runtimeapi.StreamPodSandboxesRequest{}, pods); err != nil {
		t.Fatal(err)
	}
	if len(pods.sent) < 2 {
		t.Fatalf("11 MiB of pods in %d message(s)", len(pods.sent))
	}
	checkChunks(t, "StreamPodSandboxes", pods.sent, (*runtimeapi.StreamPodSandboxesResponse).GetPodSandboxes,
		(*runtimeapi.PodSandbox).GetId, podIDs(list.GetItems()))

	ctrs, err := f.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cs := newStream[runtimeapi.StreamContainersResponse](ctx)
	if err := f.rt.StreamContainers(&runtimeapi.StreamContainersRequest{}, cs); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, "StreamContainers", cs.sent, (*runtimeapi.StreamContainersResponse).GetContainers,
		(*runtimeapi.Container).GetId, containerIDs(ctrs.GetContainers()))

	css := newStream[runtimeapi.StreamContainerStatsResponse](ctx)
	if err := f.rt.StreamContainerStats(&runtimeapi.StreamContainerStatsRequest{}, css); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, "StreamContainerStats", css.sent, (*runtimeapi.StreamContainerStatsResponse).GetContainerStats,
		func(s *runtimeapi.ContainerStats) string { return s.GetAttributes().GetId() }, containerIDs(ctrs.GetContainers()))

	pss := newStream[runtimeapi.StreamPodSandboxStatsResponse](ctx)
	if err := f.rt.StreamPodSandboxStats(&runtimeapi.StreamPodSandboxStatsRequest{}, pss); err != nil {
		t.Fatal(err)
	}
	checkChunks(t, "StreamPodSandboxStats", pss.sent, (*runtimeapi.StreamPodSandboxStatsResponse).GetPodSandboxStats,
		func(s *runtimeapi.PodSandboxStats) string { return s.GetAttributes().GetId() }, podIDs(list.GetItems()))
	for _, m := range pss.sent {
		for _, s := range m.GetPodSandboxStats() {
			if len(s.GetLinux().GetContainers()) != 1 || s.GetLinux().GetCpu() == nil {
				t.Fatalf("pod %s streamed without its container's figures: %v", s.GetAttributes().GetId(), s.GetLinux())
			}
		}
	}
}

// TestStreamsFilter: each Stream* list answers what its unary call
// answers for the same filter.
func TestStreamsFilter(t *testing.T) {
	f := newFixture(t, true)
	pods := f.bigPods(t, 6, 10)
	ctx := t.Context()
	if _, err := f.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pods[2]}); err != nil {
		t.Fatal(err)
	}
	ready := &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}
	for _, pf := range []*runtimeapi.PodSandboxFilter{
		nil, {Id: pods[3][:12]}, {LabelSelector: map[string]string{"app": "a"}}, {State: ready},
		{State: ready, LabelSelector: map[string]string{"app": "a"}}, {Id: "nope"},
	} {
		list, err := f.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: pf})
		if err != nil {
			t.Fatal(err)
		}
		s := newStream[runtimeapi.StreamPodSandboxesResponse](ctx)
		if err := f.rt.StreamPodSandboxes(&runtimeapi.StreamPodSandboxesRequest{Filter: pf}, s); err != nil {
			t.Fatal(err)
		}
		checkChunks(t, fmt.Sprintf("StreamPodSandboxes %v", pf), s.sent, (*runtimeapi.StreamPodSandboxesResponse).GetPodSandboxes,
			(*runtimeapi.PodSandbox).GetId, podIDs(list.GetItems()))
		if pf.GetId() == "nope" && len(s.sent) != 0 {
			t.Errorf("no pod matches, yet %d messages were sent", len(s.sent))
		}
		psf := &runtimeapi.PodSandboxStatsFilter{Id: pf.GetId(), LabelSelector: pf.GetLabelSelector()}
		stats, err := f.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{Filter: psf})
		if err != nil {
			t.Fatal(err)
		}
		ss := newStream[runtimeapi.StreamPodSandboxStatsResponse](ctx)
		if err := f.rt.StreamPodSandboxStats(&runtimeapi.StreamPodSandboxStatsRequest{Filter: psf}, ss); err != nil {
			t.Fatal(err)
		}
		statID := func(s *runtimeapi.PodSandboxStats) string { return s.GetAttributes().GetId() }
		var want []string
		for _, s := range stats.GetStats() {
			want = append(want, statID(s))
		}
		checkChunks(t, fmt.Sprintf("StreamPodSandboxStats %v", psf), ss.sent, (*runtimeapi.StreamPodSandboxStatsResponse).GetPodSandboxStats, statID, want)
	}

	exited := &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}
	for _, cf := range []*runtimeapi.ContainerFilter{
		nil, {Id: "ctr-4"}, {PodSandboxId: pods[1][:12]}, {LabelSelector: map[string]string{"app": "b"}}, {State: exited},
		{PodSandboxId: pods[5], LabelSelector: map[string]string{"app": "a"}},
	} {
		list, err := f.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: cf})
		if err != nil {
			t.Fatal(err)
		}
		s := newStream[runtimeapi.StreamContainersResponse](ctx)
		if err := f.rt.StreamContainers(&runtimeapi.StreamContainersRequest{Filter: cf}, s); err != nil {
			t.Fatal(err)
		}
		checkChunks(t, fmt.Sprintf("StreamContainers %v", cf), s.sent, (*runtimeapi.StreamContainersResponse).GetContainers,
			(*runtimeapi.Container).GetId, containerIDs(list.GetContainers()))
		csf := &runtimeapi.ContainerStatsFilter{Id: cf.GetId(), PodSandboxId: cf.GetPodSandboxId(), LabelSelector: cf.GetLabelSelector()}
		stats, err := f.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: csf})
		if err != nil {
			t.Fatal(err)
		}
		ss := newStream[runtimeapi.StreamContainerStatsResponse](ctx)
		if err := f.rt.StreamContainerStats(&runtimeapi.StreamContainerStatsRequest{Filter: csf}, ss); err != nil {
			t.Fatal(err)
		}
		statID := func(s *runtimeapi.ContainerStats) string { return s.GetAttributes().GetId() }
		var want []string
		for _, s := range stats.GetStats() {
			want = append(want, statID(s))
		}
		checkChunks(t, fmt.Sprintf("StreamContainerStats %v", csf), ss.sent, (*runtimeapi.StreamContainerStatsResponse).GetContainerStats, statID, want)
	}
	// The filters select: the stopped pod's container exited, one pod per id.
	one := newStream[runtimeapi.StreamContainersResponse](ctx)
	if err := f.rt.StreamContainers(&runtimeapi.StreamContainersRequest{Filter: &runtimeapi.ContainerFilter{State: exited}}, one); err != nil {
		t.Fatal(err)
	}
	if len(one.sent) != 1 || len(one.sent[0].GetContainers()) != 1 || one.sent[0].GetContainers()[0].GetId() != "ctr-2" {
		t.Fatalf("exited containers streamed: %v, want ctr-2 alone", one.sent)
	}
}

// TestStreamStatsWithAWedgedPod: with one container's controller wedged,
// StreamContainerStats and StreamPodSandboxStats end, with the wedged
// container's last known figures and every other's fresh ones.
func TestStreamStatsWithAWedgedPod(t *testing.T) {
	f := newFixture(t, true)
	f.bigPods(t, 8, 10)
	ctx := t.Context()
	if _, err := f.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{}); err != nil {
		t.Fatal(err)
	}
	f.ctrl.wedge("ctr-3")
	defer f.ctrl.unwedge("ctr-3")
	cs := newStream[runtimeapi.StreamContainerStatsResponse](ctx)
	if err := f.rt.StreamContainerStats(&runtimeapi.StreamContainerStatsRequest{}, cs); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range cs.sent {
		for _, s := range m.GetContainerStats() {
			n++
			want := uint64(2) // a second call
			if s.GetAttributes().GetId() == "ctr-3" {
				want = 1 // its first call's figures
			}
			if got := s.GetCpu().GetUsageCoreNanoSeconds().GetValue(); got != want {
				t.Errorf("%s streamed cpu %d, want %d", s.GetAttributes().GetId(), got, want)
			}
		}
	}
	if n != 8 {
		t.Fatalf("streamed %d container stats, want 8", n)
	}
	ps := newStream[runtimeapi.StreamPodSandboxStatsResponse](ctx)
	if err := f.rt.StreamPodSandboxStats(&runtimeapi.StreamPodSandboxStatsRequest{}, ps); err != nil {
		t.Fatal(err)
	}
	n = 0
	for _, m := range ps.sent {
		for _, s := range m.GetPodSandboxStats() {
			n++
			c := s.GetLinux().GetContainers()
			if len(c) != 1 || c[0].GetCpu() == nil {
				t.Errorf("pod %s streamed without its container's figures: %v", s.GetAttributes().GetId(), c)
			}
		}
	}
	if n != 8 {
		t.Fatalf("streamed %d pod stats, want 8", n)
	}
}

// TestStreamEndsWithItsCall: a call whose context ended sends nothing and
// answers its code; before recovery the streams answer Unavailable.
func TestStreamEndsWithItsCall(t *testing.T) {
	f := newFixture(t, true)
	f.bigPods(t, 3, 10)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	s := newStream[runtimeapi.StreamPodSandboxesResponse](ctx)
	err := f.rt.StreamPodSandboxes(&runtimeapi.StreamPodSandboxesRequest{}, s)
	if code(err) != codes.Canceled || len(s.sent) != 0 {
		t.Fatalf("canceled stream: %v after %d messages, want Canceled and none", err, len(s.sent))
	}
	rt := f.runtime(t) // not recovered
	c := newStream[runtimeapi.StreamContainersResponse](t.Context())
	if err := rt.StreamContainers(&runtimeapi.StreamContainersRequest{}, c); code(err) != codes.Unavailable {
		t.Fatalf("stream before recovery: %v, want Unavailable", err)
	}
}
