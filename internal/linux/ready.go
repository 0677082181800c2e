package linux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"
)

// ReadyAndReap is the life of a namespace holder (a cell init, a pod's
// holder): it reports ready by writing '1' to ready and closing it, ignores
// the signals that would end it by accident (only SIGKILL ends a holder),
// and reaps orphans forever. It never returns.
func ReadyAndReap(ready *os.File) {
	signal.Ignore(unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	children := make(chan os.Signal, 1)
	signal.Notify(children, unix.SIGCHLD)
	if _, err := ready.Write([]byte{'1'}); err != nil {
		os.Exit(1)
	}
	_ = ready.Close()
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
		<-children
	}
}

// WaitReady waits for a holder's ReadyAndReap: r (the read end of its ready
// pipe) must give "1" and then EOF within timeout. Anything else it read is
// the holder's own error message.
func WaitReady(ctx context.Context, r io.Reader, timeout time.Duration) error {
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 4096))
		got <- b
	}()
	select {
	case b := <-got:
		if string(b) != "1" {
			return fmt.Errorf("not ready: %q", b)
		}
		return nil
	case <-time.After(timeout):
		return errors.New("not ready in time")
	case <-ctx.Done():
		return ctx.Err()
	}
}
