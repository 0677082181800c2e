package native

import (
	"context"
	"errors"
	"fmt"
	"io"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// PortForward forwards stream to port on 127.0.0.1 in the pod's network
// namespace, through PodService.PortForward: auraed connects from inside
// it. What the client sends goes to the pod, then its half-close; what the
// pod sends comes back until it closes its end.
func (c *Controller) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.pods.PortForward(ctx)
	if err != nil {
		return err
	}
	send := lockedSend(st.Send)
	if err := send(&podsv0.PortForwardRequest{Request: &podsv0.PortForwardRequest_Start{Start: &podsv0.PortForwardStart{PodId: podID, Port: port}}}); err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stream.Read(buf)
			if n > 0 {
				if send(&podsv0.PortForwardRequest{Request: &podsv0.PortForwardRequest_Data{Data: append([]byte(nil), buf[:n]...)}}) != nil {
					return
				}
			}
			if err != nil {
				if ctx.Err() == nil {
					_ = send(&podsv0.PortForwardRequest{Request: &podsv0.PortForwardRequest_CloseWrite{CloseWrite: true}})
				}
				return
			}
		}
	}()
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("port forward to pod %s port %d: %w", podID, port, err)
		}
		if _, err := stream.Write(m.GetData()); err != nil {
			return nil // the client went away
		}
	}
}
