package cri

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"golang.org/x/sys/unix"
)

// Bounds of a checkpoint archive given to CreateContainer as its image: it
// is input from outside and read as hostile.
const (
	maxCheckpointArchive = 16 << 30
	maxCheckpointEntries = 1 << 16
	maxCheckpointJSON    = 4 << 20
)

// isCheckpointImage tells whether a CreateContainer image names a
// checkpoint archive (an absolute path, as CRI-O takes it) rather than an
// image reference.
func isCheckpointImage(image string) bool { return strings.HasPrefix(image, "/") }

// checkpointSource is an extracted checkpoint archive.
type checkpointSource struct {
	dir    string // below RootDir/checkpoints, removed by cleanup
	config metadata.ContainerConfig
}

func (s *checkpointSource) imagesDir() string {
	return filepath.Join(s.dir, metadata.CheckpointDirectory)
}

// openCheckpoint checks and extracts the archive at path into a fresh work
// directory: only directories and regular files, at local paths, within
// the bounds above; config.dump and the CRIU images must be there.
func (r *Runtime) openCheckpoint(ctx context.Context, path string) (_ *checkpointSource, retErr error) {
	if filepath.Clean(path) != path {
		return nil, fmt.Errorf("checkpoint archive %q is not a clean path: %w", path, errInvalid)
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags: unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint archive %q: %s: %w", path, err.Error(), errInvalid)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxCheckpointArchive {
		return nil, fmt.Errorf("checkpoint archive %q is not a regular file of at most %d bytes: %w", path, int64(maxCheckpointArchive), errInvalid)
	}
	dir, err := r.checkpointWorkDir()
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	if err := extractCheckpoint(ctx, f, dir); err != nil {
		return nil, fmt.Errorf("checkpoint archive %q: %w", path, err)
	}
	src := &checkpointSource{dir: dir}
	if err := readJSONBounded(filepath.Join(dir, metadata.ConfigDumpFile), &src.config); err != nil {
		return nil, fmt.Errorf("checkpoint archive %q: %s: %s: %w", path, metadata.ConfigDumpFile, err.Error(), errInvalid)
	}
	if src.config.RootfsImageRef == "" {
		return nil, fmt.Errorf("checkpoint archive %q: %s names no rootfs image: %w", path, metadata.ConfigDumpFile, errInvalid)
	}
	if fi, err := os.Lstat(filepath.Join(src.imagesDir(), "inventory.img")); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("checkpoint archive %q holds no CRIU images (%s/inventory.img): %w", path, metadata.CheckpointDirectory, errInvalid)
	}
	return src, nil
}

func readJSONBounded(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return json.NewDecoder(io.LimitReader(f, maxCheckpointJSON)).Decode(v)
}

// extractCheckpoint extracts the tar r into dir. Anything but a directory
// or a regular file at a local path is refused (InvalidArgument); files are
// created through an os.Root of dir, never replacing one.
func extractCheckpoint(ctx context.Context, r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer func() { _ = root.Close() }()
	tr := tar.NewReader(r)
	var total int64
	for n := 0; ; n++ {
		hdr, name, err := nextEntry(ctx, tr, n)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("entry %q: %s: %w", hdr.Name, err.Error(), errInvalid)
			}
		case tar.TypeReg:
			total += hdr.Size
			if hdr.Size < 0 || total > maxCheckpointArchive {
				return fmt.Errorf("entries larger than %d bytes: %w", int64(maxCheckpointArchive), errInvalid)
			}
			if d := filepath.Dir(name); d != "." {
				if err := root.MkdirAll(d, 0o700); err != nil {
					return fmt.Errorf("entry %q: %s: %w", hdr.Name, err.Error(), errInvalid)
				}
			}
			out, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("entry %q: %s: %w", hdr.Name, err.Error(), errInvalid)
			}
			_, err = io.Copy(out, io.LimitReader(tr, hdr.Size))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		default:
			return fmt.Errorf("entry %q is of type %q: only directories and regular files are accepted: %w", hdr.Name, hdr.Typeflag, errInvalid)
		}
	}
}

// applyRootfsDiff replays what the checkpointed container changed in its
// rootfs on the new container's (rootfs-diff.tar, then deleted.files),
// through an os.Root of the rootfs: a symlink in the image or the diff
// never leads a write outside it.
func applyRootfsDiff(ctx context.Context, rootfs, ckpt string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer func() { _ = root.Close() }()
	if f, err := os.Open(filepath.Join(ckpt, metadata.RootFsDiffTar)); err == nil {
		defer f.Close()
		if err := applyDiffTar(ctx, root, f); err != nil {
			return fmt.Errorf("%s: %w", metadata.RootFsDiffTar, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var deleted []string
	if err := readJSONBounded(filepath.Join(ckpt, metadata.DeletedFilesFile), &deleted); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %s: %w", metadata.DeletedFilesFile, err.Error(), errInvalid)
	}
	for _, p := range deleted {
		rel := strings.TrimPrefix(filepath.Clean("/"+p), "/")
		if rel == "" || !filepath.IsLocal(rel) {
			return fmt.Errorf("%s: %q is not a path in the rootfs: %w", metadata.DeletedFilesFile, p, errInvalid)
		}
		if err := root.RemoveAll(rel); err != nil {
			return fmt.Errorf("delete %s: %w", p, err)
		}
	}
	return nil
}

func applyDiffTar(ctx context.Context, root *os.Root, r io.Reader) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		hdr, name, err := nextEntry(ctx, tr, n)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		mode := fs.FileMode(hdr.Mode) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, mode); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeReg:
			if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			out, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			_, err = io.Copy(out, io.LimitReader(tr, hdr.Size))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		case tar.TypeSymlink:
			if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			continue
		default:
			return fmt.Errorf("entry %q is of type %q: %w", hdr.Name, hdr.Typeflag, errInvalid)
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if err := root.Chmod(name, mode); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

// nextEntry reads the n-th entry of a checkpoint's tar (hostile input):
// io.EOF at its end; InvalidArgument for a broken tar, too many entries or
// a name that is not a clean local path, which it answers without its
// trailing slash.
func nextEntry(ctx context.Context, tr *tar.Reader, n int) (*tar.Header, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	hdr, err := tr.Next()
	if errors.Is(err, io.EOF) {
		return nil, "", io.EOF
	}
	if err != nil {
		return nil, "", fmt.Errorf("not a valid tar: %s: %w", err.Error(), errInvalid)
	}
	if n >= maxCheckpointEntries {
		return nil, "", fmt.Errorf("more than %d entries: %w", maxCheckpointEntries, errInvalid)
	}
	name := strings.TrimSuffix(hdr.Name, "/")
	if !filepath.IsLocal(name) || filepath.Clean(name) != name {
		return nil, "", fmt.Errorf("entry %q is not a local path: %w", hdr.Name, errInvalid)
	}
	return hdr, name, nil
}
