package server

import (
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// HandlerDrain bounds how long Shutdown waits, once the calls in flight
// were cancelled, for their handlers to return: longer than the minute a
// handler's undo of half-done work runs under (a fresh context), so that
// what a cancelled call made is undone before the stores and clients it
// uses close.
const HandlerDrain = 75 * time.Second

// Shutdown stops the servers together: they stop accepting at once, the
// calls in flight have grace to finish, then they are cancelled (open
// streams such as log or signal subscriptions never end by themselves) and
// Shutdown waits up to HandlerDrain more for their handlers to return
// (New's servers wait for their handlers). Stopping closes their listeners.
func Shutdown(logger *slog.Logger, grace time.Duration, servers ...*grpc.Server) {
	graceful := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, s := range servers {
			wg.Go(s.GracefulStop)
		}
		wg.Wait()
		close(graceful)
	}()
	select {
	case <-graceful:
		return
	case <-time.After(grace):
	}
	logger.Warn("graceful stop timed out; cancelling the remaining calls", "after", grace)
	stopped := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, s := range servers {
			wg.Go(s.Stop)
		}
		wg.Wait()
		<-graceful
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(HandlerDrain):
		logger.Error("handlers still running after their calls were cancelled; closing anyway", "after", HandlerDrain)
	}
}
