package observe

import (
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
	p := s.hub.lookup(int(pid))
	if p == nil {
		return status.Errorf(codes.NotFound, "no output of process %d is kept", pid)
	}
	ctx := stream.Context()
	rg := p.ring(req.GetChannelType())
	var lost uint64
	defer func() {
		if lost > 0 {
			slog.Warn("process output subscriber fell behind the ring and lost lines",
				"pid", pid, "channel", channel, "lost", lost)
		}
	}()
	for cursor := rg.oldest(); ; {
		res := rg.read(cursor, readBatch)
		cursor = res.next
		lost += res.dropped
		for _, e := range res.lines {
			if err := stream.Send(&observev0.LogItem{Channel: channel, Line: e.text, Timestamp: e.at}); err != nil {
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
			return streamEnded(ctx)
		case <-res.wait:
		}
	}
}
