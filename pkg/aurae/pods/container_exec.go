package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// maxExecOutput bounds what ExecSync keeps of each of stdout and stderr.
const maxExecOutput = 16 << 20

var execSeq atomic.Uint64

// execSync runs argv in a running container with `runc exec` (which takes
// the process's env, cwd, user and capabilities from the container's
// config.json) and returns its output. When the timeout passes, the exec'd
// process is killed (by the pid runc wrote: killing runc alone would leave
// it running) and DeadlineExceeded is returned.
func (s *Service) execSync(ctx context.Context, req *podsv0.ExecSyncRequest) (*podsv0.ExecSyncResponse, error) {
	id := req.GetContainerId()
	if err := validID("container", id); err != nil {
		return nil, err
	}
	if len(req.GetArgv()) == 0 {
		return nil, fmt.Errorf("exec in %q: argv is empty: %w", id, errdefs.ErrInvalidArgument)
	}
	if req.GetTimeoutSeconds() < 0 {
		return nil, fmt.Errorf("exec in %q: timeout %d s is negative: %w", id, req.GetTimeoutSeconds(), errdefs.ErrInvalidArgument)
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return nil, err
	}
	if r := c.record(); r.State != stateRunning || isDone(c.done) {
		return nil, fmt.Errorf("exec in %q: container is not running: %w", id, errdefs.ErrFailedPrecondition)
	}
	pidFile := filepath.Join(s.bundleDir(id), fmt.Sprintf("exec-%d.pid", execSeq.Add(1)))
	defer func() { _ = os.Remove(pidFile) }()
	args := append([]string{"--root", s.runcRoot(), "exec", "--pid-file", pidFile, id}, req.GetArgv()...)
	cmd := exec.Command(s.runtime, args...)
	stdout, stderr := &capped{max: maxExecOutput}, &capped{max: maxExecOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec in %q: %w", id, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var timeout <-chan time.Time
	if t := req.GetTimeoutSeconds(); t > 0 {
		timer := time.NewTimer(time.Duration(t) * time.Second)
		defer timer.Stop()
		timeout = timer.C
	}
	var werr error
	select {
	case werr = <-exited:
	case <-timeout:
		killExec(cmd, pidFile, exited)
		return nil, fmt.Errorf("exec in %q: timeout of %d s exceeded: %w", id, req.GetTimeoutSeconds(), context.DeadlineExceeded)
	case <-ctx.Done():
		killExec(cmd, pidFile, exited)
		return nil, fmt.Errorf("exec in %q: %w", id, ctx.Err())
	}
	resp := &podsv0.ExecSyncResponse{Stdout: stdout.bytes(), Stderr: stderr.bytes()}
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		resp.ExitCode = int32(ee.ExitCode())
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			resp.ExitCode = 128 + int32(ws.Signal())
		}
	default:
		return nil, fmt.Errorf("exec in %q: %w", id, werr)
	}
	return resp, nil
}

// killExec kills the exec'd process (once runc has written its pid) and then
// runc exec itself, and waits for it.
func killExec(cmd *exec.Cmd, pidFile string, exited chan error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		if pid, err := readPidFile(pidFile); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case err := <-exited:
		exited <- err
		return
	case <-time.After(5 * time.Second):
	}
	_ = cmd.Process.Kill()
	ignore(<-exited)
}

// capped keeps the first max bytes written to it and drops the rest.
type capped struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - len(c.buf); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		c.buf = append(c.buf, p[:room]...)
	}
	return len(p), nil
}

func (c *capped) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf...)
}
