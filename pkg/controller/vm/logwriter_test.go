package vm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// fakeGuestLog is a guest's log of one container as ContainerLog serves
// it: chunks of chunk bytes from the offset asked for, then, once complete,
// eof; bad, when set, replaces what is sent (a hostile guest).
type fakeGuestLog struct {
	mu        sync.Mutex
	data      []byte
	complete  bool
	chunk     int
	grew      chan struct{}
	opens     []uint64
	persisted []uint64
	bad       func(off uint64) *podsv0.ContainerLogResponse
}

func newFakeGuestLog(chunk int) *fakeGuestLog {
	return &fakeGuestLog{chunk: chunk, grew: make(chan struct{})}
}

func (g *fakeGuestLog) write(s string, complete bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.data = append(g.data, s...)
	g.complete = g.complete || complete
	close(g.grew)
	g.grew = make(chan struct{})
}

func (g *fakeGuestLog) open(ctx context.Context, _ string, off uint64) (logStream, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.opens = append(g.opens, off)
	if off > uint64(len(g.data)) {
		return nil, fmt.Errorf("offset %d past the end", off)
	}
	return &fakeLogStream{g: g, ctx: ctx, off: off}, nil
}

func (g *fakeGuestLog) lastPersisted() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.persisted) == 0 {
		return 0
	}
	return g.persisted[len(g.persisted)-1]
}

type fakeLogStream struct {
	g   *fakeGuestLog
	ctx context.Context
	off uint64
	eof bool
}

func (s *fakeLogStream) Recv() (*podsv0.ContainerLogResponse, error) {
	for {
		g := s.g
		g.mu.Lock()
		if g.bad != nil {
			r := g.bad(s.off)
			g.mu.Unlock()
			if r == nil {
				return nil, io.EOF
			}
			s.off += uint64(len(r.GetData()))
			return r, nil
		}
		if s.eof {
			g.mu.Unlock()
			<-s.ctx.Done()
			return nil, s.ctx.Err()
		}
		if n := min(uint64(g.chunk), uint64(len(g.data))-s.off); n > 0 {
			r := &podsv0.ContainerLogResponse{Offset: s.off, Data: append([]byte(nil), g.data[s.off:s.off+n]...)}
			s.off += n
			g.mu.Unlock()
			return r, nil
		}
		if g.complete {
			s.eof = true
			g.mu.Unlock()
			return &podsv0.ContainerLogResponse{Offset: s.off, Eof: true}, nil
		}
		grew := g.grew
		g.mu.Unlock()
		select {
		case <-grew:
		case <-s.ctx.Done():
			return nil, s.ctx.Err()
		}
	}
}

func (s *fakeLogStream) Send(r *podsv0.ContainerLogRequest) error {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	p := r.GetPersisted()
	if p > s.off {
		return fmt.Errorf("persisted %d past what was sent (%d)", p, s.off)
	}
	s.g.persisted = append(s.g.persisted, p)
	return nil
}

func criLines(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "2026-01-02T03:04:05.%09d+00:00 stdout F line %d\n", i, i)
	}
	return b.String()
}

type logFixture struct {
	t       *testing.T
	dir     string
	path    string
	recPath string
	g       *fakeGuestLog
}

