package server

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
)

// slowDiscovery is a call that outlives the grace: it waits for its
// context, then undoes its work, which takes a while.
type slowDiscovery struct {
	discoveryv0.UnimplementedDiscoveryServiceServer
	started chan struct{}
	undone  atomic.Bool
}

func (s *slowDiscovery) Discover(ctx context.Context, _ *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	close(s.started)
	<-ctx.Done()
	time.Sleep(300 * time.Millisecond) // the undo, under a fresh context
	s.undone.Store(true)
	return nil, ctx.Err()
}

// TestShutdownWaitsForCancelledHandlers: a call still running when the
// grace is over is cancelled, and Shutdown returns only once its handler
// has undone its work, so that what closes afterwards is not used under it.
func TestShutdownWaitsForCancelledHandlers(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(logger)
	slow := &slowDiscovery{started: make(chan struct{})}
	discoveryv0.RegisterDiscoveryServiceServer(srv, slow)
	c := start(t, srv)
	go func() { _, _ = c.Discovery.Discover(context.Background(), &discoveryv0.DiscoverRequest{}) }()
	<-slow.started
	start := time.Now()
	Shutdown(logger, 100*time.Millisecond, srv)
	if !slow.undone.Load() {
		t.Fatal("Shutdown returned before the cancelled handler finished")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Shutdown took %v", took)
	}
}
