package cells

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
)

// executable is a process started in a cell. rec changes only under mu;
// done closes when the process has ended and rec says how.
type executable struct {
	cell  string
	mu    sync.Mutex
	rec   execRecord
	pidfd int // -1 once the process has ended
	done  chan struct{}
}

func (e *executable) running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rec.State == int32(cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING)
}

func (e *executable) status() *cellsv0.ExecutableStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.rec
	return &cellsv0.ExecutableStatus{
		Name: r.Name, Command: r.Command, Description: r.Description, Pid: int32(r.Pid),
		State: cellsv0.ExecutableState(r.State), ExitCode: r.ExitCode, Signal: r.Signal,
		StartedAt: r.StartedAt, ExitedAt: r.ExitedAt,
	}
}

func sortedExecs(m map[string]*executable) []*executable {
	out := make([]*executable, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Seq < out[j].rec.Seq })
	return out
}

// signal sends sig to the executable's process group (the shim made it a
// session leader), and to the process itself through its pidfd, which
// cannot hit a reused pid.
func (e *executable) signal(sig syscall.Signal) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pidfd < 0 || e.rec.State != int32(cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING) {
		return
	}
	_ = unix.PidfdSendSignal(e.pidfd, sig, nil, 0)
	_ = unix.Kill(-e.rec.Pid, sig)
}

// finish records how the process ended and wakes the waiters.
func (s *Service) finish(e *executable, state cellsv0.ExecutableState, code, sig int32) {
	e.mu.Lock()
	e.rec.State = int32(state)
	e.rec.ExitCode = code
	e.rec.Signal = sig
	e.rec.ExitedAt = time.Now().UnixNano()
	if e.pidfd >= 0 {
		unix.Close(e.pidfd)
		e.pidfd = -1
	}
	rec := e.rec
	e.mu.Unlock()
	if err := s.store.putExec(e.cell, rec); err != nil {
		s.log.Error("persist executable exit", "cell", e.cell, "executable", rec.Name, "error", err)
	}
	s.log.Info("executable exited", "cell", e.cell, "executable", rec.Name, "pid", rec.Pid, "exit_code", code, "signal", sig)
	close(e.done)
}

// reap waits for a child of auraed and records its exit status, publishing
// the signals that stopped or ended it.
func (s *Service) reap(e *executable) {
	pid := e.rec.Pid
	w := observe.Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: e.cell}
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, unix.WUNTRACED, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			s.log.Error("wait for executable", "cell", e.cell, "executable", e.rec.Name, "pid", pid, "error", err)
			s.finish(e, cellsv0.ExecutableState_EXECUTABLE_STATE_UNKNOWN, 0, 0)
			return
		}
		switch {
		case ws.Stopped():
			s.hub.PublishSignal(observe.SignalEvent{Pid: pid, Signal: ws.StopSignal(), Stopped: true, Workload: w, Executable: e.rec.Name, Time: time.Now()})
			continue
		case ws.Signaled():
			s.hub.PublishSignal(observe.SignalEvent{Pid: pid, Signal: ws.Signal(), Workload: w, Executable: e.rec.Name, Time: time.Now()})
			s.finish(e, cellsv0.ExecutableState_EXECUTABLE_STATE_EXITED, 128+int32(ws.Signal()), int32(ws.Signal()))
			return
		case ws.Exited():
			s.finish(e, cellsv0.ExecutableState_EXECUTABLE_STATE_EXITED, int32(ws.ExitStatus()), 0)
			return
		}
	}
}

// watchAdopted waits for a process auraed started before a restart: it is no
// longer auraed's child, so its exit status cannot be known.
func (s *Service) watchAdopted(e *executable, pidfd int) {
	linux.WaitPidfd(pidfd)
	s.finish(e, cellsv0.ExecutableState_EXECUTABLE_STATE_UNKNOWN, 0, 0)
}

// stop ends an executable: SIGTERM, then SIGKILL after grace.
func (s *Service) stop(ctx context.Context, e *executable, grace time.Duration) error {
	if !e.running() {
		return nil
	}
	s.log.Info("stopping executable", "cell", e.cell, "executable", e.rec.Name, "pid", e.rec.Pid, "grace", grace)
	e.signal(unix.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-e.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("stop %q: %w", e.rec.Name, ctx.Err())
	}
	s.log.Info("grace period over, killing executable", "cell", e.cell, "executable", e.rec.Name, "pid", e.rec.Pid)
	e.signal(unix.SIGKILL)
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %q: %w", e.rec.Name, ctx.Err())
	}
}

// devNullEnv is the environment of executables: a plain PATH, nothing of
// auraed's own.
var execEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

func pipes() (r [2]*os.File, w [2]*os.File, err error) {
	for i := range 2 {
		r[i], w[i], err = os.Pipe()
		if err != nil {
			for j := 0; j < i; j++ {
				r[j].Close()
				w[j].Close()
			}
			return r, w, err
		}
	}
	return r, w, nil
}
