package guest

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const newRoot = "/.newroot"

// SwitchRoot makes the root a mount that can be pivoted away, as switch_root
// would: the initramfs' own root (rootfs) cannot be, and runc pivot_roots
// into every container. Copying the initramfs into a tmpfs cost ~0.8 s under
// TCG; a bind mount of rootfs, moved onto / and chrooted into, costs nothing
// and is a mount with a parent, which is all pivot_root asks of the root.
// It does nothing when not PID 1 or when booted from a
// real root file system.
func SwitchRoot(log *slog.Logger) error {
	if os.Getpid() != 1 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return err
	}
	if st.Type != unix.TMPFS_MAGIC && st.Type != unix.RAMFS_MAGIC {
		return nil
	}
	start := time.Now()
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/", newRoot, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind / on %s: %w", newRoot, err)
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
	_ = os.Remove(newRoot)
	log.Debug("root is now a bind mount of the initramfs", "took", time.Since(start).String())
	return nil
}
