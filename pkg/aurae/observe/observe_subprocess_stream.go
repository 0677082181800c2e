package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// readBatch is how many lines one ring read copies out under the lock.
const readBatch = 256

// GetSubProcessStream sends the buffered lines of one output stream of a
// process, then its new lines, and ends once that stream hit EOF and every
// line was sent.
func (s *service) GetSubProcessStream(req *observev0.GetSubProcessStreamRequest, stream grpc.ServerStreamingServer[observev0.LogItem]) error {
	var channel string
	switch req.GetChannelType() {
	case observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT:
		channel = "stdout"
	case observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR:
		channel = "stderr"
	default:
		return status.Errorf(codes.InvalidArgument, "channel_type must be STDOUT or STDERR, got %v", req.GetChannelType())
	}
	pid := req.GetProcessId()
	if pid <= 0 {
		return status.Errorf(codes.InvalidArgument, "process_id must be positive, got %d", pid)
	}
	if int64(int(pid)) != pid {
		return status.Errorf(codes.InvalidArgument, "process_id %d out of range", pid)
	}
	err := s.hub.Follow(stream.Context(), int(pid), req.GetChannelType(), func(line string, at int64) error {
		return stream.Send(&observev0.LogItem{Channel: channel, Line: line, Timestamp: at})
	})
	if errors.Is(err, errNoOutput) {
		return status.Errorf(codes.NotFound, "no output of process %d is kept", pid)
	}
	if err != nil && stream.Context().Err() != nil {
		return streamEnded(stream.Context())
	}
	return err
}

// errNoOutput: the hub keeps no output of the process.
var errNoOutput = errors.New("no output of the process is kept")

// Follow passes the buffered lines of one output stream of a process to
// send (with their Unix-nanosecond times), then its new lines, and returns
// once that stream hit EOF and every line was passed, or ctx ended.
func (h *Hub) Follow(ctx context.Context, pid int, ch observev0.LogChannelType, send func(line string, at int64) error) error {
	p := h.lookup(pid)
	if p == nil {
		return fmt.Errorf("process %d: %w", pid, errNoOutput)
	}
	rg := p.ring(ch)
	var lost uint64
	defer func() {
		if lost > 0 {
			slog.Warn("process output subscriber fell behind the ring and lost lines",
				"pid", pid, "channel", ch.String(), "lost", lost)
		}
	}()
	for cursor := rg.oldest(); ; {
		res := rg.read(cursor, readBatch)
		cursor = res.next
		lost += res.dropped
		for _, e := range res.lines {
			if err := send(e.text, e.at); err != nil {
				return err
			}
		}
		if res.done {
			return nil
		}
		if len(res.lines) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-res.wait:
		}
	}
}