func newLogFixture(t *testing.T, chunk int) *logFixture {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	if err := os.Mkdir(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &logFixture{t: t, dir: dir, path: filepath.Join(logDir, "0.log"), recPath: filepath.Join(dir, "c.json"), g: newFakeGuestLog(chunk)}
}

func (x *logFixture) start() *logWriter {
	x.t.Helper()
	w, err := newLogWriter("c", x.path, x.recPath, x.g.open, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		x.t.Fatal(err)
	}
	w.start()
	x.t.Cleanup(w.stop)
	return w
}

// waitFile waits (no deadline of its own: the test's) for the file at p to
// hold want.
func waitFile(t *testing.T, p, want string) {
	t.Helper()
	for i := 0; ; i++ {
		b, _ := os.ReadFile(p)
		if string(b) == want {
			return
		}
		if i%500 == 499 {
			t.Logf("still waiting: %s has %d bytes, want %d", p, len(b), len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPos(t *testing.T, p string) logPos {
	t.Helper()
	var pos logPos
	if err := readJSON(p, &pos); err != nil {
		t.Fatal(err)
	}
	return pos
}

// TestLogWriterPartialLines: chunks that cut lines anywhere make whole
// lines in the file, in order, each once; the record ends at the guest's
// eof and the guest is told what was persisted, never more.
func TestLogWriterPartialLines(t *testing.T) {
	x := newLogFixture(t, 7)
	want := criLines(0, 50)
	x.g.write(want[:100], false)
	w := x.start()
	// The first line is whole, the second is not: only the first is in.
	waitFile(t, x.path, want[:strings.Index(want, "\n")+1])
	x.g.write(want[100:], true)
	waitFile(t, x.path, want)
	w.stop()
	pos := readPos(t, x.recPath)
	if !pos.EOF || pos.Offset != uint64(len(want)) || pos.Size != int64(len(want)) {
		t.Errorf("record %+v, want eof at %d", pos, len(want))
	}
	if p := x.g.lastPersisted(); p > uint64(len(want)) {
		t.Errorf("persisted %d past the log", p)
	}
}

// TestLogWriterResume: a writer killed after writing lines it had not yet
// recorded (its record older than its file) resumes with no line lost or
// written twice; a stopped one resumes where it stopped.
func TestLogWriterResume(t *testing.T) {
	x := newLogFixture(t, 64)
	x.g.write(criLines(0, 10), false)
	w := x.start()
	waitFile(t, x.path, criLines(0, 10))
	w.stop()
	old, err := os.ReadFile(x.recPath)
	if err != nil {
		t.Fatal(err)
	}
	x.g.write(criLines(10, 20), false)
	w = x.start()
	waitFile(t, x.path, criLines(0, 20))
	w.stop()
	if opens := x.g.opens; opens[len(opens)-1] != uint64(len(criLines(0, 10))) {
		t.Errorf("the second writer followed from %d, want %d", opens[len(opens)-1], len(criLines(0, 10)))
	}
	// As if killed before recording lines 10..19: the file has them, the
	// record does not. A torn last line too.
	if err := os.WriteFile(x.recPath, old, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(x.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("2026-01-02T03:04:05.000000000+00:00 stdout F torn")
	f.Close()
	x.g.write(criLines(20, 30), true)
	w = x.start()
	waitFile(t, x.path, criLines(0, 30))
	w.stop()
	if pos := readPos(t, x.recPath); !pos.EOF || pos.Size != int64(len(criLines(0, 30))) {
		t.Errorf("record %+v", pos)
	}
}

// TestLogWriterReopen: after the kubelet renames the file, reopen makes a
// new one at the path and the lines after it go there; a writer that
// resumes while a rotation is cut short (path renamed, reopen not done)
// goes on in the renamed file, as the kubelet renames it back.
func TestLogWriterReopen(t *testing.T) {
	x := newLogFixture(t, 1000)
	x.g.write(criLines(0, 5), false)
	w := x.start()
	waitFile(t, x.path, criLines(0, 5))
	rotated := x.path + ".20260102-030405"
	if err := os.Rename(x.path, rotated); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.reopen(ctx); err != nil {
		t.Fatal(err)
	}
	x.g.write(criLines(5, 8), false)
	waitFile(t, x.path, criLines(5, 8))
	waitFile(t, rotated, criLines(0, 5))

	// Rotated again, and killed before the reopen.
	w.stop()
	rotated2 := x.path + ".20260102-030406"
	if err := os.Rename(x.path, rotated2); err != nil {
		t.Fatal(err)
	}
	x.g.write(criLines(8, 10), false)
	w = x.start()
	waitFile(t, rotated2, criLines(5, 10))
	if _, err := os.Stat(x.path); err == nil {
		t.Errorf("resume made a new file at the path: the kubelet's rename back would replace it")
	}
	// The kubelet's reopen failed (we were down): it renames back.
	if err := os.Rename(rotated2, x.path); err != nil {
		t.Fatal(err)
	}
	x.g.write(criLines(10, 12), true)
	waitFile(t, x.path, criLines(5, 12))
	// A complete log is reopened too (an empty new file).
	if err := os.Rename(x.path, rotated2); err != nil {
		t.Fatal(err)
	}
	if err := w.reopen(ctx); err != nil {
		t.Fatalf("reopen after eof: %v", err)
	}
	waitFile(t, x.path, "")
	waitFile(t, rotated2, criLines(5, 12))
}

// TestLogWriterHostileGuest: what a guest sends is checked: a line that is
// not CRI or is too long is dropped, a chunk at the wrong offset or too big
// ends the stream (followed again from the last whole line), and the host
// file is never a symlink or a fifo planted at the path.
func TestLogWriterHostileGuest(t *testing.T) {
	t.Run("lines", func(t *testing.T) {
		x := newLogFixture(t, 4096)
		long := "2026-01-02T03:04:05.000000000+00:00 stdout F " + strings.Repeat("x", maxLogLine+10) + "\n"
		x.g.write(criLines(0, 2)+"not a log line\n"+"2026-01-02T03:04:05Z stdin F x\n"+long+"../../etc/passwd\x00\n"+criLines(2, 4), true)
		x.start()
		waitFile(t, x.path, criLines(0, 4))
	})
	t.Run("offsets", func(t *testing.T) {
		x := newLogFixture(t, 64)
		var calls int
		x.g.bad = func(off uint64) *podsv0.ContainerLogResponse {
			calls++
			switch calls {
			case 1:
				return &podsv0.ContainerLogResponse{Offset: off + 5, Data: []byte(criLines(0, 1))}
			case 2:
				return &podsv0.ContainerLogResponse{Offset: off, Data: make([]byte, maxLogChunk+1)}
			case 3:
				return &podsv0.ContainerLogResponse{Offset: 1 << 63, Data: []byte("x")}
			}
			return nil
		}
		x.g.data = []byte(criLines(0, 3))
		x.start()
		for {
			x.g.mu.Lock()
			if len(x.g.opens) >= 4 {
				x.g.bad = nil
				x.g.complete = true
				x.g.mu.Unlock()
				break
			}
			x.g.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
		waitFile(t, x.path, criLines(0, 3))
		for _, o := range x.g.opens {
			if o != 0 {
				t.Errorf("followed again from %d, want 0 (no whole line was taken)", o)
			}
		}
	})
	t.Run("symlink", func(t *testing.T) {
		x := newLogFixture(t, 64)
		target := filepath.Join(x.dir, "target")
		if err := os.WriteFile(target, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, x.path); err != nil {
			t.Fatal(err)
		}
		if _, err := newLogWriter("c", x.path, x.recPath, x.g.open, slog.Default()); err == nil {
			t.Fatal("a writer opened a symlink")
		}
	})
	t.Run("fifo", func(t *testing.T) {
		x := newLogFixture(t, 64)
		if err := unix.Mkfifo(x.path, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := newLogWriter("c", x.path, x.recPath, x.g.open, slog.Default()); err == nil {
			t.Fatal("a writer opened a fifo")
		}
	})
}
