package vms

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

type answeringGuest struct {
	discoveryv0.UnimplementedDiscoveryServiceServer
}

func (answeringGuest) Discover(context.Context, *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	return &discoveryv0.DiscoverResponse{Healthy: true}, nil
}

// staleFirst is a listener whose first stale connections get bytes of an
// earlier session (what a restored guest may still write) and are closed,
// as a guest restored from a template may do to the first host connection.
type staleFirst struct {
	net.Listener
	stale    int32
	accepted atomic.Int32
}

func (l *staleFirst) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.accepted.Add(1) > l.stale {
			return c, nil
		}
		// A DATA frame of a stream the new client never opened.
		_, _ = c.Write([]byte{0, 0, 4, 0, 0, 0, 0, 0, 7, 'o', 'l', 'd', '!'})
		_ = c.Close()
	}
}

func TestDialRestoredGuestOutlastsTheTemplatesStaleSession(t *testing.T) {
	dir := t.TempDir()
	lis, err := net.Listen("unix", hypervisor.AuraeSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	sl := &staleFirst{Listener: lis, stale: 2}
	srv := grpc.NewServer()
	discoveryv0.RegisterDiscoveryServiceServer(srv, answeringGuest{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(sl)
	}()
	t.Cleanup(func() { srv.Stop(); <-done })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := dialRestoredGuest(ctx, dir)
	if err != nil {
		t.Fatalf("dial a guest whose first sessions are stale: %v", err)
	}
	_ = c.Close()
	if n := sl.accepted.Load(); n < 3 {
		t.Fatalf("connected after %d connections, want the stale ones dropped first", n)
	}
}

func TestDialRestoredGuestGivesUpWithTheContext(t *testing.T) {
	dir := t.TempDir()
	lis, err := net.Listen("unix", hypervisor.AuraeSocket(dir))
	if err != nil {
		t.Fatal(err)
	}
	sl := &staleFirst{Listener: lis, stale: 1 << 30}
	go func() { _, _ = sl.Accept() }()
	t.Cleanup(func() { _ = lis.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = dialRestoredGuest(ctx, dir)
	if err == nil || !strings.Contains(err.Error(), "attempts") {
		t.Fatalf("err = %v, want the attempts named once the context ended", err)
	}
}
