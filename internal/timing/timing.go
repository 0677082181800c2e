// Package timing times the steps of one call, for one Debug line per call
// that says where its time went.
package timing

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Steps are the durations of a call's steps so far. A nil *Steps records
// nothing.
type Steps struct {
	mu          sync.Mutex
	start, last time.Time
	attrs       []any
}

// Start begins timing a call.
func Start() *Steps {
	now := time.Now()
	return &Steps{start: now, last: now}
}

// Done records the step that ended now: the time since the previous
// step ended (or since Start).
func (s *Steps) Done(name string) {
	if s == nil {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attrs = append(s.attrs, slog.Float64(name, ms(now.Sub(s.last))))
	s.last = now
}

// Since records a step that began at t0 and ended now, without moving the
// mark Done measures from: a step that overlapped others.
func (s *Steps) Since(name string, t0 time.Time) {
	if s == nil {
		return
	}
	d := time.Since(t0)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attrs = append(s.attrs, slog.Float64(name, ms(d)))
}

// Log writes one Debug line: msg, args, the steps in milliseconds (group
// "ms") and the total since Start ("total_ms").
func (s *Steps) Log(ctx context.Context, log *slog.Logger, msg string, args ...any) {
	if s == nil || !log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	s.mu.Lock()
	steps := append([]any(nil), s.attrs...)
	total := time.Since(s.start)
	s.mu.Unlock()
	args = append(args, slog.Group("ms", steps...), slog.Float64("total_ms", ms(total)))
	log.DebugContext(ctx, msg, args...)
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Calls totals the time a call spends in the calls it makes to another
// service (containerd), by method. A nil *Calls records nothing.
type Calls struct {
	mu    sync.Mutex
	n     int
	by    map[string]time.Duration
	count map[string]int
}

type callsKey struct{}

// WithCalls returns ctx carrying a new Calls, which client interceptors
// find with CallsFrom.
func WithCalls(ctx context.Context) (context.Context, *Calls) {
	c := &Calls{by: map[string]time.Duration{}, count: map[string]int{}}
	return context.WithValue(ctx, callsKey{}, c), c
}

// CallsFrom is the Calls ctx carries, or nil.
func CallsFrom(ctx context.Context) *Calls {
	c, _ := ctx.Value(callsKey{}).(*Calls)
	return c
}

// Add records one call of method (its last path element is kept) that
// took d.
func (c *Calls) Add(method string, d time.Duration) {
	if c == nil {
		return
	}
	if i := strings.LastIndexByte(method, '/'); i >= 0 {
		if j := strings.LastIndexByte(method[:i], '.'); j >= 0 {
			method = method[j+1:]
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.by[method] += d
	c.count[method]++
}

// Attrs are the calls as log attributes: name+"_calls" (their number), a
// group name+"_ms" of the milliseconds spent in each method and a group
// name+"_n" of the number of calls of each.
func (c *Calls) Attrs(name string) []any {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	methods := make([]string, 0, len(c.by))
	for m := range c.by {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	group := make([]any, 0, len(methods))
	counts := make([]any, 0, len(methods))
	for _, m := range methods {
		group = append(group, slog.Float64(m, ms(c.by[m])))
		counts = append(counts, slog.Int(m, c.count[m]))
	}
	return []any{slog.Int(name+"_calls", c.n), slog.Group(name+"_ms", group...), slog.Group(name+"_n", counts...)}
}
