package guest

import (
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	switchedEnv = "_AURAE_GUEST_SWITCHED_ROOT"
	newRoot     = "/.newroot"
)

// SwitchRoot moves the initramfs into a tmpfs mount and makes that the root,
// as switch_root does: the initramfs' own root (rootfs) cannot be pivoted
// away, and runc pivot_roots into every container. Files are moved one by
// one (copied, then removed), so the initramfs is not held twice in memory.
// On success it does not return: it re-executes /init from the new root.
// It does nothing (nil) when not PID 1 or when already done.
func SwitchRoot(log *slog.Logger) error {
	if os.Getenv(switchedEnv) != "" {
		_ = os.Unsetenv(switchedEnv)
		return nil
	}
	if os.Getpid() != 1 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return err
	}
	if st.Type != unix.TMPFS_MAGIC && st.Type != unix.RAMFS_MAGIC {
		return nil // booted from a real root file system
	}
	start := time.Now()
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("rootfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", newRoot, err)
	}
	var rootStat unix.Stat_t
	if err := unix.Lstat("/", &rootStat); err != nil {
		return err
	}
	if err := moveTree("/", newRoot, rootStat.Dev); err != nil {
		// What was moved stays in the new tmpfs; the old root keeps the
		// rest. Continue on the old root: pods will not work, cells will.
		return fmt.Errorf("move the initramfs to tmpfs: %w", err)
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	log.Info("switched root to tmpfs", "took", time.Since(start).String())
	env := append(os.Environ(), switchedEnv+"=1")
	err := unix.Exec("/init", os.Args, env)
	return fmt.Errorf("re-exec /init: %w", err)
}

// moveTree copies every file of the file system dev under src into dst
// (modes, owners, symlinks, device nodes), removing each source file once
// copied and each source directory once emptied.
func moveTree(src, dst string, dev uint64) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		from := filepath.Join(src, e.Name())
		to := filepath.Join(dst, e.Name())
		if from == newRoot {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(from, &st); err != nil {
			return err
		}
		if st.Dev != dev {
			continue // another mount
		}
		mode := fs.FileMode(st.Mode & 0o7777)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := os.Mkdir(to, 0o700); err != nil && !os.IsExist(err) {
				return err
			}
			if err := moveTree(from, to, dev); err != nil {
				return err
			}
			_ = os.Remove(from)
		case unix.S_IFREG:
			if err := copyFile(from, to); err != nil {
				return err
			}
			_ = os.Remove(from)
		case unix.S_IFLNK:
			target, err := os.Readlink(from)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
			_ = os.Remove(from)
			if err := os.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
				return err
			}
			continue
		default: // device nodes, fifos, sockets
			if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
				return fmt.Errorf("mknod %s: %w", to, err)
			}
			_ = os.Remove(from)
		}
		if err := os.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
		// After chown, which clears set-id bits.
		if err := os.Chmod(to, mode&fs.ModePerm|unixModeBits(st.Mode)); err != nil {
			return err
		}
	}
	return nil
}

func unixModeBits(m uint32) fs.FileMode {
	var r fs.FileMode
	if m&syscall.S_ISUID != 0 {
		r |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		r |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		r |= fs.ModeSticky
	}
	return r
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
