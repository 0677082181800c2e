package native

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
)

// firstSizeWait bounds the wait for a tty client's first terminal size.
const firstSizeWait = 100 * time.Millisecond

// Exec runs argv over PodService.Exec.
func (c *Controller) Exec(ctx context.Context, id string, argv []string, sio controller.StreamIO) (int32, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.pods.Exec(ctx)
	if err != nil {
		return 0, err
	}
	send := lockedSend(st.Send)
	start := &podsv0.ExecStart{ContainerId: id, Argv: argv, Tty: sio.Tty, Stdin: sio.Stdin != nil}
	// Clients send the terminal's size first thing: it goes with the start,
	// so that the command starts on a terminal of the right size.
	if sio.Tty && sio.Resize != nil {
		timer := time.NewTimer(firstSizeWait)
		select {
		case sz, ok := <-sio.Resize:
			if ok {
				start.Size = &podsv0.TerminalSize{Width: uint32(sz.Width), Height: uint32(sz.Height)}
			}
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
	}
	if err := send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: start}}); err != nil {
		return 0, err
	}
	forwardInput(ctx, sio,
		func(b []byte) error { return send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Stdin{Stdin: b}}) },
		func() error {
			return send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_CloseStdin{CloseStdin: true}})
		},
		func(sz *podsv0.TerminalSize) error {
			return send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Resize{Resize: sz}})
		})
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("exec in %q: the stream ended without an exit code", id)
			}
			return 0, err
		}
		switch r := m.GetResponse().(type) {
		case *podsv0.ExecResponse_Stdout:
			err = writeTo(sio.Stdout, r.Stdout)
		case *podsv0.ExecResponse_Stderr:
			err = writeTo(sio.Stderr, r.Stderr)
		case *podsv0.ExecResponse_Exit:
			return r.Exit.GetExitCode(), nil
		}
		if err != nil {
			return 0, fmt.Errorf("exec in %q: client gone: %w", id, err)
		}
	}
}

// Attach attaches over PodService.Attach.
func (c *Controller) Attach(ctx context.Context, id string, sio controller.StreamIO) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.pods.Attach(ctx)
	if err != nil {
		return err
	}
	send := lockedSend(st.Send)
	start := &podsv0.AttachStart{ContainerId: id, Stdin: sio.Stdin != nil, Stdout: sio.Stdout != nil, Stderr: sio.Stderr != nil, Tty: sio.Tty}
	if err := send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Start{Start: start}}); err != nil {
		return err
	}
	forwardInput(ctx, sio,
		func(b []byte) error {
			return send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Stdin{Stdin: b}})
		},
		func() error {
			return send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_CloseStdin{CloseStdin: true}})
		},
		func(sz *podsv0.TerminalSize) error {
			return send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Resize{Resize: sz}})
		})
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch r := m.GetResponse().(type) {
		case *podsv0.AttachResponse_Stdout:
			err = writeTo(sio.Stdout, r.Stdout)
		case *podsv0.AttachResponse_Stderr:
			err = writeTo(sio.Stderr, r.Stderr)
		}
		if err != nil {
			return fmt.Errorf("attach to %q: client gone: %w", id, err)
		}
	}
}

// forwardInput sends stdin (then its close) and resizes until ctx ends.
func forwardInput(ctx context.Context, sio controller.StreamIO, stdin func([]byte) error, closeStdin func() error, resize func(*podsv0.TerminalSize) error) {
	if sio.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := sio.Stdin.Read(buf)
				if n > 0 {
					if stdin(append([]byte(nil), buf[:n]...)) != nil {
						return
					}
				}
				if err != nil {
					if ctx.Err() == nil {
						_ = closeStdin()
					}
					return
				}
			}
		}()
	}
	if sio.Resize != nil {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case sz, ok := <-sio.Resize:
					if !ok {
						return
					}
					if resize(&podsv0.TerminalSize{Width: uint32(sz.Width), Height: uint32(sz.Height)}) != nil {
						return
					}
				}
			}
		}()
	}
}

// lockedSend serializes the sends of a client stream (gRPC allows one
// sender at a time).
func lockedSend[T any](send func(T) error) func(T) error {
	var mu sync.Mutex
	return func(m T) error {
		mu.Lock()
		defer mu.Unlock()
		return send(m)
	}
}

// writeTo writes to w unless the client did not ask for that stream.
func writeTo(w io.Writer, b []byte) error {
	if w == nil {
		return nil
	}
	_, err := w.Write(b)
	return err
}
