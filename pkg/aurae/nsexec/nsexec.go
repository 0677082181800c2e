// Package nsexec starts a process that is inside its cgroups and namespaces
// before it runs the first instruction of its command.
//
// auraed starts its own binary as a shim; the shim's C constructor
// (nsexec.c) blocks on a pipe until auraed has put it into its cgroups, then
// joins the namespaces (including the mount namespace, which a
// multi-threaded Go process cannot join), unshares new ones, drops
// credentials and execs the command. A pid namespace cannot be joined by the
// shim itself (joining one only affects children), so auraed forks the shim
// from an OS thread whose pid_for_children was set to the target namespace:
// the shim is born inside it, a direct child of auraed.
package nsexec

/*
#cgo CFLAGS: -Wall -Werror
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
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

var (
	selfPidNS     *os.File
	selfPidNSErr  error
	selfPidNSOnce sync.Once
)

// Start starts the process; it returns once the command was exec'd (or
// failed to be).
func Start(spec Spec) (*os.Process, error) {
	if len(spec.Args) == 0 {
		return nil, errors.New("nsexec: no arguments")
	}
	if len(spec.Join) == 0 && spec.JoinPid == "" && spec.Unshare == 0 && !spec.NewPid && len(spec.ExtraFiles) == 0 {
		return startTraced(spec)
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer cfgW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		return nil, err
	}
	defer errR.Close()

	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       spec.Args,
		Env:        append(append([]string{}, spec.Env...), "_AURAE_NSEXEC=1"),
		Stdout:     spec.Stdout,
		Stderr:     spec.Stderr,
		ExtraFiles: append([]*os.File{cfgR, errW}, spec.ExtraFiles...),
		SysProcAttr: &syscall.SysProcAttr{
			// A new session: the process does not get auraed's terminal signals.
			Setsid: true,
		},
	}
	if spec.NewPid {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWPID
	}
	if spec.Stdout == nil || spec.Stderr == nil {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		defer devnull.Close()
		if spec.Stdout == nil {
			cmd.Stdout = devnull
		}
		if spec.Stderr == nil {
			cmd.Stderr = devnull
		}
	}
	err = startIn(cmd, spec.JoinPid)
	cfgR.Close()
	errW.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	proc := cmd.Process
	abort := func(cause error) (*os.Process, error) {
		_ = proc.Kill()
		_, _ = proc.Wait()
		return nil, cause
	}
	if spec.Place != nil {
		if err := spec.Place(proc.Pid); err != nil {
			return abort(err)
		}
	}
	if _, err := cfgW.Write(encode(spec)); err != nil {
		return abort(fmt.Errorf("configure %s: %w", spec.Path, err))
	}
	cfgW.Close()
	msg, err := io.ReadAll(errR)
	if err != nil {
		return abort(fmt.Errorf("start %s: %w", spec.Path, err))
	}
	if len(msg) > 0 {
		return abort(&StartError{Path: spec.Path, Msg: string(msg)})
	}
	return proc, nil
}

// StartError is the shim's report of why the command did not start.
type StartError struct {
	Path string
	Msg  string
}

func (e *StartError) Error() string { return fmt.Sprintf("start %s: %s", e.Path, e.Msg) }

func encode(spec Spec) []byte {
	var b bytes.Buffer
	kv := func(k, v string) {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(v)
		b.WriteByte(0)
	}
	for _, ns := range spec.Join {
		kv("join", ns)
	}
	if spec.Unshare != 0 {
		kv("unshare", strconv.FormatUint(uint64(spec.Unshare), 10))
	}
	if spec.GID != nil {
		kv("gid", strconv.FormatUint(uint64(*spec.GID), 10))
	}
	if spec.UID != nil {
		kv("uid", strconv.FormatUint(uint64(*spec.UID), 10))
	}
	if spec.Dir != "" {
		kv("dir", spec.Dir)
	}
	kv("path", spec.Path)
	for _, a := range spec.Args {
		kv("arg", a)
	}
	return b.Bytes()
}

// startIn forks cmd from an OS thread whose pid_for_children is the pid
// namespace at nsPath, so that the child is born in it.
func startIn(cmd *exec.Cmd, nsPath string) error {
	if nsPath == "" {
		return cmd.Start()
	}
	selfPidNSOnce.Do(func() { selfPidNS, selfPidNSErr = os.Open("/proc/self/ns/pid") })
	if selfPidNSErr != nil {
		return selfPidNSErr
	}
	target, err := os.Open(nsPath)
	if err != nil {
		return err
	}
	defer target.Close()

	runtime.LockOSThread()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWPID); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter pid namespace %s: %w", nsPath, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(int(selfPidNS.Fd()), unix.CLONE_NEWPID); err != nil {
		// The thread stays locked: it exits with this goroutine instead of
		// forking later children into the wrong namespace.
		return errors.Join(startErr, fmt.Errorf("leave pid namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return startErr
}

// startTraced starts a process that joins no namespace without the shim,
// which would cost a second exec: the child asks to be traced, so the kernel
// stops it right after its exec, before the first instruction of the
// command; it is placed in its cgroups and then let go.
func startTraced(spec Spec) (*os.Process, error) {
	cmd := &exec.Cmd{
		Path:   spec.Path,
		Args:   spec.Args,
		Env:    spec.Env,
		Dir:    spec.Dir,
		Stdout: spec.Stdout,
		Stderr: spec.Stderr,
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
	if spec.Stdout == nil || spec.Stderr == nil {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		defer devnull.Close()
		if spec.Stdout == nil {
			cmd.Stdout = devnull
		}
		if spec.Stderr == nil {
			cmd.Stderr = devnull
		}
	}
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
