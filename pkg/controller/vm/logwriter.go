package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// A VM pod's container logs are written on the host, never by the guest:
// the guest's monitor writes a file private to the guest, the guest auraed
// streams it (PodService.ContainerLog) and a logWriter per container writes
// the CRI log file at the path the kubelet gave. The guest is hostile, so
// what it sends is checked (offsets in order, sizes bounded, whole CRI
// lines only) and the host file is opened below its directory without
// following a symlink and only when it is a regular file.
//
// Nothing is lost or written twice across a restart of aurae-cri or a new
// guest connection: the writer keeps a position record (logPos) that pairs
// an offset in the guest's log with the size of the host file at that
// offset, written (after fdatasync of the log) aside and renamed, and only
// then confirms the offset to the guest, which drops what lies before. A
// restarted writer cuts the file back to the recorded size (what it wrote
// after the record is sent again) and follows from the recorded offset.

const (
	// maxLogChunk is the most a guest may send at once (its 64 KiB).
	maxLogChunk = 64 << 10
	// maxLogLine bounds a CRI line (conmon cuts lines at 8 KiB); a longer
	// one is dropped.
	maxLogLine = 64 << 10
	// logPersistEvery and logPersistBytes: how often the position is
	// persisted and confirmed to the guest while lines arrive.
	logPersistEvery = time.Second
	logPersistBytes = 1 << 20
	// logRetryMin/Max bound the wait before following a lost stream again.
	logRetryMin = 200 * time.Millisecond
	logRetryMax = 5 * time.Second
)

// logStream is a ContainerLog stream of the guest, started at an offset.
type logStream interface {
	Recv() (*podsv0.ContainerLogResponse, error)
	Send(*podsv0.ContainerLogRequest) error
}

// openLogFunc starts following a container's log in its guest at offset;
// the stream ends with ctx.
type openLogFunc func(ctx context.Context, containerID string, offset uint64) (logStream, error)

// logPos is a container's position record, <pod dir>/logs/<id>.json.
type logPos struct {
	// Path is the log file the kubelet asked for.
	Path string `json:"path"`
	// Offset in the guest's log up to which every line is in the file
	// Dev/Ino, whose size was Size then.
	Offset uint64 `json:"offset"`
	Size   int64  `json:"size"`
	Dev    uint64 `json:"dev,omitempty"`
	Ino    uint64 `json:"ino,omitempty"`
	// EOF: the guest said the log is complete at Offset.
	EOF bool `json:"eof,omitempty"`
}

// logWriter writes one container's CRI log file from its guest's stream.
type logWriter struct {
	id      string
	pod     string // set by the controller
	recPath string
	open    openLogFunc
	log     *slog.Logger

	reopenCh chan chan error
	cancel   context.CancelFunc
	done     chan struct{}

	// Owned by the run goroutine (and by newLogWriter before it).
	f    *os.File
	pos  logPos // where the file is
	disk logPos // what the record says
	// dropped counts lines refused (not CRI, too long, cut by eof).
	dropped int
	// out is the whole lines taken from the stream and not yet written;
	// outOffset how far they (and the lines refused among them) take
	// pos.Offset; skipped the bytes of a too long line dropped so far.
	out       []byte
	outOffset uint64
	skipped   uint64
}

// newLogWriter opens (or, with a record at recPath, resumes) the log file of
// a container: from a record, the file it names is found again (at path,
// or renamed beside it by a rotation cut short) and cut back to the
// recorded size. The record is written before it returns. start runs it.
func newLogWriter(id, path, recPath string, open openLogFunc, log *slog.Logger) (*logWriter, error) {
	w := &logWriter{
		id: id, recPath: recPath, open: open, log: log.With("container", id),
		reopenCh: make(chan chan error), done: make(chan struct{}),
	}
	var rec logPos
	err := readJSON(recPath, &rec)
	resumed := err == nil
	switch {
	case errors.Is(err, os.ErrNotExist):
		rec = logPos{Path: path}
	case err != nil:
		return nil, fmt.Errorf("log position of %s: %w", id, err)
	}
	if path != "" && rec.Path != path {
		return nil, fmt.Errorf("log position of %s is for %s, not %s: %w", id, rec.Path, path, errdefs.ErrFailedPrecondition)
	}
	if !filepath.IsAbs(rec.Path) {
		return nil, fmt.Errorf("log path of %s %q is not absolute: %w", id, rec.Path, errdefs.ErrInvalidArgument)
	}
	w.pos = rec
	if err := w.resume(); err != nil {
		return nil, err
	}
	if err := w.persist(); err != nil {
		w.f.Close()
		return nil, err
	}
	if resumed {
		w.log.Info("container log resumed", "path", w.pos.Path, "offset", w.pos.Offset, "size", w.pos.Size, "eof", w.pos.EOF)
	}
	return w, nil
}

