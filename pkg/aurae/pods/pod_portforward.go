package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
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
// nsPath ("" dials from auraed's own). The socket is made on a thread
// locked into that namespace, which goes back to auraed's before it is
// unlocked; a thread that cannot go back is left locked, so that it dies
// with its goroutine instead of running others in the pod's namespace.
func dialInNetNS(ctx context.Context, nsPath, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: portForwardDialTimeout}
	if nsPath == "" {
		return d.DialContext(ctx, "tcp", addr)
	}
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("pod network namespace: %w", err)
	}
	defer target.Close()
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("own network namespace: %w", err)}
			return
		}
		defer own.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter pod network namespace: %w", err)}
			return
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if berr := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); berr != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			if conn != nil {
				_ = conn.Close()
			}
			done <- result{err: fmt.Errorf("return to auraed's network namespace: %w", berr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{conn: conn, err: err}
	}()
	res := <-done
	return res.conn, res.err
}
