package cri

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

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// portForwardDialTimeout bounds the connect to the pod's port.
const portForwardDialTimeout = 10 * time.Second

// PortForward implements RuntimeService.PortForward: it checks that the pod
// is ready and answers the stream server's URL. The forwarding itself needs
// no auraed: aurae-cri connects from inside the pod's network namespace.
func (r *Runtime) PortForward(ctx context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if req.GetPodSandboxId() == "" {
		return nil, fmt.Errorf("pod sandbox id is empty: %w", errInvalid)
	}
	for _, p := range req.GetPort() {
		if p <= 0 || p > 65535 {
			return nil, fmt.Errorf("port %d is out of range: %w", p, errInvalid)
		}
	}
	sb, err := r.store.Sandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("pod sandbox %s is not ready: %w", sb.ID, errPrecondition)
	}
	srv, err := r.streamServer()
	if err != nil {
		return nil, err
	}
	full := proto.Clone(req).(*runtimeapi.PortForwardRequest)
	full.PodSandboxId = sb.ID
	resp, err := srv.GetPortForward(full)
	if err != nil {
		return nil, fmt.Errorf("port forward to pod %s: %w", sb.ID, err)
	}
	return resp, nil
}

// portForward connects to 127.0.0.1:port in the pod's network namespace
// (the host's for a hostNetwork pod) and copies both ways until the pod's
// side closes or the client goes.
func (r *Runtime) portForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	sb, err := r.store.Sandbox(podID)
	if err != nil {
		return err
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		return fmt.Errorf("pod sandbox %s is not ready: %w", sb.ID, errPrecondition)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	conn, err := dialInNetNS(ctx, sb.Status.NetNSPath, addr)
	if err != nil {
		return fmt.Errorf("port forward to pod %s port %d: %w", sb.ID, port, err)
	}
	defer conn.Close()
	r.log.Info("port forward", "pod", sb.ID, "port", port)

	fromPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		fromPod <- err
	}()
	toPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stream)
		// The client is done sending: pass the half-close on, and keep
		// reading what the pod still answers.
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		toPod <- err
	}()
	for {
		select {
		case err := <-fromPod:
			if err != nil && !errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("port forward to pod %s port %d: %w", sb.ID, port, err)
			}
			return nil
		case err := <-toPod:
			toPod = nil
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
				return fmt.Errorf("port forward to pod %s port %d: %w", sb.ID, port, err)
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// dialInNetNS opens a TCP connection from inside the network namespace at
// nsPath ("" dials from the host's). The socket is made on a thread locked
// into that namespace, which goes back to the host's before it is unlocked;
// a thread that cannot go back is left locked, so that it dies with its
// goroutine instead of running others in the pod's namespace.
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
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("own network namespace: %w", err)}
			return
		}
		defer host.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter pod network namespace: %w", err)}
			return
		}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if berr := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); berr != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			if conn != nil {
				_ = conn.Close()
			}
			done <- result{err: fmt.Errorf("return to the host network namespace: %w", berr)}
			return
		}
		runtime.UnlockOSThread()
		done <- result{conn: conn, err: err}
	}()
	res := <-done
	return res.conn, res.err
}