// start follows the guest's stream until stop.
func (w *logWriter) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go w.run(ctx)
}

// stop ends the writer, with its position persisted, and waits for it.
func (w *logWriter) stop() {
	if w.cancel == nil {
		if w.f != nil {
			w.f.Close()
		}
		return
	}
	w.cancel()
	<-w.done
}

// reopen makes the writer open its path again (the kubelet renamed the
// file away), once everything before is in the old file.
func (w *logWriter) reopen(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case w.reopenCh <- reply:
	case <-w.done:
		return fmt.Errorf("log writer of %s stopped: %w", w.id, errdefs.ErrNotFound)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *logWriter) run(ctx context.Context) {
	defer close(w.done)
	defer func() {
		if err := w.persist(); err != nil {
			w.log.Warn("persist log position", "error", err)
		}
		w.f.Close()
	}()
	wait := logRetryMin
	for {
		if w.pos.EOF {
			// Complete: only reopens are left to do.
			select {
			case <-ctx.Done():
				return
			case reply := <-w.reopenCh:
				reply <- w.doReopen()
			}
			continue
		}
		progressed, err := w.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			continue // eof
		}
		if progressed {
			wait = logRetryMin
		}
		lvl := slog.LevelDebug
		// A guest image older than ContainerLog answers NotImplemented:
		// said loudly, as a hostile answer is.
		if progressed || errdefs.IsInvalidArgument(err) || errdefs.IsOutOfRange(err) || errdefs.IsNotImplemented(err) {
			lvl = slog.LevelWarn
		}
		w.log.Log(ctx, lvl, "container log stream lost; following again", "offset", w.pos.Offset, "retry_in", wait.String(), "error", err)
		timer := time.NewTimer(wait)
		wait = min(2*wait, logRetryMax)
	waiting:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case reply := <-w.reopenCh:
				reply <- w.doReopen()
			case <-timer.C:
				break waiting
			}
		}
	}
}

type logItem struct {
	r   *podsv0.ContainerLogResponse
	err error
}

