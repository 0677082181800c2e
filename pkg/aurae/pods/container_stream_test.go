package pods

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// streamClient serves e's service on a unix socket of its own: the
// streaming RPCs need a real gRPC stream.
func (e *env) streamClient() podsv0.PodServiceClient {
	e.t.Helper()
	sock := filepath.Join(e.t.TempDir(), "p.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		e.t.Fatal(err)
	}
	srv := grpc.NewServer()
	podsv0.RegisterPodServiceServer(srv, e.svc)
	go func() { _ = srv.Serve(lis) }()
	e.t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return podsv0.NewPodServiceClient(conn)
}

type execResult struct {
	stdout, stderr string
	code           int32
	exited         bool
}

func recvExec(t *testing.T, st grpc.BidiStreamingClient[podsv0.ExecRequest, podsv0.ExecResponse]) (execResult, error) {
	t.Helper()
	var r execResult
	for {
		m, err := st.Recv()
		if err != nil {
			return r, err
		}
		switch {
		case m.GetExit() != nil:
			r.code, r.exited = m.GetExit().GetExitCode(), true
			return r, nil
		default:
			r.stdout += string(m.GetStdout())
			r.stderr += string(m.GetStderr())
		}
	}
}

func TestExecStream(t *testing.T) {
	e := newEnv(t)
	cl := e.streamClient()
	e.allocate(&podsv0.Pod{Id: "stream"})
	e.start("stream", e.container("sleeper", spec(t, nil, "sleep", "1000")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("pipes", func(t *testing.T) {
		st, err := cl.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{
			ContainerId: "sleeper", Argv: []string{"sh", "-c", "read x; echo got $x; echo err >&2; exit 3"}, Stdin: true,
		}}}))
		must(st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Stdin{Stdin: []byte("hello\n")}}))
		must(st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_CloseStdin{CloseStdin: true}}))
		r, err := recvExec(t, st)
		if err != nil {
			t.Fatal(err)
		}
		if r.stdout != "got hello\n" || r.stderr != "err\n" || r.code != 3 {
			t.Errorf("exec: %+v", r)
		}
	})
	t.Run("tty", func(t *testing.T) {
		st, err := cl.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{
			ContainerId: "sleeper", Argv: []string{"sh", "-c", "tty; stty size"}, Tty: true,
			Size: &podsv0.TerminalSize{Width: 100, Height: 30},
		}}}); err != nil {
			t.Fatal(err)
		}
		r, err := recvExec(t, st)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(r.stdout, "/dev/pts/") || !strings.Contains(r.stdout, "30 100") || r.code != 0 {
			t.Errorf("exec with a tty: %+v", r)
		}
	})
	t.Run("tty resized", func(t *testing.T) {
		st, err := cl.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []*podsv0.ExecRequest{
			{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{
				ContainerId: "sleeper", Argv: []string{"sh", "-c", "read x; stty size"}, Tty: true, Stdin: true,
				Size: &podsv0.TerminalSize{Width: 80, Height: 24},
			}}},
			{Request: &podsv0.ExecRequest_Resize{Resize: &podsv0.TerminalSize{Width: 50, Height: 20}}},
			{Request: &podsv0.ExecRequest_Stdin{Stdin: []byte("go\r")}},
		} {
			if err := st.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		r, err := recvExec(t, st)
		if err != nil {
			t.Fatal(err)
		}
		// The terminal echoes the input, then stty prints the new size.
		if !strings.HasSuffix(strings.TrimSpace(r.stdout), "20 50") || r.code != 0 {
			t.Errorf("exec with a resized tty: %+v", r)
		}
	})
	t.Run("tty exit codes", func(t *testing.T) {
		for _, tc := range []struct {
			argv []string
			code int32
			out  string
		}{
			{[]string{"sh", "-c", "exit 7"}, 7, ""},
			{[]string{"sh", "-c", "kill -9 $$"}, 137, ""},
			{[]string{"no-such-command"}, 255, "no-such-command"},
		} {
			st, err := cl.Exec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{ContainerId: "sleeper", Argv: tc.argv, Tty: true}}}); err != nil {
				t.Fatal(err)
			}
			r, err := recvExec(t, st)
			if err != nil || r.code != tc.code || !strings.Contains(r.stdout, tc.out) {
				t.Errorf("%q: %+v %v, want exit code %d", tc.argv, r, err, tc.code)
			}
		}
	})
	t.Run("cancel kills", func(t *testing.T) {
		for _, tty := range []bool{false, true} {
			cctx, ccancel := context.WithCancel(ctx)
			st, err := cl.Exec(cctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{ContainerId: "sleeper", Argv: []string{"sh", "-c", "echo up; exec sleep 777"}, Tty: tty}}}); err != nil {
				t.Fatal(err)
			}
			if m, err := st.Recv(); err != nil || !strings.Contains(string(m.GetStdout()), "up") {
				t.Fatalf("tty %v: %v %v", tty, m, err)
			}
			ccancel()
			deadline := time.Now().Add(10 * time.Second)
			for {
				procs := cgroupCmdlines(t, e.status("sleeper").GetCgroupPath())
				if !strings.Contains(strings.Join(procs, "\n"), "sleep 777") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("tty %v: the exec outlived its call: %q", tty, procs)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	t.Run("unknown container", func(t *testing.T) {
		st, err := cl.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&podsv0.ExecRequest{Request: &podsv0.ExecRequest_Start{Start: &podsv0.ExecStart{ContainerId: "nope", Argv: []string{"true"}}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := recvExec(t, st); status.Code(err) != codes.NotFound {
			t.Errorf("exec in an unknown container: %v, want NotFound", err)
		}
	})
}

func TestAttachStream(t *testing.T) {
	e := newEnv(t)
	cl := e.streamClient()
	e.allocate(&podsv0.Pod{Id: "attach"})
	e.start("attach", e.container("ticker", spec(t, nil, "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; echo tock $i >&2; sleep 0.1; done")))
	cat := e.container("cat", spec(t, nil, "sh", "-c", "while read l; do echo echo $l; done"))
	cat.Stdin = true
	e.start("attach", cat)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	st, err := cl.Attach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Start{Start: &podsv0.AttachStart{ContainerId: "ticker", Stdout: true, Stderr: true}}}); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr string
	for !strings.Contains(stdout, "\n") || !strings.Contains(stderr, "\n") {
		m, err := st.Recv()
		if err != nil {
			t.Fatalf("attach: %v (stdout %q, stderr %q)", err, stdout, stderr)
		}
		stdout += string(m.GetStdout())
		stderr += string(m.GetStderr())
	}
	if !strings.HasPrefix(stdout, "tick ") || !strings.HasPrefix(stderr, "tock ") {
		t.Errorf("attach: stdout %q, stderr %q", stdout, stderr)
	}

	// stdin reaches a container created with stdin.
	st2, err := cl.Attach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st2.Send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Start{Start: &podsv0.AttachStart{ContainerId: "cat", Stdin: true, Stdout: true}}}); err != nil {
		t.Fatal(err)
	}
	// conmon may not have registered the connection yet: resend until echoed.
	got := ""
	recvd := make(chan string)
	go func() {
		for {
			m, err := st2.Recv()
			if err != nil {
				close(recvd)
				return
			}
			recvd <- string(m.GetStdout())
		}
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(got, "echo ping") {
		select {
		case s, ok := <-recvd:
			if !ok {
				t.Fatalf("attach with stdin ended; got %q", got)
			}
			got += s
		case <-tick.C:
			if err := st2.Send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Stdin{Stdin: []byte("ping\n")}}); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("no echo through attach: %q", got)
		}
	}

	// The session ends when the container exits.
	e.start("attach", e.container("brief", spec(t, nil, "sh", "-c", "sleep 1; echo bye")))
	st3, err := cl.Attach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st3.Send(&podsv0.AttachRequest{Request: &podsv0.AttachRequest_Start{Start: &podsv0.AttachStart{ContainerId: "brief", Stdout: true}}}); err != nil {
		t.Fatal(err)
	}
	out := ""
	for {
		m, err := st3.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("attach to an exiting container: %v (got %q)", err, out)
		}
		out += string(m.GetStdout())
	}
	if out != "bye\n" {
		t.Errorf("attach to an exiting container: %q, want bye", out)
	}
	cancel()
}
