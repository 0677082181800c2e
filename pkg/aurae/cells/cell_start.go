package cells

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/shlex"
	"golang.org/x/sys/unix"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/nsexec"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
)

const maxCommandLen = 64 << 10

func (s *Service) start(ctx context.Context, req *cellsv0.CellServiceStartRequest) (int, error) {
	cellName := req.GetCellName()
	if req.CellName == nil {
		return 0, fmt.Errorf("cell_name is missing: %w", errInvalid)
	}
	if err := validCellName(cellName); err != nil {
		return 0, err
	}
	x := req.GetExecutable()
	if x == nil {
		return 0, fmt.Errorf("executable is missing: %w", errInvalid)
	}
	if err := validName(x.GetName()); err != nil {
		return 0, fmt.Errorf("executable: %w", err)
	}
	argv, bin, err := parseCommand(x.GetCommand())
	if err != nil {
		return 0, fmt.Errorf("executable %q: %w", x.GetName(), err)
	}
	c, err := s.lookup(cellName)
	if err != nil {
		return 0, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.freeing || c.cg == nil {
		return 0, fmt.Errorf("cell %q is being allocated or freed: %w", cellName, errPrecondition)
	}
	if old, ok := c.execs[x.GetName()]; ok && old.running() {
		return 0, fmt.Errorf("executable %q in cell %q is running: %w", x.GetName(), cellName, errAlreadyExists)
	}
	if c.initLost {
		return 0, fmt.Errorf("%w: %w", errInitLost(cellName), errPrecondition)
	}
	ns, err := s.namespacesOf(c)
	if err != nil {
		return 0, err
	}
	r, w, err := pipes()
	if err != nil {
		return 0, err
	}
	proc, err := nsexec.Start(nsexec.Spec{
		Path:    bin,
		Args:    argv,
		Env:     execEnv,
		Join:    ns.join,
		JoinPid: ns.pid,
		UID:     req.Uid,
		GID:     req.Gid,
		Stdout:  w[0],
		Stderr:  w[1],
		Place:   c.cg.AddProc,
	})
	w[0].Close()
	w[1].Close()
	if err != nil {
		r[0].Close()
		r[1].Close()
		return 0, fmt.Errorf("executable %q in cell %q: %w", x.GetName(), cellName, err)
	}
	pid := proc.Pid
	// A pidfd names this process for signals even after its pid is reused;
	// auraed has not reaped it yet, so the pid is still its own.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		pidfd = -1
	}
	st, _ := linux.StartTime(pid)
	_ = proc.Release() // reap waits with wait4 on the pid
	e := &executable{cell: cellName, pidfd: pidfd, done: make(chan struct{}), rec: execRecord{
		Seq: s.seq.Add(1), Name: x.GetName(), Command: x.GetCommand(), Description: x.GetDescription(),
		Pid: pid, PidStart: st, State: int32(cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING),
		StartedAt: time.Now().UnixNano(),
	}}
	c.execs[x.GetName()] = e
	s.hub.Attach(pid, observe.Workload{Type: observev0.WorkloadType_WORKLOAD_TYPE_CELL, ID: cellName}, x.GetName(), r[0], r[1])
	if err := s.store.putExec(cellName, e.rec); err != nil {
		s.log.Error("persist executable", "cell", cellName, "executable", x.GetName(), "error", err)
	}
	go s.reap(e)
	s.log.Info("executable started", "cell", cellName, "executable", x.GetName(), "pid", pid, "command", x.GetCommand())
	return pid, nil
}

// parseCommand splits a command with shell word rules and resolves its
// program on PATH. It is never run through a shell unless it names one.
func parseCommand(command string) (argv []string, bin string, err error) {
	if strings.TrimSpace(command) == "" {
		return nil, "", fmt.Errorf("command is empty: %w", errInvalid)
	}
	if len(command) > maxCommandLen {
		return nil, "", fmt.Errorf("command is longer than %d bytes: %w", maxCommandLen, errInvalid)
	}
	if strings.ContainsRune(command, 0) {
		return nil, "", fmt.Errorf("command contains a NUL byte: %w", errInvalid)
	}
	argv, err = shlex.Split(command)
	if err != nil {
		return nil, "", fmt.Errorf("command %q: %w: %w", command, err, errInvalid)
	}
	if len(argv) == 0 {
		return nil, "", fmt.Errorf("command is empty: %w", errInvalid)
	}
	bin = argv[0]
	if !strings.Contains(bin, "/") {
		found, err := lookPath(bin)
		if err != nil {
			return nil, "", fmt.Errorf("command %q: %q not found in PATH: %w", command, bin, errInvalid)
		}
		bin = found
	} else if !filepath.IsAbs(bin) {
		return nil, "", fmt.Errorf("command %q: a program path must be absolute or a bare name: %w", command, errInvalid)
	} else if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, "", fmt.Errorf("command %q: %s is not an executable file: %w", command, bin, errInvalid)
	}
	return argv, bin, nil
}

// lookPath resolves a bare program name on the executables' PATH.
func lookPath(name string) (string, error) {
	for _, dir := range strings.Split(strings.TrimPrefix(execEnv[0], "PATH="), ":") {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}
