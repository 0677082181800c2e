package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// rootfsDir is where a container's rootfs snapshot is mounted.
func (r *Runtime) rootfsDir(containerID string) string {
	return filepath.Join(r.cfg.RootDir, "containers", containerID, "rootfs")
}

// prepareContainersDir makes rootDir and rootDir/containers, where
// container rootfs are mounted, 0711 (as containerd's state directories):
// the OCI runtime reaches the rootfs of a container in a user namespace
// from inside it, as a user who owns neither; others may pass through but
// not list them.
func prepareContainersDir(rootDir string) error {
	for _, d := range []string{rootDir, filepath.Join(rootDir, "containers")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	return nil
}

// rootfsIDMap says how a container's rootfs is id-mapped: with the pod's
// pinned user namespace, whose root is host ids UID and GID.
type rootfsIDMap struct {
	UserNS   string
	UID, GID uint32
}

// mountRootfs mounts the snapshot's mounts (one overlay, or one bind) at
// dir; with idmap, id-mapped (mountIDMappedRootfs).
func mountRootfs(mounts []image.Mount, dir string, idmap *rootfsIDMap) error {
	if len(mounts) != 1 {
		return fmt.Errorf("rootfs: want one mount, got %d", len(mounts))
	}
	// 0711: the root of a pod's user namespace passes through (see
	// prepareContainersDir).
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	m := mounts[0]
	if idmap != nil {
		return mountIDMappedRootfs(m, dir, idmap)
	}
	flags, data := rootfsOptions(m)
	typ := m.Type
	if typ == "bind" {
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

// rootfsOptions splits a snapshot mount's options into mount flags (bind,
// rbind, ro; a "bind" type is a bind) and the rest, the filesystem's data.
func rootfsOptions(m image.Mount) (flags uintptr, data []string) {
	if m.Type == "bind" {
		flags |= unix.MS_BIND
	}
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
	return flags, data
}

// upperDirOf is the upperdir of a snapshot's overlay mount ("" for
// another kind of mount).
func upperDirOf(mounts []image.Mount) string {
	for _, m := range mounts {
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok && m.Type == "overlay" {
				return v
			}
		}
	}
	return ""
}

// releaseRootfs unmounts the rootfs of an exited container whose
// controller no longer uses it (controller.RootfsFreeAtExit), as
// containerd's shim unmounts a task's rootfs when it deletes the task:
// RemoveContainer then has only records and the snapshot to remove. Its
// dir stays until RemoveContainer. The caller holds the container's lock.
func (r *Runtime) releaseRootfs(c sandbox.Container) {
	sb, err := r.store.Sandbox(c.SandboxID)
	if err != nil {
		return
	}
	ctrl, err := r.controller(sb.RuntimeHandler)
	if err != nil {
		return
	}
	if !rootfsFreeAtExit(ctrl) {
		return
	}
	start := time.Now()
	n, err := unmountAll(r.rootfsDir(c.ID))
	if err != nil {
		// RemoveContainer tries again.
		r.log.Warn("unmount the rootfs of an exited container", "pod", c.SandboxID, "container", c.ID, "error", err)
		return
	}
	if n > 0 {
		r.log.Debug("rootfs of an exited container unmounted", "pod", c.SandboxID, "container", c.ID, "took", time.Since(start).String())
	}
}

// rootfsFreeAtExit says whether ctrl's containers free their rootfs mount
// when they exit (controller.RootfsFreeAtExit).
func rootfsFreeAtExit(ctrl controller.Controller) bool {
	f, ok := ctrl.(controller.RootfsFreeAtExit)
	return ok && f.RootfsFreeAtExit()
}

// unmountRootfs unmounts dir (if mounted) and removes the container's dir.
func unmountRootfs(dir string) error {
	if _, err := unmountAll(dir); err != nil {
		return err
	}
	return removeRootfsDirs(dir)
}

// removeRootfsDirs removes an unmounted rootfs dir and the container dir
// holding it.
func removeRootfsDirs(dir string) error {
	if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("remove %s: %w", filepath.Dir(dir), err)
	}
	return nil
}

// unmountAll unmounts whatever is mounted at dir and says how many mounts
// it took off.
func unmountAll(dir string) (int, error) {
	for n := 0; ; n++ {
		err := unix.Unmount(dir, 0)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return n, nil // not mounted (any more)
		}
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if err != nil {
			return n, fmt.Errorf("unmount rootfs %s: %w", dir, err)
		}
	}
}
