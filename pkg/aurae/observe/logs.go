package observe

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
)

// logBuffer is how many records a daemon log subscriber may lag behind
// before it loses records.
const logBuffer = 1024

// LogBroadcaster is a slog.Handler that passes records to the wrapped handler
// and to every subscriber of GetAuraeDaemonLogStream (non-blocking: a slow
// subscriber loses records, never blocks logging). Which records are enabled
// is the wrapped handler's choice. Handlers derived with WithAttrs and
// WithGroup share the subscribers.
type LogBroadcaster struct {
	next slog.Handler
	// format renders a record as one JSON line into subs; it carries the
	// same attributes and groups as next.
	format slog.Handler
	subs   *logSubs
}

// logSubs is shared by a LogBroadcaster and every handler derived from it.
type logSubs struct {
	count atomic.Int32 // len(m), read without the lock on every record

	mu sync.Mutex
	m  map[*logSub]struct{}

	// fmtMu serializes formatting so that write knows the record's time.
	fmtMu   sync.Mutex
	curTime int64
}

type logSub struct {
	ch      chan logLine
	dropped atomic.Uint64
}

// logLine is one formatted record.
type logLine struct {
	line string
	at   int64 // unix nanoseconds
}

// NewLogBroadcaster wraps next.
func NewLogBroadcaster(next slog.Handler) *LogBroadcaster {
	subs := &logSubs{m: make(map[*logSub]struct{})}
	return &LogBroadcaster{
		next:   next,
		format: slog.NewJSONHandler(subs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		subs:   subs,
	}
}

// Enabled implements slog.Handler.
func (b *LogBroadcaster) Enabled(ctx context.Context, l slog.Level) bool {
	return b.next.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (b *LogBroadcaster) Handle(ctx context.Context, r slog.Record) error {
	err := b.next.Handle(ctx, r)
	if b.subs.count.Load() > 0 {
		b.subs.fmtMu.Lock()
		b.subs.curTime = r.Time.UnixNano()
		// Formatting into memory cannot fail in a way worth reporting to
		// the caller; the wrapped handler's error is the one that counts.
		_ = b.format.Handle(ctx, r)
		b.subs.fmtMu.Unlock()
	}
	return err
}

// WithAttrs implements slog.Handler.
func (b *LogBroadcaster) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &LogBroadcaster{next: b.next.WithAttrs(attrs), format: b.format.WithAttrs(attrs), subs: b.subs}
}

// WithGroup implements slog.Handler.
func (b *LogBroadcaster) WithGroup(name string) slog.Handler {
	return &LogBroadcaster{next: b.next.WithGroup(name), format: b.format.WithGroup(name), subs: b.subs}
}

// Write receives one formatted record from the JSON handler (called with
// fmtMu held) and hands it to every subscriber without waiting.
func (s *logSubs) Write(p []byte) (int, error) {
	line := string(p)
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	l := logLine{line: line, at: s.curTime}
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.m {
		select {
		case sub.ch <- l:
		default:
			sub.dropped.Add(1)
		}
	}
	return len(p), nil
}

// subscribe registers a subscriber; the returned function unregisters it and
// reports how many records it lost.
func (b *LogBroadcaster) subscribe() (*logSub, func() uint64) {
	sub := &logSub{ch: make(chan logLine, logBuffer)}
	b.subs.mu.Lock()
	b.subs.m[sub] = struct{}{}
	b.subs.count.Store(int32(len(b.subs.m)))
	b.subs.mu.Unlock()
	return sub, func() uint64 {
		b.subs.mu.Lock()
		delete(b.subs.m, sub)
		b.subs.count.Store(int32(len(b.subs.m)))
		b.subs.mu.Unlock()
		return sub.dropped.Load()
	}
}
