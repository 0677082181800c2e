package server

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
)

// BenchmarkCallOverhead: one cheap unary call over a unix socket through
// New's server (interceptors, trace context) against a bare gRPC server in
// the same run; their difference is what every Aurae and CRI call pays.
func BenchmarkCallOverhead(b *testing.B) {
	logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b.Run("new", func(b *testing.B) { benchDiscover(b, New(logger)) })
	b.Run("bare", func(b *testing.B) { benchDiscover(b, grpc.NewServer()) })
}

func benchDiscover(b *testing.B, srv *grpc.Server) {
	discoveryv0.RegisterDiscoveryServiceServer(srv, &fakeDiscovery{})
	c := start(b, srv)
	ctx := context.Background()
	for i := 0; i < 100; i++ { // warm up
		if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
