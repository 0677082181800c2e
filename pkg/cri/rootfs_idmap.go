package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// mountIDMappedRootfs mounts a rootfs for a pod with a user namespace, so
// that the image's files, owned by host ids 0.., are the pod's 0.. (as
// containerd does with kernel support, without copying or chowning the
// layers):
//   - overlay: every lower layer is cloned (open_tree) and id-mapped with
//     the pod's user namespace (mount_setattr MOUNT_ATTR_IDMAP); the
//     overlay takes the detached clones by /proc/self/fd and holds them
//     for its life, so nothing else is mounted or left to unmount. The
//     upper layer's root is given to the pod's root: what the container
//     writes is stored as its host ids. Overlayfs itself cannot be
//     id-mapped (EINVAL), its layers can (Linux 5.19).
//   - bind: the source is cloned, id-mapped and moved onto dir.
func mountIDMappedRootfs(m image.Mount, dir string, idmap *rootfsIDMap) error {
	userns, err := unix.Open(idmap.UserNS, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("rootfs: user namespace %s: %w", idmap.UserNS, err)
	}
	defer unix.Close(userns)
	return mountIDMapped(m, dir, userns, idmap.UID, idmap.GID)
}

func mountIDMapped(m image.Mount, dir string, userns int, uid, gid uint32) error {
	flags, opts := rootfsOptions(m)
	ro := flags&unix.MS_RDONLY != 0
	var data, lowers []string
	var upper string
	for _, o := range opts {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowers = strings.Split(v, ":")
			continue
		}
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
		data = append(data, o)
	}
	switch {
	case m.Type == "bind" || (m.Type == "" && flags&unix.MS_BIND != 0):
		fd, err := linux.IDMappedClone(m.Source, userns, ro)
		if err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("rootfs: move id-mapped %s to %s: %w", m.Source, dir, err)
		}
		return nil
	case m.Type == "overlay":
		if len(lowers) == 0 {
			return errors.New("rootfs: overlay without lowerdir")
		}
		fds := make([]string, 0, len(lowers))
		for _, l := range lowers {
			fd, err := linux.IDMappedClone(l, userns, false)
			if err != nil {
				return fmt.Errorf("rootfs: %w", err)
			}
			defer unix.Close(fd)
			fds = append(fds, "/proc/self/fd/"+strconv.Itoa(fd))
		}
		if upper != "" {
			if err := os.Lchown(upper, int(uid), int(gid)); err != nil {
				return fmt.Errorf("rootfs: give the upper layer to the pod's root: %w", err)
			}
		}
		data = append(data, "lowerdir="+strings.Join(fds, ":"))
		// Read-only is root.readonly's, as for mountRootfs's overlay.
		if err := unix.Mount("overlay", dir, "overlay", 0, strings.Join(data, ",")); err != nil {
			return fmt.Errorf("mount id-mapped overlay rootfs at %s: %w", dir, err)
		}
		return nil
	default:
		return fmt.Errorf("rootfs: a %q mount cannot be id-mapped for a user namespace: %w", m.Type, errPrecondition)
	}
}

// probeUserNamespaces tells whether pods with a user namespace can run
// here: an overlay with id-mapped lower layers (Linux 5.19) mounts in dir,
// where container rootfs are mounted, and the root of a user namespace
// (no one on the host) can pass through dir and its parents to a rootfs,
// as the OCI runtime does from inside the namespace. nil when they can.
func probeUserNamespaces(dir string) (retErr error) {
	if err := searchable(dir); err != nil {
		return err
	}
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 65536, Size: 65536}}
	userns, err := linux.NewUserNamespace(ids, ids)
	if err != nil {
		return err
	}
	defer userns.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".userns-probe-")
	if err != nil {
		return err
	}
	defer func() {
		if err := os.RemoveAll(tmp); err != nil && retErr == nil {
			retErr = err
		}
	}()
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o700); err != nil {
			return err
		}
	}
	m := image.Mount{Type: "overlay", Source: "overlay", Options: []string{
		"lowerdir=" + filepath.Join(tmp, "lower"), "upperdir=" + filepath.Join(tmp, "upper"), "workdir=" + filepath.Join(tmp, "work"),
	}}
	merged := filepath.Join(tmp, "merged")
	if err := mountIDMapped(m, merged, int(userns.Fd()), 65536, 65536); err != nil {
		return err
	}
	var st unix.Stat_t
	err = unix.Stat(merged, &st)
	if uerr := unix.Unmount(merged, unix.MNT_DETACH); uerr != nil {
		return errors.Join(err, uerr)
	}
	if err != nil {
		return err
	}
	if st.Uid != 65536 {
		return fmt.Errorf("an id-mapped overlay shows its root as uid %d, not 65536", st.Uid)
	}
	return nil
}

// searchable checks that anyone may pass through dir and each of its
// parents (the x bit for others): a container in a user namespace reaches
// its rootfs as a user who owns none of them.
func searchable(dir string) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %v) cannot be passed through by the root of a user namespace: make it (and its parents) o+x, as 0711", d, fi.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}
