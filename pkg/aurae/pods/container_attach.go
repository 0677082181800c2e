package pods

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// conmon's attach socket (SOCK_SEQPACKET, in the bundle) prefixes each
// packet it sends with the stream it comes from; what a client writes goes
// to the container's stdin (when conmon was started with -i or -t).
const (
	attachPipeStdout = 2
	attachPipeStderr = 3
	// conmon sends at most 8 KiB of output per packet, plus the prefix.
	attachPacket = 8192 + 1
	// conmon's ctl fifo message type of a terminal resize ("1 <rows> <cols>").
	ctlResize = 1
)

// Attach implements PodService.Attach.
func (s *Service) Attach(stream grpc.BidiStreamingServer[podsv0.AttachRequest, podsv0.AttachResponse]) error {
	return errmap.ToGRPC(s.attach(stream))
}

// attach connects to the container's monitor, as CRI-O does: output from
// the attach socket (only the streams asked for), stdin to it, resizes
// through the ctl fifo. It returns when the container exits (conmon closes
// the socket) or the call ends.
func (s *Service) attach(stream grpc.BidiStreamingServer[podsv0.AttachRequest, podsv0.AttachResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("attach: first message: %w", err)
	}
	start := first.GetStart()
	if start == nil {
		return fmt.Errorf("attach: the first message must be a start: %w", errdefs.ErrInvalidArgument)
	}
	id := start.GetContainerId()
	if err := validID("container", id); err != nil {
		return err
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	if r := c.record(); r.State != stateRunning || isDone(c.done) {
		return fmt.Errorf("attach to %q: container is not running: %w", id, errdefs.ErrFailedPrecondition)
	}
	conn, err := dialAttach(s.bundleDir(id))
	if err != nil {
		return fmt.Errorf("attach to %q: %w", id, err)
	}
	defer func() { _ = conn.Close() }()
	s.log.Info("attached", "pod", c.podID, "container", id, "stdin", start.GetStdin())

	out := &streamSender[*podsv0.AttachResponse]{send: func(m *podsv0.AttachResponse) error { return stream.Send(m) }}
	readDone := make(chan error, 1)
	go func() {
		buf := make([]byte, attachPacket)
		for {
			n, err := conn.Read(buf)
			if n > 1 {
				var m *podsv0.AttachResponse
				data := append([]byte(nil), buf[1:n]...)
				switch {
				case buf[0] == attachPipeStdout && start.GetStdout():
					m = &podsv0.AttachResponse{Response: &podsv0.AttachResponse_Stdout{Stdout: data}}
				case buf[0] == attachPipeStderr && start.GetStderr():
					m = &podsv0.AttachResponse{Response: &podsv0.AttachResponse_Stderr{Stderr: data}}
				}
				if m != nil {
					if err := out.Send(m); err != nil {
						readDone <- err
						return
					}
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
					err = nil
				}
				readDone <- err
				return
			}
			if n == 0 {
				// A zero-length packet: conmon closed its end.
				readDone <- nil
				return
			}
		}
	}()
	go func() {
		stdinOpen := start.GetStdin()
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			switch {
			case m.GetResize() != nil:
				_ = s.resizeMonitorTerminal(id, m.GetResize())
			case m.GetCloseStdin() && stdinOpen:
				stdinOpen = false
				_ = conn.CloseWrite()
			case len(m.GetStdin()) > 0 && stdinOpen:
				if _, err := conn.Write(m.GetStdin()); err != nil {
					stdinOpen = false
				}
			}
		}
	}()
	select {
	case err := <-readDone:
		if err != nil {
			return fmt.Errorf("attach to %q: %w", id, err)
		}
		return nil
	case <-ctx.Done():
		return nil
	}
}

// dialAttach connects to conmon's attach socket in the bundle, through
// /proc/self/fd so that a long state dir does not overflow sun_path.
func dialAttach(bundle string) (*net.UnixConn, error) {
	dir, err := os.OpenFile(bundle, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	addr := &net.UnixAddr{Name: filepath.Join(fmt.Sprintf("/proc/self/fd/%d", dir.Fd()), "attach"), Net: "unixpacket"}
	conn, err := net.DialUnix("unixpacket", nil, addr)
	if err != nil {
		return nil, fmt.Errorf("monitor attach socket: %w", err)
	}
	return conn, nil
}

// resizeMonitorTerminal asks conmon, through the ctl fifo, to resize the
// container's terminal, as CRI-O does.
func (s *Service) resizeMonitorTerminal(id string, sz *podsv0.TerminalSize) error {
	if sz.GetWidth() == 0 || sz.GetHeight() == 0 {
		return nil
	}
	// O_NONBLOCK: fails at once (ENXIO) when the monitor is gone.
	f, err := os.OpenFile(filepath.Join(s.bundleDir(id), "ctl"), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%d %d %d\n", ctlResize, sz.GetHeight(), sz.GetWidth())
	return err
}
