package server

import (
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Shutdown stops the servers together: gracefully, then hard once grace is
// over (open streams such as log or signal subscriptions never end by
// themselves). Stopping closes their listeners.
func Shutdown(logger *slog.Logger, grace time.Duration, servers ...*grpc.Server) {
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, s := range servers {
			wg.Go(s.GracefulStop)
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		logger.Warn("graceful stop timed out; closing the remaining calls", "after", grace)
		for _, s := range servers {
			s.Stop()
		}
		<-done
	}
}
