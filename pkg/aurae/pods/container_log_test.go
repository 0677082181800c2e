package pods

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// TestContainerLogStream: a log_stream container's log is followed from an
// offset to its end (eof once the container exited), what the client
// confirms is punched out of the private file, and the mistakes of a client
// are refused.
func TestContainerLogStream(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := e.streamClient()
	e.allocate(&podsv0.Pod{Id: "logs"})
	c := e.container("c", spec(t, nil, "sh", "-c",
		"i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo last"))
	c.LogPath, c.LogStream = "", true
	e.start("logs", c)

	open := func(off uint64) podsv0.PodService_ContainerLogClient {
		t.Helper()
		st, err := cl.ContainerLog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Start{Start: &podsv0.ContainerLogStart{ContainerId: "c", Offset: off}}}); err != nil {
			t.Fatal(err)
		}
		return st
	}
	// Read until the 2000 lines are in, confirming as we go.
	st := open(0)
	var got []byte
	// conmon cuts lines at its buffer's size (tag P): 2000 full lines end
	// with F.
	for bytes.Count(got, []byte(" stdout F ")) < 2000 {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("recv after %d bytes: %v", len(got), err)
		}
		if r.GetOffset() != uint64(len(got)) || len(r.GetData()) > logChunk {
			t.Fatalf("chunk at %d of %d bytes, want at %d", r.GetOffset(), len(r.GetData()), len(got))
		}
		got = append(got, r.GetData()...)
	}
	if err := st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Persisted{Persisted: uint64(len(got))}}); err != nil {
		t.Fatal(err)
	}
	// The confirmed part leaves the file (tmpfs and ext4 punch holes).
	path := e.svc.streamLogPath("c")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var s unix.Stat_t
		if err := unix.Stat(path, &s); err != nil {
			t.Fatal(err)
		}
		if s.Blocks*512 < s.Size/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log file %d bytes, %d blocks of 512: nothing punched", s.Size, s.Blocks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A confirmation past what was sent ends the stream.
	if err := st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Persisted{Persisted: 1 << 40}}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := st.Recv(); err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("confirm past the end: %v, want InvalidArgument", err)
			}
			break
		}
	}
	// Dropped offsets cannot be asked for again; offsets past the end neither.
	for _, off := range []uint64{0, 1 << 40} {
		st := open(off)
		if _, err := st.Recv(); status.Code(err) != codes.OutOfRange {
			t.Errorf("start at %d: %v, want OutOfRange", off, err)
		}
	}
	if _, err := e.svc.ReopenContainerLog(ctx, &podsv0.ReopenContainerLogRequest{ContainerId: "c"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("reopen of a streamed log: %v, want FailedPrecondition", err)
	}
	// From where the reader was: the rest and eof.
	st = open(uint64(len(got)))
	e.mustExec("c", "sh", "-c", ": > /tmp/go")
	var rest []byte
	for {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		rest = append(rest, r.GetData()...)
		if r.GetEof() {
			break
		}
	}
	if !strings.HasSuffix(string(rest), " stdout F last\n") || strings.Count(string(rest), "\n") != 1 {
		t.Errorf("rest of the log %q, want the one line last", rest)
	}
	var full string
	for i, l := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
		f := strings.SplitN(l, " ", 4)
		if len(f) != 4 || f[1] != "stdout" || (f[2] != "F" && f[2] != "P") {
			t.Fatalf("line %d %q is not a CRI line", i, l)
		}
		full += f[3]
		if f[2] == "F" {
			full += "\n"
		}
	}
	if n := strings.Count(full, "\n"); n != 2000 || !strings.HasPrefix(full, "line-0-") || !strings.HasSuffix(full, "line-1999-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n") {
		t.Errorf("the log has %d lines from %.20q to ...%q", n, full, full[max(0, len(full)-60):])
	}

	// Not for containers without log_stream, nor with both.
	e.start("logs", e.container("plain", spec(t, nil, "true")))
	st, err := cl.ContainerLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&podsv0.ContainerLogRequest{Request: &podsv0.ContainerLogRequest_Start{Start: &podsv0.ContainerLogStart{ContainerId: "plain"}}})
	if _, err := st.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("log of a container without log_stream: %v, want FailedPrecondition", err)
	}
	both := e.container("both", spec(t, nil, "true"))
	both.LogStream = true
	if _, err := e.svc.Start(ctx, &podsv0.StartRequest{PodId: "logs", Container: e.forPod("logs", both)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("log_path with log_stream: %v, want InvalidArgument", err)
	}
}
