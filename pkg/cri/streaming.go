package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"k8s.io/cri-streaming/pkg/streaming"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// StreamServer serves the URLs that Exec, Attach and PortForward answer:
// the kubelet's streaming server (SPDY and websocket), as containerd and
// CRI-O run it, over the runtime's controllers.
type StreamServer struct {
	srv  streaming.Server
	http *http.Server
	lis  net.Listener
	done chan struct{}
}

// StartStreaming listens on addr ("127.0.0.1:0" picks a port) and serves
// the streaming endpoints until Close; from then on Exec, Attach and
// PortForward answer URLs on it.
func (r *Runtime) StartStreaming(addr string) (*StreamServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stream server: %w", err)
	}
	cfg := streaming.DefaultConfig
	// The address actually bound, so that URLs carry the real port.
	cfg.Addr = lis.Addr().String()
	srv, err := streaming.NewServer(cfg, streamRuntime{r})
	if err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("stream server: %w", err)
	}
	s := &StreamServer{
		srv:  srv,
		http: &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second},
		lis:  lis,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("stream server stopped", "error", err)
		}
	}()
	r.streams.Store(s)
	r.log.Info("stream server serving", "address", cfg.Addr)
	return s, nil
}

// Addr is the address the server listens on.
func (s *StreamServer) Addr() string { return s.lis.Addr().String() }

// Close stops serving and closes the listener and idle connections;
// sessions in progress (hijacked connections) end with their process.
func (s *StreamServer) Close() error {
	err := s.http.Close()
	<-s.done
	return err
}

// streamServer is the running stream server, or Unavailable.
func (r *Runtime) streamServer() (streaming.Server, error) {
	s := r.streams.Load()
	if s == nil {
		return nil, fmt.Errorf("the stream server is not running: %w", errdefs.ErrUnavailable)
	}
	return s.srv, nil
}

// streamRuntime is what the stream server calls once a client connected.
type streamRuntime struct{ r *Runtime }

var _ streaming.Runtime = streamRuntime{}

func (s streamRuntime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	ctrl, c, err := s.r.runningContainer(containerID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sio := streamIO(ctx, in, out, errw, tty, resize)
	log := s.r.log.With("pod", c.SandboxID, "container", c.ID)
	log.Info("exec session", "cmd", cmd, "tty", tty)
	code, err := ctrl.Exec(ctx, c.ID, cmd, sio)
	if err != nil {
		return fmt.Errorf("exec in container %s: %w", c.ID, err)
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with %d", cmd, code), Code: int(code)}
	}
	return nil
}

func (s streamRuntime) Attach(ctx context.Context, containerID string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	ctrl, c, err := s.r.runningContainer(containerID)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Only a container created with stdin has one to attach to (CRI-O
	// drops the client's stdin the same way).
	if !c.Config.GetStdin() {
		in = nil
	}
	s.r.log.Info("attach session", "pod", c.SandboxID, "container", c.ID, "tty", tty, "stdin", in != nil)
	if err := ctrl.Attach(ctx, c.ID, streamIO(ctx, in, out, errw, tty, resize)); err != nil {
		return fmt.Errorf("attach to container %s: %w", c.ID, err)
	}
	return nil
}

func (s streamRuntime) PortForward(ctx context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	return s.r.portForward(ctx, podSandboxID, port, stream)
}

// streamIO turns the stream server's streams into the controller's; nil
// streams (not asked for) stay nil.
func streamIO(ctx context.Context, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) controller.StreamIO {
	sio := controller.StreamIO{Stdin: in, Tty: tty}
	if out != nil {
		sio.Stdout = out
	}
	if errw != nil {
		sio.Stderr = errw
	}
	if resize != nil {
		ch := make(chan controller.TerminalSize, 1)
		go func() {
			defer close(ch)
			for {
				select {
				case <-ctx.Done():
					return
				case sz, ok := <-resize:
					if !ok {
						return
					}
					select {
					case ch <- controller.TerminalSize{Width: sz.Width, Height: sz.Height}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
		sio.Resize = ch
	}
	return sio
}
