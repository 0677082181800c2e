package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// Image volumes (Mount.image, Kubernetes `image` volumes). Each image has
// one volume: a read-only view snapshot of it (held by a lease), mounted
// once on the host at <RootDir>/image-volumes/<hex of the image id>, and
// bind-mounted read-only (its image_sub_path, if any) into every container
// that asks for it.
//
// Its users are not counted in memory but read from the store, so that a
// restart or a kill -9 neither leaks nor loses a volume: a container's
// record lists the volumes it uses (Container.ImageVolumes), and the
// intent of a container being created lists them before they are
// prepared (Intent.ImageVolumes). A volume is released (unmounted, view
// and lease removed) when, under its key's lock, neither a container
// that is not being removed nor another intent names it. Recovery
// releases every volume left without a user and mounts again those in
// use (recoverImageVolumes).

// imageVolumesDir holds the host mounts of the image volumes.
func (r *Runtime) imageVolumesDir() string { return filepath.Join(r.cfg.RootDir, "image-volumes") }

// imageVolumeDir is where the volume of a key is mounted; "" for a key
// that is not an image volume's (recovery reads keys back from
// containerd and builds paths of them).
func (r *Runtime) imageVolumeDir(key string) string {
	if !image.IsImageVolumeKey(key) {
		return ""
	}
	hex := path.Base(key)
	if image.ImageVolumeKey(digest.Canonical.String()+":"+hex) != key || digest.Canonical.Validate(hex) != nil {
		return ""
	}
	return filepath.Join(r.imageVolumesDir(), hex)
}

// imageMount is an image mount of a request.
type imageMount struct {
	containerPath, ref, userRef, subPath string
}

// imageMounts checks the request's image mounts (before anything is
// reserved): read-only, no host path, a sub path that stays below the
// image's root.
func imageMounts(cfg *runtimeapi.ContainerConfig) ([]imageMount, error) {
	var out []imageMount
	for _, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() == "" {
			continue
		}
		dst := m.GetContainerPath()
		if m.GetHostPath() != "" {
			return nil, fmt.Errorf("mount at %q: host_path %q and image %q are exclusive: %w", dst, m.GetHostPath(), m.GetImage().GetImage(), errInvalid)
		}
		if !m.GetReadonly() {
			return nil, fmt.Errorf("mount at %q: image volume %q must be read-only: %w", dst, m.GetImage().GetImage(), errInvalid)
		}
		sub := m.GetImageSubPath()
		if sub != "" {
			clean := path.Clean(sub)
			if path.IsAbs(sub) || clean == ".." || strings.HasPrefix(clean, "../") || strings.ContainsRune(sub, 0) {
				return nil, fmt.Errorf("mount at %q: image_sub_path %q escapes image %q: %w", dst, sub, m.GetImage().GetImage(), errInvalid)
			}
		}
		out = append(out, imageMount{containerPath: path.Clean(dst), ref: m.GetImage().GetImage(), userRef: m.GetImage().GetUserSpecifiedImage(), subPath: sub})
	}
	return out, nil
}

