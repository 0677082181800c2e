package holder

import (
	"errors"
	"fmt"
	"math"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A holder that keeps a pod's pid namespace is its PID 1: a container of the
// pod with CAP_SYS_PTRACE reaches it through /proc/1/{root,cwd,exe,fd,environ}.
// So once its setup is done (it needs the host's /proc for the sysctls) the
// holder confines itself, in this order:
//
//  1. loads the reaper (ReaperELF, a few hundred bytes of machine code)
//     into a sealed memfd;
//  2. in its own mount namespace (created with the holder, so that the pins
//     of its other namespaces, made by auraed from /proc/<pid>/ns/*, are
//     untouched): makes every mount private, mounts an empty read-only tmpfs
//     and pivots into it, detaching the host's tree;
//  3. drops every capability (bounding, ambient, then effective, permitted
//     and inheritable), sets no_new_privs and clears the dumpable flag;
//  4. marks every descriptor close-on-exec except the ready pipe, and
//     execs the reaper from the memfd with no environment.
//
// The reaper clears its dumpable flag again (exec sets it), blocks every
// signal, writes "1" on the ready pipe, closes it and reaps children until
// SIGKILL. /proc/1/exe is then the sealed memfd holding the reaper, not
// auraed's binary; /proc/1/root and cwd an empty tmpfs; it has no fds, no
// environment and no capabilities.

// confineHolder runs steps 1 to 4; it returns only on failure. It must run on
// a locked OS thread: capabilities are per thread, and exec takes the calling
// thread's.
func confineHolder(ownMountNS bool) error {
	elf := ReaperELF()
	if elf == nil {
		return errors.New("no reaper for this architecture")
	}
	reaper, err := sealedMemfd("aurae-pod-holder", elf)
	if err != nil {
		return err
	}
	if ownMountNS {
		if err := emptyRoot(); err != nil {
			return err
		}
	}
	if err := dropCapabilities(); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("dumpable: %w", err)
	}
	if err := unix.CloseRange(0, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close descriptors on exec: %w", err)
	}
	if _, err := unix.FcntlInt(ReadyFD, unix.F_SETFD, 0); err != nil {
		return fmt.Errorf("ready pipe: %w", err)
	}
	return execveat(reaper, "aurae-pod-holder")
}

// sealedMemfd returns a memfd holding b, sealed against any change.
func sealedMemfd(name string, b []byte) (int, error) {
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate(name, flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3
		fd, err = unix.MemfdCreate(name, flags)
	}
	if err != nil {
		return -1, fmt.Errorf("memfd: %w", err)
	}
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("memfd: %w", err)
		}
		b = b[n:]
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("memfd seals: %w", err)
	}
	return fd, nil
}

// emptyRoot makes the holder's root an empty read-only tmpfs. The holder's
// mount namespace is its own: nothing done here reaches the host's.
func emptyRoot() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// Any directory of the host's tree will do as the mount point: it is
	// detached below. /proc is there (the setup used it) and no longer needed.
	const dir = "/proc"
	flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("aurae-pod-holder", dir, "tmpfs", flags, "size=4k,nr_inodes=16,mode=0555"); err != nil {
		return fmt.Errorf("mount empty root: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("empty root: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; unmounting
	// "." then detaches the host's whole tree (as runc does).
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("empty root: %w", err)
	}
	return nil
}

// dropCapabilities empties this thread's bounding and ambient sets, then its
// effective, permitted and inheritable sets.
func dropCapabilities() error {
	for c := 0; ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) { // past the last capability
			break
		}
		if err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("drop capabilities: %w", err)
	}
	return nil
}

// execveat execs the program open at fd with argv [arg0] and no
// environment. It returns only on failure.
func execveat(fd int, arg0 string) error {
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		return err
	}
	a0, err := unix.BytePtrFromString(arg0)
	if err != nil {
		return err
	}
	argv := []*byte{a0, nil}
	envv := []*byte{nil}
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	return fmt.Errorf("exec the reaper: %w", errno)
}
