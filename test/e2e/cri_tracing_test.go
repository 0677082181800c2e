package e2e

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// otlpReceiver is an OpenTelemetry collector's trace service in the test:
// it keeps every span exported to it, with its service's name.
type otlpReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	service string
	span    *tracepb.Span
}

func (r *otlpReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, receivedSpan{service, sp})
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// find is the first span named name of kind, "" when none came yet.
func (r *otlpReceiver) find(name string, kind tracepb.Span_SpanKind) (receivedSpan, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		if s.span.GetName() == name && s.span.GetKind() == kind {
			return s, true
		}
	}
	return receivedSpan{}, false
}

// startOTLPReceiver serves an OTLP trace receiver on loopback.
func startOTLPReceiver(t *testing.T) (*otlpReceiver, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{}
	s := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(s, r)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return r, lis.Addr().String()
}

// TestCRITracing: aurae-cri and auraed (apart) export their spans to an
// OTLP receiver; one RunPodSandbox is one trace whose spans cover the CRI
// call in aurae-cri and the Aurae calls it makes in auraed, the trace
// context carried over the socket between them.
func TestCRITracing(t *testing.T) {
	recv, addr := startOTLPReceiver(t)
	a := startAuraed(t, "--otlp-endpoint", addr)
	c := startCRI(t, "--aurae-address", "unix://"+a.Socket, "--otlp-endpoint", addr)
	ctx := t.Context()
	pod := c.podConfig(t, "traced")
	id, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	var run, alloc, allocClient receivedSpan
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok1, ok2, ok3 bool
		run, ok1 = recv.find("runtime.v1.RuntimeService/RunPodSandbox", tracepb.Span_SPAN_KIND_SERVER)
		alloc, ok2 = recv.find("aurae.runtime.pod.v0.PodService/Allocate", tracepb.Span_SPAN_KIND_SERVER)
		allocClient, ok3 = recv.find("aurae.runtime.pod.v0.PodService/Allocate", tracepb.Span_SPAN_KIND_CLIENT)
		if ok1 && ok2 && ok3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spans received: RunPodSandbox %v, Allocate server %v, Allocate client %v", ok1, ok2, ok3)
		}
		time.Sleep(200 * time.Millisecond)
	}
	trace := hex.EncodeToString(run.span.GetTraceId())
	if run.service != "aurae-cri" || allocClient.service != "aurae-cri" || alloc.service != "auraed" {
		t.Errorf("services: RunPodSandbox %q, Allocate client %q, Allocate server %q; want aurae-cri, aurae-cri, auraed", run.service, allocClient.service, alloc.service)
	}
	for _, s := range []receivedSpan{alloc, allocClient} {
		if got := hex.EncodeToString(s.span.GetTraceId()); got != trace {
			t.Errorf("%s %s span in trace %s, want RunPodSandbox's %s", s.service, s.span.GetName(), got, trace)
		}
	}
	if hex.EncodeToString(alloc.span.GetParentSpanId()) != hex.EncodeToString(allocClient.span.GetSpanId()) {
		t.Errorf("auraed's Allocate span's parent is %x, want aurae-cri's client span %x", alloc.span.GetParentSpanId(), allocClient.span.GetSpanId())
	}
	if err := c.Runtime.StopPodSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.RemovePodSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Runtime.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{Id: id}); err != nil || len(st) != 0 {
		t.Fatalf("pods after removal: %v %v", st, err)
	}
}
