package vm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/durable"
)

// The host side of a container's log: its file, opened without following a
// symlink, found again by inode after a restart, and its position record.

// resume opens the file of the record: the one at the path when it is the
// recorded one; else the recorded one renamed beside it (the kubelet's
// rotation renames first, and renames back when the reopen fails); else
// what is at the path (made when missing). The file is cut back to the
// recorded size when it is the recorded one.
func (w *logWriter) resume() error {
	p := &w.pos
	f, st, err := openLogFile(p.Path, false)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("log of %s: %w", w.id, err)
	}
	same := f != nil && p.Ino != 0 && st.Dev == p.Dev && st.Ino == p.Ino
	if !same && p.Ino != 0 {
		if g, gst, ok := findInode(filepath.Dir(p.Path), p.Dev, p.Ino); ok {
			w.log.Info("container log: following the recorded file, renamed beside its path", "path", p.Path, "name", g.Name())
			if f != nil {
				f.Close()
			}
			f, st, same = g, gst, true
		}
	}
	if f == nil {
		if f, st, err = openLogFile(p.Path, true); err != nil {
			return fmt.Errorf("log of %s: %w", w.id, err)
		}
	}
	if !same {
		p.Dev, p.Ino, p.Size = st.Dev, st.Ino, st.Size
	}
	switch {
	case st.Size > p.Size:
		// Written after the record: the guest sends it again.
		w.log.Info("container log cut back to its record", "size", st.Size, "recorded", p.Size)
		if err := f.Truncate(p.Size); err != nil {
			f.Close()
			return fmt.Errorf("log of %s: cut back to %d: %w", w.id, p.Size, err)
		}
	case st.Size < p.Size:
		w.log.Warn("container log is shorter than recorded (cut by someone else)", "size", st.Size, "recorded", p.Size)
		p.Size = st.Size
	}
	w.f = f
	return nil
}

type fileID struct {
	Size     int64
	Dev, Ino uint64
}

// openLogFile opens (with create, making it when missing) the log file at
// path for appending: below its directory, with no symlink followed, and
// only when it is a regular file (a fifo would block, a device is not a
// log).
func openLogFile(path string, create bool) (*os.File, fileID, error) {
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("log directory: %w", err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, filepath.Base(path), appendHow(create))
	if err != nil {
		return nil, fileID{}, fmt.Errorf("open %s: %w", path, err)
	}
	return checkLogFile(fd, path)
}

// appendHow opens a log file for appending, right below its directory, with
// no symlink or magic link followed and without blocking on a fifo; create
// makes it (0640) when missing.
func appendHow(create bool) *unix.OpenHow {
	how := &unix.OpenHow{
		Flags:   unix.O_WRONLY | unix.O_APPEND | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	if create {
		how.Flags |= unix.O_CREAT
		how.Mode = 0o640
	}
	return how
}

func checkLogFile(fd int, path string) (*os.File, fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fileID{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fileID{}, fmt.Errorf("%s is not a regular file: %w", path, errdefs.ErrFailedPrecondition)
	}
	return os.NewFile(uintptr(fd), path), fileID{Size: st.Size, Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// findInode looks in dir for the regular file dev/ino, without following
// symlinks, and opens it for appending.
func findInode(dir string, dev, ino uint64) (*os.File, fileID, bool) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fileID{}, false
	}
	defer d.Close()
	names, err := d.Readdirnames(4096)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fileID{}, false
	}
	for _, name := range names {
		var st unix.Stat_t
		if unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil ||
			st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Dev) != dev || st.Ino != ino {
			continue
		}
		fd, err := unix.Openat2(int(d.Fd()), name, appendHow(false))
		if err != nil {
			return nil, fileID{}, false
		}
		f, id, err := checkLogFile(fd, filepath.Join(dir, name))
		if err != nil || id.Dev != dev || id.Ino != ino {
			if f != nil {
				f.Close()
			}
			continue
		}
		return f, id, true
	}
	return nil, fileID{}, false
}

// persist makes the file's content durable and then the record of it.
func (w *logWriter) persist() error {
	if w.pos == w.disk {
		return nil
	}
	if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
		return fmt.Errorf("sync log of %s: %w", w.id, err)
	}
	b, err := json.Marshal(w.pos)
	if err != nil {
		return err
	}
	if err := durable.ReplaceFile(w.recPath, b, 0o600); err != nil {
		return fmt.Errorf("log position of %s: %w", w.id, err)
	}
	w.disk = w.pos
	return nil
}
