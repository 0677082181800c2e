package observe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

const (
	stdout = observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT
	stderr = observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR
)

var cell = Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: "c1"}

// serve starts the ObserveService on an in-memory listener and returns a
// client for it; everything stops at the end of the test.
func serve(t *testing.T, h *Hub, logs *LogBroadcaster) observev0.ObserveServiceClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	observev0.RegisterObserveServiceServer(srv, NewService(h, logs))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return observev0.NewObserveServiceClient(conn)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the test's patience runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// attachPipes attaches pid with two io.Pipes and returns their write ends.
func attachPipes(h *Hub, pid int, w Workload) (out, errw *io.PipeWriter) {
	or, ow := io.Pipe()
	er, ew := io.Pipe()
	h.Attach(pid, w, "test", or, er)
	return ow, ew
}

// recvAll reads a stream to its end and returns the lines and the end error
// (nil for a stream that ended OK).
func recvAll(stream grpc.ServerStreamingClient[observev0.LogItem]) ([]*observev0.LogItem, error) {
	var items []*observev0.LogItem
	for {
		it, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return items, nil
		}
		if err != nil {
			return items, err
		}
		items = append(items, it)
	}
}

func writeLines(t *testing.T, w io.Writer, from, to int) {
	t.Helper()
	var b bytes.Buffer
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		t.Errorf("write: %v", err)
	}
}

func checkLines(t *testing.T, items []*observev0.LogItem, channel string, from, to int) {
	t.Helper()
	if len(items) != to-from {
		t.Fatalf("got %d lines, want %d", len(items), to-from)
	}
	var last int64
	for i, it := range items {
		if want := fmt.Sprintf("line %d", from+i); it.GetLine() != want {
			t.Fatalf("line %d = %q, want %q", i, it.GetLine(), want)
		}
		if it.GetChannel() != channel {
			t.Fatalf("channel = %q, want %q", it.GetChannel(), channel)
		}
		if it.GetTimestamp() < last || it.GetTimestamp() == 0 {
			t.Fatalf("timestamp %d after %d", it.GetTimestamp(), last)
		}
		last = it.GetTimestamp()
	}
}

func TestSubProcessStreamSubscribedBeforeWriting(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	ow, ew := attachPipes(h, 100, cell)
	stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 100})
	if err != nil {
		t.Fatal(err)
	}
	// The first line comes back only once the subscriber is live; the
	// other 9,999 are written after that.
	writeLines(t, ow, 0, 1)
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		writeLines(t, ow, 1, 10000)
		_ = ow.Close()
		_ = ew.Close()
	}()
	rest, err := recvAll(stream)
	if err != nil {
		t.Fatalf("stream ended with %v, want OK", err)
	}
	checkLines(t, append([]*observev0.LogItem{first}, rest...), "stdout", 0, 10000)
}

func TestSubProcessStreamSubscribedAfterExit(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	ow, ew := attachPipes(h, 101, cell)
	writeLines(t, ew, 0, 10000)
	_ = ew.Close()
	_ = ow.Close()
	waitFor(t, "process to finish", func() bool { return finished(h, 101) })
	for _, ch := range []observev0.LogChannelType{stderr, stdout} {
		stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: ch, ProcessId: 101})
		if err != nil {
			t.Fatal(err)
		}
		items, err := recvAll(stream)
		if err != nil {
			t.Fatalf("%v stream ended with %v, want OK", ch, err)
		}
		if ch == stderr {
			checkLines(t, items, "stderr", 0, 10000)
		} else if len(items) != 0 {
			t.Fatalf("stdout has %d lines, want none", len(items))
		}
	}
}

func TestSubProcessStreamConcurrentSubscribers(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	ow, ew := attachPipes(h, 102, cell)
	_ = ew.Close()
	var wg sync.WaitGroup
	results := make([][]*observev0.LogItem, 5)
	errs := make([]error, 5)
	for i := range results {
		wg.Go(func() {
			stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 102})
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = recvAll(stream)
		})
	}
	for i := 0; i < 5000; i += 500 {
		writeLines(t, ow, i, i+500)
	}
	_ = ow.Close()
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("subscriber %d: %v", i, errs[i])
		}
		checkLines(t, results[i], "stdout", 0, 5000)
	}
}

func TestSubProcessStreamAfterOverflowGetsNewestLines(t *testing.T) {
	h := NewHub(HubConfig{RingLines: 100})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	ow, ew := attachPipes(h, 103, cell)
	_ = ew.Close()
	// With no subscriber, 100,000 lines must not block the writer.
	writeLines(t, ow, 0, 100000)
	_ = ow.Close()
	waitFor(t, "process to finish", func() bool { return finished(h, 103) })
	stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 103})
	if err != nil {
		t.Fatal(err)
	}
	items, err := recvAll(stream)
	if err != nil {
		t.Fatal(err)
	}
	checkLines(t, items, "stdout", 99900, 100000)
}

