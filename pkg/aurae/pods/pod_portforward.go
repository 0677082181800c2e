package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// portForwardDialTimeout bounds the connect to the pod's port.
const portForwardDialTimeout = 10 * time.Second

// PortForward implements PodService.PortForward.
func (s *Service) PortForward(stream grpc.BidiStreamingServer[podsv0.PortForwardRequest, podsv0.PortForwardResponse]) error {
	return errmap.ToGRPC(s.portForward(stream))
}

// portForward connects to 127.0.0.1:port from inside the pod's network
// namespace (auraed's own for a pod on the node's network) and copies
// both ways: the client's data, then its half-close, to the pod; what the
// pod sends back until it closes its end.
func (s *Service) portForward(stream grpc.BidiStreamingServer[podsv0.PortForwardRequest, podsv0.PortForwardResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return fmt.Errorf("port forward: the first message is not a start: %w", errdefs.ErrInvalidArgument)
	}
	if err := validID("pod", start.GetPodId()); err != nil {
		return err
	}
	port := start.GetPort()
	if port <= 0 || port > 65535 {
		return fmt.Errorf("port forward: port %d is out of range: %w", port, errdefs.ErrInvalidArgument)
	}
	p, err := s.lookupPod(start.GetPodId())
	if err != nil {
		return err
	}
	netns := ""
	if p.ownsNet() {
		netns = p.paths.GetNetworkNamespacePath()
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	conn, err := dialInNetNS(ctx, netns, addr)
	if err != nil {
		return fmt.Errorf("port forward to pod %s port %d: %w: %w", start.GetPodId(), port, err, errdefs.ErrUnavailable)
	}
	defer conn.Close()
	s.log.Debug("port forward", "pod", start.GetPodId(), "port", port)

	// The client's side: data, then close_write.
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				// The client is gone (or cancelled): so is the connection.
				_ = conn.Close()
				return
			}
			switch r := m.GetRequest().(type) {
			case *podsv0.PortForwardRequest_Data:
				if _, err := conn.Write(r.Data); err != nil {
					return
				}
			case *podsv0.PortForwardRequest_CloseWrite:
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := stream.Send(&podsv0.PortForwardResponse{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("port forward to pod %s port %d: %w", start.GetPodId(), port, err)
		}
	}
}

// dialInNetNS opens a TCP connection from inside the network namespace at
// nsPath ("" dials from auraed's own).
func dialInNetNS(ctx context.Context, nsPath, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: portForwardDialTimeout}
	var conn net.Conn
	err := linux.InNetNS(nsPath, func() error {
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, err
	}
	return conn, nil
}
