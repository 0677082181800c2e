// Package server builds auraed's gRPC server: interceptors that log every
// call and turn panics and plain Go errors into gRPC statuses, the unix
// socket listener, and the mutual-TLS configuration for TCP.
package server

import (
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/tracing"
)

// Message size limits of every server New makes: auraed's and the CRI's.
const (
	// MaxSendMsgSize fits the largest reply: an ExecSync whose stdout and
	// stderr are both at auraed's cap (16 MiB each), plus room for the rest
	// of the message. gRPC's default (unlimited sends, 4 MiB receives on
	// the other side) failed a 6 MB ExecSync with ResourceExhausted.
	MaxSendMsgSize = 2*(16<<20) + 1<<20
	// MaxRecvMsgSize is what containerd's CRI and the kubelet's client
	// accept: 16 MiB.
	MaxRecvMsgSize = 16 << 20
)

// New returns a gRPC server whose every call goes through the logging and
// recovering interceptors, with the message size limits above, whose Stop
// waits for the handlers of the calls it cancels (Shutdown bounds that);
// opts are added after them (credentials, other limits).
func New(logger *slog.Logger, opts ...grpc.ServerOption) *grpc.Server {
	return NewObserved(logger, nil, opts...)
}

// Observer is told of each call the interceptors see: Begin at its start,
// and the function it returns at its end with the call's final code (the
// one the client gets, after errmap). *metrics.GRPC is one.
type Observer interface {
	Begin(fullMethod string) (end func(codes.Code))
}

// NewObserved is New whose interceptors also tell obs (nil: no one) of
// each call.
func NewObserved(logger *slog.Logger, obs Observer, opts ...grpc.ServerOption) *grpc.Server {
	// First, the caller's trace goes on: a span per call when exporting
	// (pkg/tracing).
	all := append(tracing.ServerOptions(),
		grpc.ChainUnaryInterceptor(ObservedUnaryInterceptor(logger, obs)),
		grpc.ChainStreamInterceptor(ObservedStreamInterceptor(logger, obs)),
		grpc.MaxSendMsgSize(MaxSendMsgSize),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.WaitForHandlers(true),
	)
	all = append(all, opts...)
	return grpc.NewServer(all...)
}

// UnaryInterceptor logs each unary call (method, duration, code) and turns a
// panic into codes.Internal and any error that is not a gRPC status into one
// (through errmap, the single place where errors become codes).
func UnaryInterceptor(logger *slog.Logger) grpc.UnaryServerInterceptor {
	return ObservedUnaryInterceptor(logger, nil)
}

// ObservedUnaryInterceptor is UnaryInterceptor that also tells obs (nil:
// no one) of each call.
func ObservedUnaryInterceptor(logger *slog.Logger, obs Observer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		end := begin(obs, info.FullMethod)
		defer func() {
			if r := recover(); r != nil {
				err = recovered(ctx, logger, info.FullMethod, r)
				resp = nil
			}
			err = errmap.ToGRPC(err)
			logCall(ctx, logger, info.FullMethod, start, err)
			end(status.Code(err))
		}()
		return handler(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls; the call is
// logged when the stream ends.
func StreamInterceptor(logger *slog.Logger) grpc.StreamServerInterceptor {
	return ObservedStreamInterceptor(logger, nil)
}

// ObservedStreamInterceptor is StreamInterceptor that also tells obs (nil:
// no one) of each call.
func ObservedStreamInterceptor(logger *slog.Logger, obs Observer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		ctx := ss.Context()
		end := begin(obs, info.FullMethod)
		defer func() {
			if r := recover(); r != nil {
				err = recovered(ctx, logger, info.FullMethod, r)
			}
			err = errmap.ToGRPC(err)
			logCall(ctx, logger, info.FullMethod, start, err)
			end(status.Code(err))
		}()
		return handler(srv, ss)
	}
}

func begin(obs Observer, method string) func(codes.Code) {
	if obs == nil {
		return func(codes.Code) {}
	}
	return obs.Begin(method)
}

func recovered(ctx context.Context, logger *slog.Logger, method string, r any) error {
	logger.ErrorContext(ctx, "panic in gRPC handler", "method", method, "panic", r, "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "internal error in %s", method)
}

func logCall(ctx context.Context, logger *slog.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelInfo
	switch {
	case serverFault(code):
		level = slog.LevelError
	case isRead(method):
		level = slog.LevelDebug
	case isProbe(method):
		// A probe that answers is no event; one that fails may be.
		level = slog.LevelDebug
		if code != codes.OK {
			level = slog.LevelWarn
		}
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.Duration("duration", time.Since(start)),
		slog.String("code", code.String()),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	logger.LogAttrs(ctx, level, "gRPC call", attrs...)
}

// serverFault tells codes that mean auraed failed, not the caller.
func serverFault(c codes.Code) bool {
	switch c {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return true
	}
	return false
}

// isProbe tells ExecSync, which the kubelet's exec probes call for every
// probed container every few seconds (the CRI's, and auraed's PodService's
// that aurae-cri calls for it): Debug when it answers, Warn when it fails.
// A command's non-zero exit is an answer (the probe's result).
func isProbe(fullMethod string) bool {
	return fullMethod[strings.LastIndexByte(fullMethod, '/')+1:] == "ExecSync"
}

// isRead tells methods that change nothing: they are logged at Debug
// (a kubelet asks for the status and stats of every container every few
// seconds; those are not events worth a line each).
func isRead(fullMethod string) bool {
	name := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	// Stream*: the CRI's streamed lists (KEP-5825), which the kubelet's
	// relist calls every second in place of List*.
	for _, prefix := range []string{"Get", "List", "Stream", "Discover", "Status", "Stats", "Watch", "Version", "Info"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	// ContainerStatus, PodSandboxStats, ImageFsInfo, ContainerEvents, …
	for _, suffix := range []string{"Status", "Stats", "FsInfo", "Metrics", "Descriptors", "Events"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return name == "RuntimeConfig"
}
