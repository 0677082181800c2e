// Package observe keeps what auraed lets clients watch: the output of the
// processes it runs (a bounded ring of lines per stream), the POSIX signals
// that end or stop them, and auraed's own log records. NewService serves
// them as the Aurae ObserveService.
package observe

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// Defaults of HubConfig.
const (
	DefaultRingLines  = 16384
	DefaultRingBytes  = 4 << 20
	DefaultKeepExited = 1024

	// maxLineBytes bounds one line: a longer run of bytes without '\n' is
	// delivered as several lines of at most this size.
	maxLineBytes = 64 << 10
	// signalBuffer is how many signal events a subscriber may lag behind
	// before it loses events.
	signalBuffer = 256
)

// Workload names where a process runs, e.g. {WORKLOAD_TYPE_CELL, cell name}.
type Workload struct {
	Type observev0.WorkloadType
	ID   string
}

// SignalEvent says that a signal ended (or, when Stopped, stopped) a process.
type SignalEvent struct {
	Pid        int
	Signal     syscall.Signal
	Stopped    bool
	Workload   Workload
	Executable string
	Time       time.Time
}

// HubConfig bounds what a Hub keeps. Zero or negative values take the
// defaults.
type HubConfig struct {
	// RingLines is the number of lines kept per output stream of a process.
	RingLines int
	// RingBytes is the number of bytes kept per output stream of a process.
	RingBytes int
	// KeepExited is the number of finished processes (both streams at EOF)
	// whose output stays readable; the oldest is dropped first.
	KeepExited int
}

// Hub holds process output rings and fans out signal events.
type Hub struct {
	cfg HubConfig

	mu     sync.Mutex
	procs  map[int]*process
	exited []*process // finished processes still in procs, oldest first

	sigMu   sync.Mutex
	sigSubs map[*signalSub]struct{}
}

type process struct {
	pid        int
	workload   Workload
	executable string
	stdout     *ring
	stderr     *ring
	open       int // streams not yet at EOF, guarded by Hub.mu
}

func (p *process) ring(ch observev0.LogChannelType) *ring {
	if ch == observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR {
		return p.stderr
	}
	return p.stdout
}

// NewHub returns an empty Hub.
func NewHub(cfg HubConfig) *Hub {
	if cfg.RingLines <= 0 {
		cfg.RingLines = DefaultRingLines
	}
	if cfg.RingBytes <= 0 {
		cfg.RingBytes = DefaultRingBytes
	}
	if cfg.KeepExited <= 0 {
		cfg.KeepExited = DefaultKeepExited
	}
	return &Hub{
		cfg:     cfg,
		procs:   make(map[int]*process),
		sigSubs: make(map[*signalSub]struct{}),
	}
}

// Attach drains stdout and stderr of a process (pid as seen from the host)
// into line rings, until both readers hit EOF; it never blocks the writer for
// lack of subscribers. Lines are split on '\n' (a trailing partial line is
// delivered at EOF), each stamped with time.Now(); bytes that are not UTF-8
// are replaced by U+FFFD, and a line longer than 64 KiB is cut into several.
//
// Attach registers the process before it returns (GetSubProcessStream finds
// it at once) and drains in two goroutines of its own, so it does not block.
// A nil reader counts as an empty stream. Readers that are also io.Closers are
// closed once drained. A later Attach with the same pid (pid reuse) replaces
// the earlier process.
func (h *Hub) Attach(pid int, w Workload, executable string, stdout, stderr io.Reader) {
	maxLine := min(maxLineBytes, h.cfg.RingBytes)
	p := &process{
		pid:        pid,
		workload:   w,
		executable: executable,
		stdout:     newRing(h.cfg.RingLines, h.cfg.RingBytes),
		stderr:     newRing(h.cfg.RingLines, h.cfg.RingBytes),
		open:       2,
	}
	h.mu.Lock()
	if old, ok := h.procs[pid]; ok {
		h.exited = slices.DeleteFunc(h.exited, func(e *process) bool { return e == old })
	}
	h.procs[pid] = p
	h.mu.Unlock()

	for _, s := range []struct {
		r    io.Reader
		ring *ring
	}{{stdout, p.stdout}, {stderr, p.stderr}} {
		go func() {
			drain(s.r, s.ring, maxLine)
			h.streamDone(p)
		}()
	}
}