// follow reads one stream from the guest until it ends (nil at eof) and
// says whether any chunk came.
func (w *logWriter) follow(ctx context.Context) (progressed bool, _ error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := w.open(sctx, w.id, w.pos.Offset)
	if err != nil {
		return false, err
	}
	items := make(chan logItem)
	go func() {
		for {
			r, err := st.Recv()
			select {
			case items <- logItem{r, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	ticker := time.NewTicker(logPersistEvery)
	defer ticker.Stop()
	// The stream restarts at the last whole line: a partial one is read
	// again.
	next := w.pos.Offset
	var pending []byte
	skipping := false
	w.out, w.outOffset, w.skipped = w.out[:0], 0, 0
	confirm := func() error {
		if err := w.persist(); err != nil {
			return err
		}
		return st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Persisted{Persisted: w.disk.Offset}})
	}
	for {
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case reply := <-w.reopenCh:
			reply <- w.doReopen()
		case <-ticker.C:
			if w.pos != w.disk {
				if err := confirm(); err != nil {
					return progressed, err
				}
			}
		case it := <-items:
			if it.err != nil {
				if errors.Is(it.err, io.EOF) {
					it.err = fmt.Errorf("the guest ended the stream without eof: %w", errdefs.ErrUnavailable)
				}
				return progressed, it.err
			}
			r := it.r
			if r.GetOffset() != next || len(r.GetData()) > maxLogChunk {
				return progressed, fmt.Errorf("the guest sent %d bytes at offset %d, want at most %d at %d: %w",
					len(r.GetData()), r.GetOffset(), maxLogChunk, next, errdefs.ErrInvalidArgument)
			}
			progressed = true
			next += uint64(len(r.GetData()))
			pending, skipping = w.takeLines(append(pending, r.GetData()...), skipping)
			if err := w.flush(); err != nil {
				return progressed, err
			}
			if r.GetEof() {
				if len(pending) > 0 || skipping {
					w.dropped++
					w.log.Warn("container log ends in a partial line; dropped", "bytes", len(pending))
				}
				w.pos.Offset, w.pos.EOF, w.skipped = next, true, 0
				if err := w.persist(); err != nil {
					return progressed, err
				}
				w.log.Info("container log complete", "offset", w.pos.Offset, "size", w.pos.Size, "dropped_lines", w.dropped)
				return progressed, nil
			}
			if w.pos.Offset-w.disk.Offset >= logPersistBytes {
				if err := confirm(); err != nil {
					return progressed, err
				}
			}
		}
	}
}

// takeLines moves the whole lines at the start of buf to the file's
// pending write (w.out), counting each in w.outOffset (a refused line
// too), and returns what is left: the start of a line (at most maxLogLine
// bytes). skipping: the line being read is too long and is dropped up to
// its end.
func (w *logWriter) takeLines(buf []byte, skipping bool) ([]byte, bool) {
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			if len(buf) > maxLogLine {
				// Dropped as it comes; the offset stays at its start
				// until its end, so that a new stream skips it again.
				w.skipped += uint64(len(buf))
				return nil, true
			}
			return append([]byte(nil), buf...), skipping
		}
		line := buf[:i+1]
		buf = buf[i+1:]
		n := uint64(len(line)) + w.skipped
		w.skipped = 0
		if skipping || len(line) > maxLogLine || !criLine(line) {
			if w.dropped == 0 {
				w.log.Warn("the guest sent a line that is not a CRI log line; dropped", "bytes", n)
			}
			w.dropped++
			skipping = false
		} else {
			w.out = append(w.out, line...)
		}
		w.outOffset += n
	}
}

// flush writes the lines taken, in one write; a failed write is cut back
// so that the file ends at the last whole line.
func (w *logWriter) flush() error {
	if len(w.out) == 0 {
		w.pos.Offset += w.outOffset
		w.outOffset = 0
		return nil
	}
	n, err := w.f.Write(w.out)
	if err != nil {
		if terr := w.f.Truncate(w.pos.Size); terr != nil {
			return fmt.Errorf("write log: %w; cut back: %w", err, terr)
		}
		w.out = w.out[:0]
		w.outOffset = 0
		return fmt.Errorf("write log: %w", err)
	}
	w.pos.Size += int64(n)
	w.pos.Offset += w.outOffset
	w.out, w.outOffset = w.out[:0], 0
	return nil
}

// criLine says whether line (with its newline) is a CRI log line:
// "<RFC 3339 time> stdout|stderr P|F[:more tags] <content>\n".
func criLine(line []byte) bool {
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return false
	}
	if _, err := time.Parse(time.RFC3339Nano, string(ts)); err != nil {
		return false
	}
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok || (string(stream) != "stdout" && string(stream) != "stderr") {
		return false
	}
	tags, _, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return false
	}
	tag, _, _ := bytes.Cut(tags, []byte{':'})
	return string(tag) == "P" || string(tag) == "F"
}

// doReopen switches to a new file at the path, once the old one holds
// everything up to the current offset; the old one stays open when the new
// one cannot be made.
func (w *logWriter) doReopen() error {
	f, st, err := openLogFile(w.pos.Path, true)
	if err != nil {
		return fmt.Errorf("reopen log of %s: %w", w.id, err)
	}
	if err := w.persist(); err != nil {
		f.Close()
		return err
	}
	old := w.f
	w.f = f
	w.pos.Size, w.pos.Dev, w.pos.Ino = st.Size, st.Dev, st.Ino
	if err := w.persist(); err != nil {
		w.log.Warn("persist log position after reopen", "error", err)
	}
	old.Close()
	w.log.Info("container log reopened", "path", w.pos.Path, "offset", w.pos.Offset)
	return nil
}
