package nsexec

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec says what to run and where.
type Spec struct {
	// Path is the executable, resolved by the caller; Args is its argv.
	Path string
	Args []string
	Env  []string
	// Dir is the working directory, in the joined mount namespace ("/" when empty).
	Dir string
	// Join are namespace files (/proc/<pid>/ns/<type>) to join, except pid.
	Join []string
	// JoinPid is the pid namespace file the process is born in ("" = auraed's).
	JoinPid string
	// Unshare are CLONE_NEW* flags (not CLONE_NEWPID) to unshare after joining.
	Unshare uintptr
	// NewPid starts the process as pid 1 of a new pid namespace (nested in
	// JoinPid's when set).
	NewPid   bool
	UID, GID *uint32
	Stdout   *os.File
	Stderr   *os.File
	// ExtraFiles are given to the command as fds 5, 6, ...
	ExtraFiles []*os.File
	// Place runs after the fork and before the command starts; it puts the
	// pid into its cgroups. An error kills the process.
	Place func(pid int) error
}

// FirstExtraFD is the fd number of Spec.ExtraFiles[0] in the command.
const FirstExtraFD = 5

// needsShim reports whether the process joins, unshares or creates
// namespaces, or gets extra files: what only the C shim can do.
func (spec Spec) needsShim() bool {
	return len(spec.Join) > 0 || spec.JoinPid != "" || spec.Unshare != 0 || spec.NewPid || len(spec.ExtraFiles) > 0
}

// StartError is the shim's report of why the command did not start.
type StartError struct {
	Path string
	Msg  string
}

func (e *StartError) Error() string { return fmt.Sprintf("start %s: %s", e.Path, e.Msg) }

// startTraced starts a process that joins no namespace without the shim,
// which would cost a second exec: the child asks to be traced, so the kernel
// stops it right after its exec, before the first instruction of the
// command; it is placed in its cgroups and then let go.
func startTraced(spec Spec) (*os.Process, error) {
	cmd := &exec.Cmd{
		Path: spec.Path,
		Args: spec.Args,
		Env:  spec.Env,
		Dir:  spec.Dir,
		SysProcAttr: &syscall.SysProcAttr{
			Setsid: true,
			Ptrace: true,
		},
	}
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	if spec.UID != nil || spec.GID != nil {
		cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid()), NoSetGroups: false}
		if spec.UID != nil {
			cred.Uid = *spec.UID
		}
		if spec.GID != nil {
			cred.Gid = *spec.GID
		}
		cmd.SysProcAttr.Credential = cred
	}
	setStdio(cmd, spec)
	// The tracer is the thread that forked: it must also be the one that
	// detaches.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	proc := cmd.Process
	pid := proc.Pid
	abort := func(cause error) (*os.Process, error) {
		_ = proc.Kill()
		_ = syscall.PtraceDetach(pid)
		_, _ = proc.Wait()
		return nil, cause
	}
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return abort(fmt.Errorf("start %s: wait for exec: %w", spec.Path, err))
		}
		if ws.Exited() || ws.Signaled() {
			// Reaped already: nothing left to kill or wait for.
			return nil, fmt.Errorf("start %s: died before it ran (status %v)", spec.Path, ws)
		}
		if ws.Stopped() && ws.StopSignal() == syscall.SIGTRAP {
			break
		}
	}
	if spec.Place != nil {
		if err := spec.Place(pid); err != nil {
			return abort(err)
		}
	}
	if err := syscall.PtraceDetach(pid); err != nil {
		return abort(fmt.Errorf("start %s: detach: %w", spec.Path, err))
	}
	return proc, nil
}

// setStdio gives cmd the spec's output files. exec.Cmd connects the ones
// left unset to /dev/null itself; a nil *os.File must not be assigned, as it
// would become a non-nil io.Writer.
func setStdio(cmd *exec.Cmd, spec Spec) {
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	if spec.Stderr != nil {
		cmd.Stderr = spec.Stderr
	}
}
