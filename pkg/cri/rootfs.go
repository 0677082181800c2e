package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// rootfsDir is where a container's rootfs snapshot is mounted.
func (r *Runtime) rootfsDir(containerID string) string {
	return filepath.Join(r.cfg.RootDir, "containers", containerID, "rootfs")
}

// mountRootfs mounts the snapshot's mounts (one overlay, or one bind) at dir.
func mountRootfs(mounts []image.Mount, dir string) error {
	if len(mounts) != 1 {
		return fmt.Errorf("rootfs: want one mount, got %d", len(mounts))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	m := mounts[0]
	var flags uintptr
	var data []string
	for _, o := range m.Options {
		switch o {
		case "bind":
			flags |= unix.MS_BIND
		case "rbind":
			flags |= unix.MS_BIND | unix.MS_REC
		case "ro":
			flags |= unix.MS_RDONLY
		case "rw":
		default:
			data = append(data, o)
		}
	}
	typ := m.Type
	if typ == "bind" {
		flags |= unix.MS_BIND
		typ = ""
	}
	if err := unix.Mount(m.Source, dir, typ, flags&^unix.MS_RDONLY, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount rootfs %s at %s: %w", m.Type, dir, err)
	}
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		if err := unix.Mount("", dir, "", flags|unix.MS_REMOUNT, ""); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
			return fmt.Errorf("remount rootfs read-only: %w", err)
		}
	}
	return nil
}

// unmountRootfs unmounts dir (if mounted) and removes the container's dir.
func unmountRootfs(dir string) error {
	for {
		err := unix.Unmount(dir, 0)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // not mounted (any more)
		}
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if err != nil {
			return fmt.Errorf("unmount rootfs %s: %w", dir, err)
		}
	}
	if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("remove %s: %w", filepath.Dir(dir), err)
	}
	return nil
}
