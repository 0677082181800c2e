package linux

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// NewUserNamespace returns a new user namespace with these mappings, open,
// for id-mapping mounts (mount_setattr MOUNT_ATTR_IDMAP) where there is no
// pod namespace to use. A user namespace needs a process to be made in; a
// multi-threaded Go process cannot unshare one, so a child is started in
// it that never runs: it is ptraced and so stops on its exec, before its
// first instruction, and is killed once its namespace is open.
func NewUserNamespace(uids, gids []syscall.SysProcIDMap) (*os.File, error) {
	// The tracer is this thread: were it to end while the child lives,
	// the child would go on running.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"aurae-userns"}
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: uids,
		GidMappings: gids,
		Ptrace:      true,
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("user namespace: %w", err)
	}
	return f, nil
}

// IDMappedClone is a detached clone (open_tree) of the mount at path,
// id-mapped with the user namespace userns, and read-only if ro. The
// caller closes it, or moves it somewhere (move_mount) first.
func IDMappedClone(path string, userns int, ro bool) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return -1, fmt.Errorf("clone %s: %w", path, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	if ro {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EINVAL) {
			return -1, fmt.Errorf("id-map %s: its filesystem cannot be id-mapped: %w", path, err)
		}
		return -1, fmt.Errorf("id-map %s: %w", path, err)
	}
	return fd, nil
}
