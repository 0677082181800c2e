package vm

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The pod's shared dir is writable by the guest (through the share), so
// the guest may have replaced any path below it by a symlink by the time
// the host mounts there. Mounts into it are therefore made by file
// descriptor: the source is cloned with open_tree, the target is made and
// opened below the shared dir with openat2 (RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), and move_mount attaches one to the other. Every
// share is nosuid and nodev; a read-only one is read-only on the host, so
// the guest cannot write through it either.

// resolveBeneath is how every path below the shared dir is opened.
var resolveBeneath = unix.OpenHow{
	Flags:   unix.O_PATH | unix.O_CLOEXEC,
	Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
}

// shareInto bind-mounts src (a dir or a file on the host) at rel below
// root, making rel's missing parents and rel itself.
func shareInto(root, rel, src string, readonly bool) error {
	rel = filepath.Clean(rel)
	if rel == "." || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("share %s: %q is not below the shared dir", src, rel)
	}
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("share %s: clone: %w", src, err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if readonly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("share %s: set nosuid,nodev: %w", src, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil {
		return fmt.Errorf("share %s: %w", src, err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR

	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("share %s: shared dir: %w", src, err)
	}
	defer unix.Close(rootFd)
	parent, err := mkdirBeneath(rootFd, filepath.Dir(rel))
	if err != nil {
		return fmt.Errorf("share %s at %s: %w", src, rel, err)
	}
	defer unix.Close(parent)
	base := filepath.Base(rel)
	if isDir {
		err = unix.Mkdirat(parent, base, 0o755)
	} else {
		var fd int
		fd, err = unix.Openat(parent, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(fd)
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("share %s at %s: make the target: %w", src, rel, err)
	}
	target, err := unix.Openat2(parent, base, &resolveBeneath)
	if err != nil {
		return fmt.Errorf("share %s at %s: open the target: %w", src, rel, err)
	}
	defer unix.Close(target)
	if err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("share %s at %s: attach: %w", src, rel, err)
	}
	return nil
}

// mkdirBeneath makes dir (relative, "." for the root itself) below rootFd
// one element at a time, never following a symlink, and returns an O_PATH
// descriptor of it.
func mkdirBeneath(rootFd int, dir string) (int, error) {
	fd, err := unix.Dup(rootFd)
	if err != nil {
		return -1, err
	}
	if dir == "." {
		return fd, nil
	}
	for _, name := range strings.Split(dir, "/") {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, fmt.Errorf("mkdir %s: %w", name, err)
		}
		next, err := unix.Openat2(fd, name, &resolveBeneath)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", name, err)
		}
		fd = next
	}
	return fd, nil
}

// unmountBeneath unmounts the mount at path, found below root without
// following a symlink (a guest may have planted one since the mount was
// listed): the unmount goes through the descriptor's /proc link.
func unmountBeneath(root, path string) error {
	rel, err := filepath.Rel(root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("unmount %s: not below %s", path, root)
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	fd, err := unix.Openat2(rootFd, rel, &resolveBeneath)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	defer unix.Close(fd)
	return unix.Unmount("/proc/self/fd/"+fmt.Sprint(fd), unix.MNT_DETACH)
}

// makeSharedMount bind-mounts dir on itself as a shared mount, so that
// what is mounted below it later reaches the guest: virtiofsd serves the
// dir from a mount namespace of its own, a slave of this one. RemovePod's
// unmountUnder takes it away with the rest.
func makeSharedMount(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}
