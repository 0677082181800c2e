package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

const (
	// streamChunk is the most a single stdout/stderr message carries.
	streamChunk = 32 << 10
	// outputDrain bounds how long output is still read after the command
	// exited: a background process of the command may hold the pipes open.
	outputDrain = 2 * time.Second
)

// Exec implements PodService.Exec.
func (s *Service) Exec(stream grpc.BidiStreamingServer[podsv0.ExecRequest, podsv0.ExecResponse]) error {
	return errmap.ToGRPC(s.exec(stream))
}

// exec runs a command in a running container with `runc exec`, its stdio
// streamed: pipes without a tty (runc stays the command's parent, so its
// exit status is the command's), see execTTY with one.
func (s *Service) exec(stream grpc.BidiStreamingServer[podsv0.ExecRequest, podsv0.ExecResponse]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("exec: first message: %w", err)
	}
	start := first.GetStart()
	if start == nil {
		return fmt.Errorf("exec: the first message must be a start: %w", errdefs.ErrInvalidArgument)
	}
	id := start.GetContainerId()
	if err := validID("container", id); err != nil {
		return err
	}
	if len(start.GetArgv()) == 0 {
		return fmt.Errorf("exec in %q: argv is empty: %w", id, errdefs.ErrInvalidArgument)
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	if r := c.record(); r.State != stateRunning || isDone(c.done) {
		return fmt.Errorf("exec in %q: container is not running: %w", id, errdefs.ErrFailedPrecondition)
	}

	pidFile := filepath.Join(s.bundleDir(id), fmt.Sprintf("exec-%d.pid", execSeq.Add(1)))
	defer func() { _ = os.Remove(pidFile) }()
	if start.GetTty() {
		return s.execTTY(stream, c, start, pidFile)
	}
	args := append([]string{"--root", s.runcRoot(), "exec", "--pid-file", pidFile, id}, start.GetArgv()...)
	cmd := exec.Command(s.runtime, args...)
	cmd.WaitDelay = 5 * time.Second

	out := &streamSender[*podsv0.ExecResponse]{send: func(m *podsv0.ExecResponse) error { return stream.Send(m) }}
	var (
		stdin   io.WriteCloser // nil when the client sends none
		closeIn func() error
	)
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			_ = f.Close()
		}
	}()
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer outR.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return err
	}
	defer errR.Close()
	childEnds = append(childEnds, outW, errW)
	cmd.Stdout, cmd.Stderr = outW, errW
	readers := []*os.File{outR, errR}
	if start.GetStdin() {
		inR, inW, err := os.Pipe()
		if err != nil {
			return err
		}
		defer inW.Close()
		childEnds = append(childEnds, inR)
		cmd.Stdin = inR
		stdin = inW
		closeIn = inW.Close
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec in %q: %w", id, err)
	}
	for _, f := range childEnds {
		_ = f.Close()
	}
	childEnds = nil
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.log.Info("exec started", "pod", c.podID, "container", id, "tty", start.GetTty(), "stdin", start.GetStdin())

	// Output: one reader per stream, each sending its chunks.
	var outWG sync.WaitGroup
	for i, r := range readers {
		outWG.Add(1)
		go func() {
			defer outWG.Done()
			copyOut(r, func(b []byte) error {
				if i == 0 {
					return out.Send(&podsv0.ExecResponse{Response: &podsv0.ExecResponse_Stdout{Stdout: b}})
				}
				return out.Send(&podsv0.ExecResponse{Response: &podsv0.ExecResponse_Stderr{Stderr: b}})
			})
		}()
	}
	// Input: stdin, resizes and the close of stdin, until the client stops
	// sending. Nothing here ends the command: only its exit or the call's end.
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			switch {
			case m.GetCloseStdin() && closeIn != nil:
				_ = closeIn()
				closeIn = nil
			case len(m.GetStdin()) > 0 && stdin != nil && closeIn != nil:
				if _, err := stdin.Write(m.GetStdin()); err != nil {
					closeIn = nil
				}
			}
		}
	}()

	code, err := awaitExec(ctx, cmd, pidFile, exited, &outWG, readers)
	if err != nil {
		return fmt.Errorf("exec in %q: %w", id, err)
	}
	s.log.Info("exec exited", "pod", c.podID, "container", id, "exit_code", code)
	return out.Send(&podsv0.ExecResponse{Response: &podsv0.ExecResponse_Exit{Exit: &podsv0.ExecExit{ExitCode: code}}})
}

// awaitExec waits for an exec'd command (killing it when ctx ends), then
// for its output: complete once every writer of it closed, but a background
// process may keep it open, so only so long. It returns the exit code.
func awaitExec(ctx context.Context, cmd *exec.Cmd, pidFile string, exited chan error, outWG *sync.WaitGroup, readers []*os.File) (int32, error) {
	var werr error
	select {
	case werr = <-exited:
	case <-ctx.Done():
		killExec(cmd, pidFile, exited)
		return 0, ctx.Err()
	}
	drained := make(chan struct{})
	go func() { outWG.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(outputDrain):
		for _, r := range readers {
			_ = r.SetReadDeadline(time.Now())
		}
		<-drained
	}
	return exitCode(werr)
}

// writeExecProcess writes the OCI process of a tty exec: the container's
// own (env, cwd, user, capabilities), as runc exec takes it, with argv, a
// terminal and its initial size.
func (s *Service) writeExecProcess(id, path string, start *podsv0.ExecStart) error {
	b, err := os.ReadFile(filepath.Join(s.bundleDir(id), "config.json"))
	if err != nil {
		return fmt.Errorf("container spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("container spec: %w", err)
	}
	if spec.Process == nil {
		return fmt.Errorf("container spec has no process: %w", errdefs.ErrFailedPrecondition)
	}
	p := *spec.Process
	p.Args = start.GetArgv()
	p.Terminal = true
	p.ConsoleSize = nil
	if sz := start.GetSize(); sz.GetWidth() > 0 && sz.GetHeight() > 0 {
		p.ConsoleSize = &specs.Box{Width: uint(sz.GetWidth()), Height: uint(sz.GetHeight())}
	}
	out, err := json.Marshal(&p)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o600)
}

// exitCode is a command's exit status as a shell reports it (128+signal).
func exitCode(werr error) (int32, error) {
	var ee *exec.ExitError
	switch {
	case werr == nil:
		return 0, nil
	case errors.As(werr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int32(ws.Signal()), nil
		}
		return int32(ee.ExitCode()), nil
	default:
		return 0, werr
	}
}

// copyOut reads r until EOF (or EIO: a pty whose other end closed) and
// hands each chunk to send; it stops early when send fails.
func copyOut(r io.Reader, send func([]byte) error) {
	buf := make([]byte, streamChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if send(append([]byte(nil), buf[:n]...)) != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// streamSender serializes the sends of a stream (gRPC allows one sender at
// a time); after the first failure it fails at once.
type streamSender[T any] struct {
	mu   sync.Mutex
	send func(T) error
	err  error
}

func (s *streamSender[T]) Send(m T) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = s.send(m)
	}
	return s.err
}

// setWinsize sets a terminal's size; zero sizes are ignored.
func setWinsize(f *os.File, sz *podsv0.TerminalSize) {
	if sz.GetWidth() == 0 || sz.GetHeight() == 0 {
		return
	}
	ws := &unix.Winsize{Row: uint16(min(sz.GetHeight(), 0xffff)), Col: uint16(min(sz.GetWidth(), 0xffff))}
	_ = withFd(f, func(fd int) error { return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, ws) })
}

// withFd runs fn on f's descriptor without taking it out of the poller.
func withFd(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
