package nri

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	nrilog "github.com/containerd/nri/pkg/log"
)

// slogger gives NRI's log lines to slog, one structured line each.
type slogger struct{ l *slog.Logger }

func (s slogger) Debugf(ctx context.Context, format string, args ...any) {
	s.l.DebugContext(ctx, fmt.Sprintf(format, args...))
}

func (s slogger) Infof(ctx context.Context, format string, args ...any) {
	s.l.InfoContext(ctx, fmt.Sprintf(format, args...))
}

func (s slogger) Warnf(ctx context.Context, format string, args ...any) {
	s.l.WarnContext(ctx, fmt.Sprintf(format, args...))
}

func (s slogger) Errorf(ctx context.Context, format string, args ...any) {
	s.l.ErrorContext(ctx, fmt.Sprintf(format, args...))
}

var setLoggerOnce sync.Once

// setLogger makes NRI's package-wide logger log through l (the first
// caller's: NRI has one logger per process).
func setLogger(l *slog.Logger) {
	setLoggerOnce.Do(func() { nrilog.Set(slogger{l.With("component", "nri")}) })
}
