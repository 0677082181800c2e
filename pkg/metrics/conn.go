package metrics

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// WatchReconnects calls reconnected each time conn becomes ready again
// after it had been ready once, until ctx ends. The connection is not
// made to connect: an idle one stays idle.
func WatchReconnects(ctx context.Context, conn *grpc.ClientConn, reconnected func()) {
	wasReady := false
	state := conn.GetState()
	for {
		if state == connectivity.Ready {
			if wasReady {
				reconnected()
			}
			wasReady = true
		}
		if !conn.WaitForStateChange(ctx, state) {
			return
		}
		state = conn.GetState()
	}
}
