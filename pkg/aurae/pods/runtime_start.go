package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// execFifo is the FIFO runc's create leaves in the container's state dir:
// the container's init opens it for writing and waits there until a reader
// comes, writes a byte, then execs the workload (the write end closes on
// exec). `runc start` is that reader: it opens the FIFO, reads it to its
// end and removes it (runc then reports the container running rather than
// created). auraed, which owns runc's --root, does the same itself and
// saves starting a runc process: ~10 ms and as much CPU a container.
const execFifo = "exec.fifo"

// errNoFifo says a created container has no exec FIFO: its runtime does not
// work as startFromFifo expects, and `runc start` is asked instead.
var errNoFifo = errors.New("no exec fifo")

// fifoPoll is how often startFromFifo looks whether the init it waits for
// is still there (as runc start does).
const fifoPoll = 100 * time.Millisecond

// startFromFifo starts the created container id whose init is initPid,
// as `runc start` does. It fails with errNoFifo, having done nothing, when
// the container has no exec FIFO.
func (s *Service) startFromFifo(ctx context.Context, id string, initPid int) error {
	path := filepath.Join(s.runcRoot(), id, execFifo)
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		return errNoFifo
	}
	st, err := linux.Stat(initPid)
	if err != nil || st.Exited() {
		return fmt.Errorf("start container %q: its init (pid %d) is gone", id, initPid)
	}
	initGone := func() bool {
		now, err := linux.Stat(initPid)
		return err != nil || now.Exited() || now.StartTime != st.StartTime
	}
	ctx, cancel := context.WithTimeout(ctx, runtimeCallTimeout)
	defer cancel()

	// The open blocks until the init's write end is open; a writer of our
	// own (opened and closed at once) unblocks it when the init is gone or
	// the call ends, and the read then finds nothing.
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		ch <- opened{f, err}
	}()
	unblock := func() {
		if fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
			_ = unix.Close(fd)
		}
	}
	tick := time.NewTicker(fifoPoll)
	defer tick.Stop()
	var o opened
wait:
	for {
		select {
		case o = <-ch:
			break wait
		case <-tick.C:
			if initGone() {
				unblock()
			}
		case <-ctx.Done():
			unblock()
		}
	}
	if o.err != nil {
		return fmt.Errorf("start container %q: exec fifo: %w", id, o.err)
	}
	defer o.f.Close()
	if err := ctx.Err(); err != nil {
		// Closed unread: the init's write fails and it ends unstarted.
		return fmt.Errorf("start container %q: %w", id, err)
	}
	// The read ends when the init execs the workload (or dies).
	deadline, _ := ctx.Deadline()
	_ = o.f.SetReadDeadline(deadline)
	b, err := io.ReadAll(o.f)
	if err != nil {
		return fmt.Errorf("start container %q: exec fifo: %w", id, err)
	}
	if len(b) == 0 {
		if ctx.Err() != nil {
			return fmt.Errorf("start container %q: %w", id, ctx.Err())
		}
		return fmt.Errorf("start container %q: its init (pid %d) ended before it was started", id, initPid)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("start container %q: %w", id, err)
	}
	return nil
}