func TestSubProcessStreamPartialLinesAndBadUTF8(t *testing.T) {
	h := NewHub(HubConfig{RingBytes: 1 << 20})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	long := strings.Repeat("x", maxLineBytes+10)
	in := "a\n\nb\xffc\n" + long + "\ntail without newline"
	h.Attach(104, cell, "test", strings.NewReader(in), nil)
	waitFor(t, "process to finish", func() bool { return finished(h, 104) })
	stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 104})
	if err != nil {
		t.Fatal(err)
	}
	items, err := recvAll(stream)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.GetLine())
	}
	want := []string{"a", "", "b\uFFFDc", long[:maxLineBytes], long[maxLineBytes:], "tail without newline"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("lines = %.200q, want %.200q", got, want)
	}
}

func TestSubProcessStreamErrors(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	for _, tc := range []struct {
		req  *observev0.GetSubProcessStreamRequest
		code codes.Code
	}{
		{&observev0.GetSubProcessStreamRequest{ProcessId: 1}, codes.InvalidArgument},
		{&observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 0}, codes.InvalidArgument},
		{&observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: -5}, codes.InvalidArgument},
		{&observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 4242}, codes.NotFound},
	} {
		stream, err := c.GetSubProcessStream(ctx, tc.req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != tc.code {
			t.Errorf("%v: got %v, want %v", tc.req, err, tc.code)
		}
	}
}

func TestSubProcessStreamEndsWithClientContext(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ow, ew := attachPipes(h, 105, cell)
	defer func() { _ = ow.Close(); _ = ew.Close() }()
	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := c.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 105})
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, ow, 0, 1)
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := recvAll(stream); status.Code(err) != codes.Canceled {
		t.Fatalf("got %v, want Canceled", err)
	}
}

func TestKeepExitedAndForget(t *testing.T) {
	h := NewHub(HubConfig{KeepExited: 2})
	other := Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: "c2"}
	for pid := 1; pid <= 3; pid++ {
		h.Attach(pid, cell, "test", strings.NewReader("x\n"), nil)
		waitFor(t, "process to finish", func() bool { return finished(h, pid) })
	}
	if h.lookup(1) != nil || h.lookup(2) == nil || h.lookup(3) == nil {
		t.Fatalf("after 3 exits with KeepExited 2: 1 kept=%v 2 kept=%v 3 kept=%v",
			h.lookup(1) != nil, h.lookup(2) != nil, h.lookup(3) != nil)
	}
	ow, ew := attachPipes(h, 4, other)
	defer func() { _ = ow.Close(); _ = ew.Close() }()
	h.Forget(cell)
	if h.lookup(2) != nil || h.lookup(3) != nil {
		t.Fatal("Forget kept processes of the forgotten cell")
	}
	if h.lookup(4) == nil {
		t.Fatal("Forget dropped a process of another cell")
	}
}

func TestPidReuseReplacesProcess(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	h.Attach(7, cell, "old", strings.NewReader("old\n"), nil)
	waitFor(t, "old process to finish", func() bool { return finished(h, 7) })
	h.Attach(7, cell, "new", strings.NewReader("new\n"), nil)
	stream, err := c.GetSubProcessStream(testCtx(t), &observev0.GetSubProcessStreamRequest{ChannelType: stdout, ProcessId: 7})
	if err != nil {
		t.Fatal(err)
	}
	items, err := recvAll(stream)
	if err != nil || len(items) != 1 || items[0].GetLine() != "new" {
		t.Fatalf("got %v, %v; want the new process's one line", items, err)
	}
}

