package pods

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

const (
	// logChunk is the most a ContainerLog answer carries.
	logChunk = 64 << 10
	// logPoll is how often a followed log is looked at when no inotify
	// event came (a safety net: writes raise events).
	logPoll = 2 * time.Second
	// punchAlign: holes are punched in whole pages.
	punchAlign = 4096
)

// streamLogPath is where the monitor of a container started with
// log_stream writes its log: in the bundle, private to auraed.
func (s *Service) streamLogPath(id string) string {
	return filepath.Join(s.bundleDir(id), "container.log")
}

// ContainerLog implements PodService.ContainerLog.
func (s *Service) ContainerLog(stream grpc.BidiStreamingServer[podsv0.ContainerLogRequest, podsv0.ContainerLogResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "container log: the first request must be a start")
	}
	return errmap.ToGRPC(s.followLog(stream, start))
}

// logFollower is one ContainerLog stream of a container; a newer stream of
// the same container ends the older one.
type logFollower struct {
	cancel context.CancelFunc
}

func (s *Service) followLog(stream grpc.BidiStreamingServer[podsv0.ContainerLogRequest, podsv0.ContainerLogResponse], start *podsv0.ContainerLogStart) error {
	id := start.GetContainerId()
	if err := validID("container", id); err != nil {
		return err
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	if !c.record().LogStream {
		return fmt.Errorf("container %q was not started with log_stream: %w", id, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	me := &logFollower{cancel: cancel}
	c.mu.Lock()
	if c.follower != nil {
		c.follower.cancel()
	}
	c.follower = me
	dropped := c.logDropped
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.follower == me {
			c.follower = nil
		}
		c.mu.Unlock()
	}()
	off := int64(start.GetOffset())
	if start.GetOffset() > 1<<62 || off < dropped {
		return fmt.Errorf("container %q: log offset %d was dropped already (kept from %d): %w", id, start.GetOffset(), dropped, errdefs.ErrOutOfRange)
	}
	path := s.streamLogPath(id)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		// conmon makes it when it starts; until then the log is empty.
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	}
	if err != nil {
		return fmt.Errorf("container %q: log: %w", id, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return err
	} else if off > fi.Size() {
		return fmt.Errorf("container %q: log offset %d is past its end %d: %w", id, off, fi.Size(), errdefs.ErrOutOfRange)
	}

	// Growth of the file wakes the sender; without inotify it polls.
	wake := make(chan struct{}, 1)
	if w, err := fsnotify.NewWatcher(); err == nil {
		defer func() { _ = w.Close() }()
		if err := w.Add(path); err == nil {
			go func() {
				for {
					select {
					case _, ok := <-w.Events:
						if !ok {
							return
						}
						select {
						case wake <- struct{}{}:
						default:
						}
					case _, ok := <-w.Errors:
						if !ok {
							return
						}
					}
				}
			}()
		}
	}

	// Confirmations arrive on the request side.
	var sent atomic.Int64
	sent.Store(off)
	recvErr := make(chan error, 1)
	go func() {
		recvErr <- s.logConfirmations(stream, c, f, &sent)
	}()

	buf := make([]byte, logChunk)
	ticker := time.NewTicker(logPoll)
	defer ticker.Stop()
	for {
		// done is looked at before the size: once the monitor is gone, a
		// size read after it is final.
		done := isDone(c.done)
		n, err := f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("container %q: read log: %w", id, err)
		}
		if n > 0 {
			// Counted as sent first: the client may confirm it as soon
			// as it is on the wire.
			sent.Store(off + int64(n))
			if err := stream.Send(&podsv0.ContainerLogResponse{Offset: uint64(off), Data: buf[:n]}); err != nil {
				return err
			}
			off += int64(n)
			continue
		}
		if done {
			return stream.Send(&podsv0.ContainerLogResponse{Offset: uint64(off), Eof: true})
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.closedCh:
			return status.Error(codes.Unavailable, "pod service closed")
		case err := <-recvErr:
			return err
		case <-c.done:
		case <-wake:
		case <-ticker.C:
		}
	}
}

// logConfirmations reads the client's persisted offsets and punches what
// lies before them out of the log file (whole pages).
func (s *Service) logConfirmations(stream grpc.BidiStreamingServer[podsv0.ContainerLogRequest, podsv0.ContainerLogResponse], c *container, f *os.File, sent *atomic.Int64) error {
	var last uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The client sends no more; the stream may still follow.
			<-stream.Context().Done()
			return status.FromContextError(stream.Context().Err()).Err()
		}
		if err != nil {
			return err
		}
		if req.GetStart() != nil {
			return status.Error(codes.InvalidArgument, "container log: a second start")
		}
		p := req.GetPersisted()
		if p < last || p > uint64(sent.Load()) {
			return status.Errorf(codes.InvalidArgument, "container log: persisted offset %d is before the last one (%d) or past what was sent (%d)", p, last, sent.Load())
		}
		last = p
		end := int64(p) &^ (punchAlign - 1)
		c.mu.Lock()
		from := c.logDropped
		c.mu.Unlock()
		if end <= from {
			continue
		}
		// Through the file's own reference: the sender may close it.
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		if cerr := rc.Control(func(fd uintptr) {
			err = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, end-from)
		}); cerr != nil {
			return cerr
		}
		if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			s.log.Warn("drop persisted log", "container", c.id, "error", err)
			continue
		}
		c.mu.Lock()
		if end > c.logDropped {
			c.logDropped = end
		}
		c.mu.Unlock()
	}
}
