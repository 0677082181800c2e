package hypervisor

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// startIn starts cmd in the network namespace at netnsPath (the caller's
// when empty). The fork happens on a locked thread moved into the
// namespace, so the child is born there; the thread moves back after, and
// is left to die with its goroutine when it cannot.
func startIn(netnsPath string, cmd *exec.Cmd) error {
	if netnsPath == "" {
		return cmd.Start()
	}
	target, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("network namespace: %w", err)
	}
	defer target.Close()
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("own network namespace: %w", err)
	}
	defer own.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", netnsPath, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// Keep the thread locked: it ends with this goroutine instead of
		// serving others from the wrong namespace.
		return startErr
	}
	runtime.UnlockOSThread()
	return startErr
}
