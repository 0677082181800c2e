package cri

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"golang.org/x/sys/unix"
)

// openDirNoSymlinks opens an absolute directory path without following a
// symlink in any of its components.
func openDirNoSymlinks(dir string) (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, dir, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, &os.PathError{Op: "openat2", Path: dir, Err: err}
	}
	return fd, nil
}

// checkpointLocation checks where a checkpoint archive goes: an absolute,
// clean path whose directory exists (reached without symlinks) and which
// does not exist itself (a file there is not ours to overwrite).
func checkpointLocation(loc string) (string, error) {
	if loc == "" {
		return "", fmt.Errorf("checkpoint location is empty: %w", errInvalid)
	}
	if !filepath.IsAbs(loc) || filepath.Clean(loc) != loc || loc == "/" || strings.ContainsRune(loc, 0) {
		return "", fmt.Errorf("checkpoint location %q is not a clean absolute path: %w", loc, errInvalid)
	}
	fd, err := openDirNoSymlinks(filepath.Dir(loc))
	if err != nil {
		return "", fmt.Errorf("checkpoint location %q: its directory: %s: %w", loc, err.Error(), errInvalid)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, filepath.Base(loc), &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return "", fmt.Errorf("checkpoint location %q exists: %w", loc, errAlreadyExists)
	} else if !errors.Is(err, unix.ENOENT) {
		return "", fmt.Errorf("checkpoint location %q: %w", loc, err)
	}
	return loc, nil
}

// writeArchive writes the tree at dir as an uncompressed tar at loc. The
// tar is made as an unnamed file in loc's directory (O_TMPFILE) and linked
// at loc only once complete: a failure, a cancelled ctx or a crash leaves
// nothing, and an entry made at loc meanwhile is not replaced.
func writeArchive(ctx context.Context, dir, loc string) (int64, error) {
	dfd, err := openDirNoSymlinks(filepath.Dir(loc))
	if err != nil {
		return 0, err
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("unnamed file in %s: %w", filepath.Dir(loc), err)
	}
	f := os.NewFile(uintptr(fd), loc)
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		return addTarEntry(tw, p, filepath.ToSlash(rel))
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), dfd, filepath.Base(loc), unix.AT_SYMLINK_FOLLOW); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("checkpoint location %q exists: %w", loc, errAlreadyExists)
		}
		return 0, fmt.Errorf("link %s: %w", loc, err)
	}
	return st.Size(), nil
}

// addTarEntry adds the file at p (not followed) under name.
func addTarEntry(tw *tar.Writer, p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	hdr.Name = name
	hdr.Uname, hdr.Gname = "", ""
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}

// overlayUpperDir is the upper directory of the overlay mounted at target.
func overlayUpperDir(target string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	upper := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || fields[4] != target {
			continue
		}
		rest := strings.Fields(post)
		if len(rest) < 3 || rest[0] != "overlay" {
			upper = ""
			continue
		}
		for _, o := range strings.Split(rest[2], ",") {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v // the last mount at target is the visible one
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if upper == "" {
		return "", fmt.Errorf("the rootfs at %s is not an overlay with an upper dir: %w", target, errPrecondition)
	}
	return upper, nil
}

// writeRootfsDiff writes what the container changed in its rootfs (the
// overlay's upper dir) as work/rootfs-diff.tar, and the files it deleted
// (the whiteouts) as work/deleted.files, a JSON list, as CRI-O does.
func writeRootfsDiff(ctx context.Context, rootfs, work string) error {
	upper, err := overlayUpperDir(rootfs)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(work, metadata.RootFsDiffTar), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	deleted := []string{}
	err = filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(upper, p)
		if err != nil || rel == "." {
			return err
		}
		if d.Type()&fs.ModeCharDevice != 0 {
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			if st.Rdev == 0 { // an overlay whiteout: deleted
				deleted = append(deleted, "/"+filepath.ToSlash(rel))
				return nil
			}
		}
		return addTarEntry(tw, p, filepath.ToSlash(rel))
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return err
	}
	b, err := json.Marshal(deleted)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(work, metadata.DeletedFilesFile), b, 0o600)
}