func TestPosixSignalsStreamFilters(t *testing.T) {
	h := NewHub(HubConfig{})
	c := serve(t, h, nil)
	ctx := testCtx(t)
	c2 := Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: "c2"}
	pod := Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_POD, ID: "c1"}

	h.PublishSignal(SignalEvent{Pid: 1, Signal: syscall.SIGKILL, Workload: cell}) // before any subscriber

	open := func(ref *observev0.WorkloadReference) grpc.ServerStreamingClient[observev0.GetPosixSignalsStreamResponse] {
		t.Helper()
		n := h.signalSubscribers()
		s, err := c.GetPosixSignalsStream(ctx, &observev0.GetPosixSignalsStreamRequest{Workload: ref})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "subscription", func() bool { return h.signalSubscribers() == n+1 })
		return s
	}
	all := open(nil)
	allUnspecified := open(&observev0.WorkloadReference{})
	onlyC1 := open(&observev0.WorkloadReference{WorkloadType: observev0.WorkloadType_WORKLOAD_TYPE_CELL, Id: "c1"})
	anyCell := open(&observev0.WorkloadReference{WorkloadType: observev0.WorkloadType_WORKLOAD_TYPE_CELL})

	at := time.Unix(1700000000, 5)
	h.PublishSignal(SignalEvent{Pid: 10, Signal: syscall.SIGTERM, Workload: cell, Executable: "sleep", Time: at})
	h.PublishSignal(SignalEvent{Pid: 11, Signal: syscall.SIGSTOP, Stopped: true, Workload: c2})
	h.PublishSignal(SignalEvent{Pid: 12, Signal: syscall.SIGKILL, Workload: pod})
	h.PublishSignal(SignalEvent{Pid: 13, Signal: syscall.SIGINT, Workload: cell})

	expect := func(name string, s grpc.ServerStreamingClient[observev0.GetPosixSignalsStreamResponse], pids ...int64) {
		t.Helper()
		for _, pid := range pids {
			r, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if r.GetSignal().GetProcessId() != pid {
				t.Fatalf("%s: got pid %d, want %d", name, r.GetSignal().GetProcessId(), pid)
			}
		}
	}
	expect("all", all, 10, 11, 12, 13)
	expect("unspecified", allUnspecified, 10, 11, 12, 13)
	expect("c1", onlyC1, 10, 13)
	expect("any cell", anyCell, 10, 11, 13)

	h.PublishSignal(SignalEvent{Pid: 20, Signal: syscall.SIGTERM, Workload: cell, Executable: "sleep", Time: at})
	r, err := onlyC1.Recv()
	if err != nil {
		t.Fatal(err)
	}
	sig := r.GetSignal()
	if sig.GetSignal() != int32(syscall.SIGTERM) || sig.GetExecutableName() != "sleep" || sig.GetTimestamp() != at.UnixNano() ||
		sig.GetWorkload().GetId() != "c1" || sig.GetWorkload().GetWorkloadType() != observev0.WorkloadType_WORKLOAD_TYPE_CELL || sig.GetStopped() {
		t.Fatalf("signal = %v", sig)
	}
}

func TestPosixSignalsSlowSubscriberNeverBlocksPublisher(t *testing.T) {
	h := NewHub(HubConfig{})
	_, unsubscribe := h.subscribeSignals(true, Workload{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range signalBuffer * 4 {
			h.PublishSignal(SignalEvent{Pid: i + 1, Signal: syscall.SIGTERM})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("PublishSignal blocked on a subscriber that does not read")
	}
	if lost := unsubscribe(); lost != signalBuffer*3 {
		t.Fatalf("lost = %d, want %d", lost, signalBuffer*3)
	}
}

func TestDaemonLogStream(t *testing.T) {
	var out bytes.Buffer
	var outMu sync.Mutex
	b := NewLogBroadcaster(slog.NewJSONHandler(lockedWriter{&out, &outMu}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	log := slog.New(b).With("component", "test")
	h := NewHub(HubConfig{})
	c := serve(t, h, b)
	ctx := testCtx(t)

	log.Info("before subscribing")
	stream, err := c.GetAuraeDaemonLogStream(ctx, &observev0.GetAuraeDaemonLogStreamRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "subscription", func() bool { return b.subs.count.Load() == 1 })
	log.Debug("below the level")
	log.WithGroup("g").Info("hello", "n", 42)

	it, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if it.GetChannel() != "auraed" || it.GetTimestamp() == 0 {
		t.Fatalf("item = %v", it)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(it.GetLine()), &rec); err != nil {
		t.Fatalf("line %q is not JSON: %v", it.GetLine(), err)
	}
	g, _ := rec["g"].(map[string]any)
	if rec["msg"] != "hello" || rec["level"] != "INFO" || rec["component"] != "test" || g["n"] != float64(42) {
		t.Fatalf("record = %v", rec)
	}
	outMu.Lock()
	defer outMu.Unlock()
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("wrapped handler got %d records, want 2:\n%s", n, out.String())
	}
}

func TestDaemonLogSlowSubscriberNeverBlocksLogging(t *testing.T) {
	b := NewLogBroadcaster(slog.NewJSONHandler(io.Discard, nil))
	_, unsubscribe := b.subscribe()
	log := slog.New(b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range logBuffer * 2 {
			log.Info("record", "i", i)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("logging blocked on a subscriber that does not read")
	}
	if lost := unsubscribe(); lost != logBuffer {
		t.Fatalf("lost = %d, want %d", lost, logBuffer)
	}
}

func TestDaemonLogStreamWithoutBroadcaster(t *testing.T) {
	c := serve(t, NewHub(HubConfig{}), nil)
	stream, err := c.GetAuraeDaemonLogStream(testCtx(t), &observev0.GetAuraeDaemonLogStreamRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// finished reports whether both streams of pid hit EOF.
func finished(h *Hub, pid int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.procs[pid]
	return p != nil && p.open == 0
}
