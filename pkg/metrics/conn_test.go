package metrics

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// serveHealth serves the gRPC health service on addr until the test ends
// (or its Stop); it returns the server and the address it listens on.
func serveHealth(t *testing.T, addr string) (*grpc.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { srv.Stop(); <-done })
	return srv, lis.Addr().String()
}

// TestWatchReconnects: a connection that was ready, lost its server and
// is ready again on a new one counts one reconnect; the first connect
// counts none.
func TestWatchReconnects(t *testing.T) {
	first, lisAddr := serveHealth(t, "127.0.0.1:0")
	conn, err := grpc.NewClient("passthrough:///"+lisAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	// check calls until a call succeeds: one made as the old server goes
	// away fails Unavailable.
	check := func() {
		t.Helper()
		for {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			cancel()
			if err == nil {
				return
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check()
	waitReady(t, conn)
	var n atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		WatchReconnects(ctx, conn, func() { n.Add(1) })
	}()
	t.Cleanup(func() { cancel(); <-done })

	first.Stop()
	serveHealth(t, lisAddr)
	check()
	for n.Load() == 0 { // the watcher sees the new Ready; no deadline of our own
		time.Sleep(10 * time.Millisecond)
	}
	if got := n.Load(); got != 1 {
		t.Errorf("%d reconnects counted, want 1", got)
	}
}

// waitReady waits (a minute at most) for conn to be READY: a connection
// that served a call can still flap under load before it settles.
func waitReady(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		conn.Connect()
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("state after a call: %v, never READY", s)
		}
	}
}
