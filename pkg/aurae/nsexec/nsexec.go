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
	if !spec.needsShim() {
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
		ExtraFiles: append([]*os.File{cfgR, errW}, spec.ExtraFiles...),
		SysProcAttr: &syscall.SysProcAttr{
			// A new session: the process does not get auraed's terminal signals.
			Setsid: true,
		},
	}
	if spec.NewPid {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWPID
	}
	setStdio(cmd, spec)
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
