package pods

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// A tty exec is `runc exec --detach --tty --console-socket`: runc makes the
// terminal in the container and sends its master over the console socket
// (SCM_RIGHTS), and auraed streams it. A detached command is reparented
// when runc exits, so runc is run by a small shim, this binary re-executed
// with ExecShimEnv set, that is a child subreaper: it reaps the command and
// exits with its status, which auraed gets as the shim's.
const (
	// ExecShimEnv selects the tty exec shim role (see pkg/aurae/roles) and
	// names the OCI runtime to run. The name is a contract between an
	// auraed and the shims it started: keep it.
	ExecShimEnv        = "_AURAE_EXEC_SHIM"
	envExecShimPidFile = "_AURAE_EXEC_SHIM_PIDFILE" // where runc writes the command's pid
	// consoleTimeout bounds the wait for runc to send the terminal.
	consoleTimeout = 30 * time.Second
	// shimRuntimeError is the exit status when runc itself failed (as
	// runc exec reports it); runc's message is in the output.
	shimRuntimeError = 255
)

// RunExecShim is the tty exec shim role: the life of this binary when
// execTTY started it (with ExecShimEnv set) to run `runc exec --detach
// --tty`, its arguments being the runtime's. It exits with the command's
// exit status (128+signal), or 255 when the runtime failed; it never
// returns. Only roles.Run calls it.
func RunExecShim() {
	os.Exit(runExecShim(os.Getenv(ExecShimEnv), os.Getenv(envExecShimPidFile), os.Args[1:]))
}

// runExecShim runs the runtime with args and, once it exited, waits for the
// command whose pid it wrote, and returns its exit status (128+signal).
func runExecShim(runtime, pidFile string, args []string) int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "exec shim: subreaper: %v\r\n", err)
		return shimRuntimeError
	}
	cmd := exec.Command(runtime, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, ExecShimEnv) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Run(); err != nil {
		return shimRuntimeError
	}
	pid, err := readPidFile(pidFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "exec shim: %v\r\n", err)
		return shimRuntimeError
	}
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "exec shim: wait for %d: %v\r\n", pid, err)
			return shimRuntimeError
		}
		if wpid != pid {
			continue // an orphan of the command's: reaped
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

// execTTY runs a command on a terminal in the container (see above). The
// terminal has its initial size from the process spec; resizes are ioctls
// on the master, stdin is written to it, and its close is ^D (the
// container's terminal is cooked).
func (s *Service) execTTY(stream grpc.BidiStreamingServer[podsv0.ExecRequest, podsv0.ExecResponse], c *container, start *podsv0.ExecStart, pidFile string) error {
	ctx := stream.Context()
	id := c.id
	procFile := strings.TrimSuffix(pidFile, ".pid") + ".json"
	defer func() { _ = os.Remove(procFile) }()
	if err := s.writeExecProcess(id, procFile, start); err != nil {
		return fmt.Errorf("exec in %q: %w", id, err)
	}
	// A directory of its own: a short socket path (sun_path) nobody else
	// can connect to.
	sockDir, err := os.MkdirTemp("", "aurae-console-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(sockDir) }()
	sock := filepath.Join(sockDir, "console.sock")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("exec in %q: console socket: %w", id, err)
	}
	defer func() { _ = lis.Close() }()

	// runc's own messages (a failed exec) go to the client's output.
	msgR, msgW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer msgR.Close()
	cmd := exec.Command(selfExe, "--root", s.runcRoot(), "exec", "--detach", "--tty",
		"--console-socket", sock, "--pid-file", pidFile, "--process", procFile, id)
	cmd.Env = append(os.Environ(), ExecShimEnv+"="+s.runtime, envExecShimPidFile+"="+pidFile)
	if _, ok := os.LookupEnv("GORACE"); !ok {
		// A race-detector build (tests) sleeps 1 s at exit by default.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	cmd.Stdout, cmd.Stderr = msgW, msgW
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Start()
	msgW.Close()
	if err != nil {
		return fmt.Errorf("exec in %q: %w", id, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.log.Info("exec started", "pod", c.podID, "container", id, "tty", true, "stdin", start.GetStdin())

	out := &streamSender[*podsv0.ExecResponse]{send: func(m *podsv0.ExecResponse) error { return stream.Send(m) }}
	send := func(b []byte) error {
		return out.Send(&podsv0.ExecResponse{Response: &podsv0.ExecResponse_Stdout{Stdout: b}})
	}
	var outWG sync.WaitGroup
	outWG.Add(1)
	go func() { defer outWG.Done(); copyOut(msgR, send) }()
	readers := []*os.File{msgR}

	master, err := receiveConsole(ctx, lis, exited)
	if err != nil {
		killExec(cmd, pidFile, exited)
		return fmt.Errorf("exec in %q: terminal: %w", id, err)
	}
	if master != nil { // nil: runc failed, its message is on its way
		defer master.Close()
		readers = append(readers, master)
		outWG.Add(1)
		go func() { defer outWG.Done(); copyOut(master, send) }()
		go func() {
			stdinOpen := start.GetStdin()
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				switch {
				case m.GetResize() != nil:
					setWinsize(master, m.GetResize())
				case m.GetCloseStdin() && stdinOpen:
					stdinOpen = false
					_, _ = master.Write([]byte{4})
				case len(m.GetStdin()) > 0 && stdinOpen:
					if _, err := master.Write(m.GetStdin()); err != nil {
						stdinOpen = false
					}
				}
			}
		}()
	}
	code, err := awaitExec(ctx, cmd, pidFile, exited, &outWG, readers)
	if err != nil {
		return fmt.Errorf("exec in %q: %w", id, err)
	}
	s.log.Info("exec exited", "pod", c.podID, "container", id, "exit_code", code)
	return out.Send(&podsv0.ExecResponse{Response: &podsv0.ExecResponse_Exit{Exit: &podsv0.ExecExit{ExitCode: code}}})
}

// receiveConsole accepts runc's connection on the console socket and
// receives the terminal's master. It returns nil, nil when the shim exited
// without sending one (runc failed).
func receiveConsole(ctx context.Context, lis *net.UnixListener, exited chan error) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	got := make(chan result, 1)
	_ = lis.SetDeadline(time.Now().Add(consoleTimeout))
	go func() {
		conn, err := lis.AcceptUnix()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer func() { _ = conn.Close() }()
		f, err := recvFd(conn)
		got <- result{f: f, err: err}
	}()
	select {
	case r := <-got:
		return r.f, r.err
	case err := <-exited:
		exited <- err
		// A short command may be done before the master was taken: runc
		// connected and sent it, and the connection waits to be accepted.
		_ = lis.SetDeadline(time.Now().Add(time.Second))
		if r := <-got; r.f != nil {
			return r.f, nil
		}
		return nil, nil
	case <-ctx.Done():
		_ = lis.Close()
		if r := <-got; r.f != nil {
			_ = r.f.Close()
		}
		return nil, ctx.Err()
	}
}

// recvFd reads one message carrying a descriptor (SCM_RIGHTS) and returns
// it as a non-blocking file, so that reads end when it is closed.
func recvFd(conn *net.UnixConn) (*os.File, error) {
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(name, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) == 0 {
		return nil, errors.New("no descriptor received")
	}
	for _, extra := range fds[1:] {
		_ = unix.Close(extra)
	}
	fd := fds[0]
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), string(name[:n])), nil
}