// resolveImageVolumes finds the image of each image mount, pulling it
// through containerd when it is absent (with the registry config, as
// PullImage does; the CRI gives CreateContainer no credentials). An image
// named by id only cannot be pulled: NotFound.
func (r *Runtime) resolveImageVolumes(ctx context.Context, mounts []imageMount, log *slog.Logger) ([]sandbox.ImageVolume, error) {
	vols := make([]sandbox.ImageVolume, 0, len(mounts))
	for _, m := range mounts {
		img, err := r.cfg.Images.Resolve(ctx, m.ref)
		if errdefs.IsNotFound(err) {
			ref := m.ref
			if _, derr := digest.Parse(ref); derr == nil {
				ref = m.userRef // an id: pull what the user named, if anything
			}
			if ref == "" {
				return nil, fmt.Errorf("image volume at %q: image %q: %w", m.containerPath, m.ref, err)
			}
			log.Info("pulling the image of an image volume", "image", ref, "mount", m.containerPath)
			if _, err = r.cfg.Images.Pull(ctx, ref, nil); err == nil {
				img, err = r.cfg.Images.Resolve(ctx, m.ref)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("image volume at %q: image %q: %w", m.containerPath, m.ref, err)
		}
		vols = append(vols, sandbox.ImageVolume{ContainerPath: m.containerPath, ImageID: img.ID, Key: image.ImageVolumeKey(img.ID)})
	}
	return vols, nil
}

// volumeKeys are the distinct keys of vols.
func volumeKeys(vols []sandbox.ImageVolume) []string {
	var keys []string
	for _, v := range vols {
		if !slices.Contains(keys, v.Key) {
			keys = append(keys, v.Key)
		}
	}
	return keys
}

// acquireImageVolumes prepares and mounts each volume (unless it is
// already) and resolves each one's source (its image_sub_path). The
// caller recorded the keys in the container's intent first; on an error
// it releases them.
func (r *Runtime) acquireImageVolumes(ctx context.Context, id string, vols []sandbox.ImageVolume, mounts []imageMount, idmap *rootfsIDMap) error {
	roots := map[string]string{}
	for _, key := range volumeKeys(vols) {
		var imageID string
		for _, v := range vols {
			if v.Key == key {
				imageID = v.ImageID
			}
		}
		ms, err := r.mountImageVolume(ctx, key, imageID, id)
		if err != nil {
			return err
		}
		roots[key] = r.imageVolumeDir(key)
		if idmap != nil {
			// The pod's user namespace: a copy of the container's own,
			// its layers id-mapped.
			dir := r.imageVolumeCopyDir(key, id)
			if err := mountIDMappedVolume(ms, dir, idmap); err != nil {
				return fmt.Errorf("image volume of %s: %w", imageID, err)
			}
			roots[key] = dir
		}
	}
	for i := range vols {
		src, err := resolveSubPath(roots[vols[i].Key], mounts[i].subPath)
		if err != nil {
			return fmt.Errorf("image volume at %q: image %q: %w", mounts[i].containerPath, mounts[i].ref, err)
		}
		vols[i].Source = src
	}
	return nil
}

// mountImageVolume prepares the view of imageID and mounts it read-only
// at its dir, under the key's lock, for container user ("" at recovery); a
// mounted one is left as it is.
func (r *Runtime) mountImageVolume(ctx context.Context, key, imageID, user string) ([]image.Mount, error) {
	dir := r.imageVolumeDir(key)
	if dir == "" {
		return nil, fmt.Errorf("image volume key %q: %w", key, errInvalid)
	}
	unlock := r.volumes.lock(key)
	defer unlock()
	ms, err := r.cfg.Images.PrepareImageVolume(ctx, imageID)
	if err != nil {
		return nil, fmt.Errorf("image volume of %s: %w", imageID, err)
	}
	if mounted, err := isMountPoint(dir); err != nil {
		return nil, err
	} else if mounted {
		return ms, nil
	}
	if err := mountReadonly(ms, dir); err != nil {
		return nil, fmt.Errorf("image volume of %s: %w", imageID, err)
	}
	r.log.Info("image volume mounted", "container", user, "image_id", imageID, "snapshot", key, "dir", dir)
	return ms, nil
}

// imageVolumeCopyDir is where the id-mapped copy of a volume is mounted
// for a container of a pod with a user namespace: <volume dir>.<id>.
func (r *Runtime) imageVolumeCopyDir(key, id string) string {
	return r.imageVolumeDir(key) + "." + id
}

// mountIDMappedVolume mounts a view's mount at dir with its layers
// id-mapped with the pod's user namespace, as the rootfs is (runc cannot
// id-map a bind of the shared overlay mount: overlayfs refuses
// MOUNT_ATTR_IDMAP on Debian 12's 6.1), read-only: an overlay of lower
// dirs only, or a read-only bind.
func mountIDMappedVolume(ms []image.Mount, dir string, idmap *rootfsIDMap) error {
	if len(ms) != 1 {
		return fmt.Errorf("image volume: want one mount, got %d", len(ms))
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	if mounted, err := isMountPoint(dir); err != nil || mounted {
		return err
	}
	m := ms[0]
	if !slices.Contains(m.Options, "ro") && m.Type != "overlay" {
		m.Options = append(slices.Clone(m.Options), "ro")
	}
	if err := mountIDMappedRootfs(m, dir, idmap); err != nil {
		_ = os.Remove(dir)
		return err
	}
	return nil
}

// imageVolumeUsers counts the users of a volume other than the container
// (or intent) except: containers not being removed, and intents.
func (r *Runtime) imageVolumeUsers(key, except string) int {
	n := 0
	for _, c := range r.store.Containers() {
		if c.ID == except || c.Status.Removing {
			continue
		}
		if slices.ContainsFunc(c.ImageVolumes, func(v sandbox.ImageVolume) bool { return v.Key == key }) {
			n++
		}
	}
	for _, in := range r.store.Intents() {
		if in.ID != except && slices.Contains(in.ImageVolumes, key) {
			n++
		}
	}
	return n
}

// releaseImageVolumes releases each of keys that has no user left but
// except: unmounted, its view and lease removed. It reports whether every
// release that was due worked.
func (r *Runtime) releaseImageVolumes(ctx context.Context, keys []string, except string) bool {
	ok := true
	for _, key := range keys {
		if err := r.releaseImageVolume(ctx, key, except); err != nil {
			r.log.Error("release image volume", "snapshot", key, "container", except, "error", err)
			ok = false
		}
	}
	return ok
}

func (r *Runtime) releaseImageVolume(ctx context.Context, key, except string) error {
	dir := r.imageVolumeDir(key)
	if dir == "" {
		return fmt.Errorf("image volume key %q: %w", key, errInvalid)
	}
	unlock := r.volumes.lock(key)
	defer unlock()
	if except != "" {
		if err := unmountImageVolume(r.imageVolumeCopyDir(key, except)); err != nil {
			return err
		}
	}
	if n := r.imageVolumeUsers(key, except); n > 0 {
		r.log.Debug("image volume still in use", "snapshot", key, "users", n)
		return nil
	}
	if err := unmountImageVolume(dir); err != nil {
		return err
	}
	callCtx, cancel := bounded(ctx, podCallTimeout)
	defer cancel()
	if err := r.cfg.Images.RemoveImageVolume(callCtx, key); err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	r.log.Info("image volume released", "container", except, "snapshot", key, "dir", dir)
	return nil
}

// recoverImageVolumes runs after recoverIntents: every volume containerd
// holds or that is mounted here is released when nothing uses it, and
// mounted again (after a reboot) when something does.
func (r *Runtime) recoverImageVolumes(ctx context.Context) {
	callCtx, cancel := bounded(ctx, podCallTimeout)
	keys, err := r.cfg.Images.ImageVolumes(callCtx)
	cancel()
	if err != nil {
		r.log.Error("recover image volumes: list; left as they are", "error", err)
		return
	}
	if ents, err := os.ReadDir(r.imageVolumesDir()); err == nil {
		for _, e := range ents {
			if hex, id, ok := strings.Cut(e.Name(), "."); ok {
				r.recoverImageVolumeCopy(image.ImageVolumeKey(digest.Canonical.String()+":"+hex), id)
				continue
			}
			key := image.ImageVolumeKey(digest.Canonical.String() + ":" + e.Name())
			if r.imageVolumeDir(key) != "" && !slices.Contains(keys, key) {
				keys = append(keys, key)
			}
		}
	}
	for _, key := range keys {
		if r.imageVolumeUsers(key, "") == 0 {
			if err := r.releaseImageVolume(ctx, key, ""); err != nil {
				r.log.Error("recover image volumes: release; retried at the next start", "snapshot", key, "error", err)
			}
			continue
		}
		imageID := ""
		for _, c := range r.store.Containers() {
			for _, v := range c.ImageVolumes {
				if v.Key == key {
					imageID = v.ImageID
				}
			}
		}
		if imageID == "" {
			continue // named by an intent only: its container was not made
		}
		if _, err := r.mountImageVolume(ctx, key, imageID, ""); err != nil {
			r.log.Error("recover image volumes: mount a volume in use", "snapshot", key, "error", err)
		}
	}
}

// recoverImageVolumeCopy unmounts the id-mapped copy of a volume for a
// container that no longer uses it (gone, being removed, or its creation
// undone).
func (r *Runtime) recoverImageVolumeCopy(key, id string) {
	if r.imageVolumeDir(key) == "" || !validID(id) {
		r.log.Warn("recover image volumes: a dir of an unknown kind: left alone", "dir", filepath.Join(r.imageVolumesDir(), path.Base(key)+"."+id))
		return
	}
	if c, err := r.store.Container(id); err == nil && !c.Status.Removing {
		return
	}
	if in, ok := r.store.Intent(id); ok && slices.Contains(in.ImageVolumes, key) {
		return
	}
	if err := unmountImageVolume(r.imageVolumeCopyDir(key, id)); err != nil {
		r.log.Error("recover image volumes: unmount a container's copy; retried at the next start", "container", id, "snapshot", key, "error", err)
	}
}

// isMountPoint tells whether dir is the root of a mount (false when it is
// missing).
func isMountPoint(dir string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("statx %s: %w", dir, err)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("statx %s: the kernel does not report mount roots: %w", dir, errdefs.ErrNotImplemented)
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// mountReadonly mounts a view's one mount (a bind, or an overlay of lower
// dirs) read-only at dir.
func mountReadonly(mounts []image.Mount, dir string) error {
	if len(mounts) != 1 {
		return fmt.Errorf("image volume: want one mount, got %d", len(mounts))
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	m := mounts[0]
	flags, data := rootfsOptions(m)
	typ := m.Type
	if flags&unix.MS_BIND != 0 {
		typ = ""
		if err := unix.Mount(m.Source, dir, typ, flags&^unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("mount image volume at %s: %w", dir, err)
		}
		if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
			return fmt.Errorf("remount image volume read-only: %w", err)
		}
		return nil
	}
	if err := unix.Mount(m.Source, dir, typ, flags|unix.MS_RDONLY, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount image volume %s at %s: %w", m.Type, dir, err)
	}
	return nil
}

// unmountImageVolume unmounts dir (every mount stacked there) and removes
// it; a missing one is fine.
func unmountImageVolume(dir string) error {
	for {
		err := unix.Unmount(dir, 0)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if err != nil {
			return fmt.Errorf("unmount image volume %s: %w", dir, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// resolveSubPath resolves an image_sub_path below root (the volume's
// mount) with openat2: symlinks resolve as if root were "/" (as the
// container would see the image), never out of it, and never into another
// mount. It answers the path with no symlink left (the mount is read-only,
// so it cannot change under runc), or InvalidArgument naming the sub path
// when it does not exist.
func resolveSubPath(root, sub string) (string, error) {
	if sub == "" {
		return root, nil
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open image volume %s: %w", root, err)
	}
	defer unix.Close(rootFd)
	fd, err := unix.Openat2(rootFd, sub, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return "", fmt.Errorf("image_sub_path %q does not exist in the image: %w", sub, errInvalid)
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return "", fmt.Errorf("image_sub_path %q leaves the image: %w", sub, errInvalid)
	case err != nil:
		return "", fmt.Errorf("image_sub_path %q: %w", sub, err)
	}
	defer unix.Close(fd)
	rootPath, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", rootFd))
	if err != nil {
		return "", err
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if real != rootPath && !strings.HasPrefix(real, rootPath+"/") {
		return "", fmt.Errorf("image_sub_path %q resolves to %s, outside the image: %w", sub, real, errInvalid)
	}
	return real, nil
}
