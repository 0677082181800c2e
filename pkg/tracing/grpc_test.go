package tracing

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// traceSeen records the span context each call's handler got.
type traceSeen struct {
	healthpb.UnimplementedHealthServer
	seen chan trace.SpanContext
}

func (s *traceSeen) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.seen <- trace.SpanContextFromContext(ctx)
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *traceSeen) Watch(_ *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	s.seen <- trace.SpanContextFromContext(stream.Context())
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// TestTraceContextWithoutExport: a process that exports nothing still
// carries its caller's trace on, in unary and streaming calls, and a call
// outside any trace carries none.
func TestTraceContextWithoutExport(t *testing.T) {
	if Exporting() {
		t.Fatal("exporting before Setup")
	}
	svc := &traceSeen{seen: make(chan trace.SpanContext, 1)}
	srv := grpc.NewServer(ServerOptions()...)
	healthpb.RegisterHealthServer(srv, svc)
	lis, err := net.Listen("unix", t.TempDir()+"/s.sock")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+lis.Addr().String(),
		append(DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := healthpb.NewHealthClient(conn)

	caller := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), caller)

	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-svc.seen; got.TraceID() != caller.TraceID() || got.SpanID() != caller.SpanID() || !got.IsSampled() {
		t.Errorf("unary handler saw %v, want the caller's %v", got, caller)
	}

	stream, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := <-svc.seen; got.TraceID() != caller.TraceID() || got.SpanID() != caller.SpanID() {
		t.Errorf("stream handler saw %v, want the caller's %v", got, caller)
	}

	if _, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-svc.seen; got.IsValid() {
		t.Errorf("a call outside any trace got %v", got)
	}
}
