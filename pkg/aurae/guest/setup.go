package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// guestMounts are the file systems of the guest, in order. cgroup v2 is
// mounted unified: the guest kernel is ours and has every controller in v2.
var guestMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o755},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate", 0o555},
}

// writableMounts are mounted where the root is read-only (a boot from the
// root image, hypervisor.VMConfig.RootImage): what auraed and the pods
// write outside /run and /tmp.
var writableMounts = []mount{
	{"tmpfs", "/var/lib/aurae", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0700", 0o700},
	{"tmpfs", "/root", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0700", 0o700},
}

// Setup mounts the guest's file systems (those already mounted are left
// alone) and makes the /dev links that udev would.
func Setup() error {
	var errs []error
	mounts := guestMounts
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err == nil && st.Flags&unix.ST_RDONLY != 0 {
		mounts = append(append([]mount{}, guestMounts...), writableMounts...)
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			errs = append(errs, err)
			continue
		}
		if isMountPoint(m.target) {
			continue // mounted already (by another init, under --guest)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	for link, target := range map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{"/var/lib/aurae", "/run/aurae", "/root"} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// MountVirtioFS mounts a virtio-fs share at its path (made if missing),
// unless something is mounted there already.
func MountVirtioFS(m VirtioFSMount) error {
	if err := os.MkdirAll(m.Path, 0o755); err != nil {
		return err
	}
	if isMountPoint(m.Path) {
		return nil
	}
	if err := unix.Mount(m.Tag, m.Path, "virtiofs", 0, ""); err != nil {
		return fmt.Errorf("mount virtiofs %s on %s: %w", m.Tag, m.Path, err)
	}
	return nil
}

// isMountPoint says whether path is on another device than its parent
// (good enough for the pseudo file systems mounted here; "/" is not asked).
func isMountPoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(filepath.Dir(path), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// Input events of the ACPI power button (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
)

// watchPowerButton sends on power when an input device (the ACPI power
// button that QMP system_powerdown presses) reports KEY_POWER.
func watchPowerButton(log *slog.Logger, power chan<- string) {
	devs, _ := filepath.Glob("/dev/input/event*")
	if len(devs) == 0 {
		log.Info("no input devices: QMP system_powerdown will not be seen (use SIGTERM to PID 1)")
	}
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			log.Warn("input device", "device", dev, "error", err)
			continue
		}
		go func() {
			defer f.Close()
			// struct input_event on 64-bit: timeval (16), type u16, code u16, value s32.
			var ev [24]byte
			for {
				if _, err := io.ReadFull(f, ev[:]); err != nil {
					return
				}
				typ := binary.LittleEndian.Uint16(ev[16:])
				code := binary.LittleEndian.Uint16(ev[18:])
				value := int32(binary.LittleEndian.Uint32(ev[20:]))
				if typ == evKey && code == keyPower && value == 1 {
					select {
					case power <- "power button":
					default:
					}
				}
			}
		}()
	}
}
