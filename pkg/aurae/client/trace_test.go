package client

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/server"
)

// tracedDiscovery keeps the span context of the last call it served.
type tracedDiscovery struct {
	discovery
	seen chan trace.SpanContext
}

func (d tracedDiscovery) Discover(ctx context.Context, req *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	d.seen <- trace.SpanContextFromContext(ctx)
	return d.discovery.Discover(ctx, req)
}

// TestTraceContextReachesAuraed: a call made with a span in its context
// reaches an auraed server (pkg/aurae/server, as the host's and a VM
// guest's are) inside the same trace, as a child of the client's span,
// even where the server's process exports nothing.
func TestTraceContextReachesAuraed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(slog.New(slog.DiscardHandler))
	d := tracedDiscovery{seen: make(chan trace.SpanContext, 16)}
	discoveryv0.RegisterDiscoveryServiceServer(srv, d)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix://"+path, WithDialOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	for len(d.seen) > 0 { // Dial's own Discover
		<-d.seen
	}
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, span := tp.Tracer("test").Start(ctx, "caller")
	defer span.End()
	if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatal(err)
	}
	got := <-d.seen
	if !got.IsValid() || got.TraceID() != span.SpanContext().TraceID() {
		t.Fatalf("the server's span context %v, want one in the caller's trace %s", got, span.SpanContext().TraceID())
	}
	if !got.IsRemote() && got.SpanID() == span.SpanContext().SpanID() {
		t.Fatalf("the server's span is the caller's own: %v", got)
	}
}