// drain splits r into lines and appends them to rg until EOF (or any other
// read error, which ends the stream the same way).
func drain(r io.Reader, rg *ring, maxLine int) {
	defer rg.close()
	if r == nil {
		return
	}
	if c, ok := r.(io.Closer); ok {
		defer func() { _ = c.Close() }()
	}
	br := bufio.NewReaderSize(r, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			rg.append(newEntry(b[:len(b)-1]))
		case errors.Is(err, bufio.ErrBufferFull):
			rg.append(newEntry(b))
		default:
			if len(b) > 0 {
				rg.append(newEntry(b))
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
				slog.Debug("process output stream ended by a read error", "error", err)
			}
			return
		}
	}
}

func newEntry(b []byte) entry {
	s := string(b)
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return entry{text: s, at: time.Now().UnixNano()}
}

// streamDone records that one stream of p hit EOF; once both did, p becomes
// an exited process, and the oldest exited ones beyond KeepExited go.
func (h *Hub) streamDone(p *process) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p.open--
	if p.open > 0 || h.procs[p.pid] != p {
		return
	}
	h.exited = append(h.exited, p)
	for len(h.exited) > h.cfg.KeepExited {
		old := h.exited[0]
		h.exited[0] = nil
		h.exited = h.exited[1:]
		if h.procs[old.pid] == old {
			delete(h.procs, old.pid)
		}
	}
}

// lookup returns the process with that pid, or nil.
func (h *Hub) lookup(pid int) *process {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.procs[pid]
}

// Forget drops the rings of processes of a workload (called when a cell is
// freed). Subscribers already streaming such a process keep streaming until
// its output ends.
func (h *Hub) Forget(w Workload) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for pid, p := range h.procs {
		if p.workload == w {
			delete(h.procs, pid)
		}
	}
	h.exited = slices.DeleteFunc(h.exited, func(p *process) bool { return p.workload == w })
}

// signalSub is one GetPosixSignalsStream subscriber.
type signalSub struct {
	all     bool
	filter  Workload
	ch      chan SignalEvent
	dropped uint64 // guarded by Hub.sigMu
}

func (s *signalSub) matches(w Workload) bool {
	if s.all {
		return true
	}
	return s.filter.Type == w.Type && (s.filter.ID == "" || s.filter.ID == w.ID)
}

// PublishSignal hands ev to every matching subscriber, without waiting: a
// subscriber more than a few hundred events behind loses the newest ones.
// A zero ev.Time is set to time.Now().
func (h *Hub) PublishSignal(ev SignalEvent) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	h.sigMu.Lock()
	defer h.sigMu.Unlock()
	for s := range h.sigSubs {
		if !s.matches(ev.Workload) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.dropped++
		}
	}
}

// subscribeSignals registers a subscriber; all means every workload,
// otherwise events of w.Type (and of w.ID when not empty). The returned
// function unregisters it and reports how many events it lost.
func (h *Hub) subscribeSignals(all bool, w Workload) (*signalSub, func() uint64) {
	s := &signalSub{all: all, filter: w, ch: make(chan SignalEvent, signalBuffer)}
	h.sigMu.Lock()
	h.sigSubs[s] = struct{}{}
	h.sigMu.Unlock()
	return s, func() uint64 {
		h.sigMu.Lock()
		defer h.sigMu.Unlock()
		delete(h.sigSubs, s)
		return s.dropped
	}
}

func (h *Hub) signalSubscribers() int {
	h.sigMu.Lock()
	defer h.sigMu.Unlock()
	return len(h.sigSubs)
}
