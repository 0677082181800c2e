package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// containerLogPath resolves a container's log_path (relative, already
// lexically checked by cleanRelative) under its pod's log_directory. conmon
// later opens that path on the host as root, and a workload that can write
// into the log directory (a hostPath mount of it) could plant a symlink
// there: so every existing component below the directory, and the file
// itself when it exists, must be a real directory (a regular file), never a
// symlink. The walk opens each component with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS) from the one before. With create, missing
// directories are made on the way (mkdirat from the parent's descriptor),
// and the log directory itself when it is missing; without it, the walk
// stops at the first missing one.
func containerLogPath(logDir, rel string, create bool) (string, error) {
	if logDir == "" || rel == "" {
		return "", nil
	}
	full := filepath.Join(logDir, rel)
	// conmon opens it by this path: refused before the walk, which stops
	// at the first missing directory when it does not create them.
	if len(full) >= unix.PathMax {
		return "", fmt.Errorf("log path %q under %s is longer than %d bytes: %w", rel, logDir, unix.PathMax-1, errInvalid)
	}
	parts := strings.Split(rel, "/")
	for _, name := range parts {
		if len(name) > unix.NAME_MAX {
			return "", fmt.Errorf("log path %q: a name is longer than %d bytes: %w", rel, unix.NAME_MAX, errInvalid)
		}
	}
	if create {
		// The kubelet's own directory: it names it, the workload does not.
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			return "", fmt.Errorf("log directory: %w", err)
		}
	}
	dir, err := unix.Open(logDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && !create {
		return full, nil
	}
	if err != nil {
		return "", fmt.Errorf("log directory %s: %w", logDir, requestErr(err))
	}
	defer func() { unix.Close(dir) }()
	for _, name := range parts[:len(parts)-1] {
		next, err := openBeneath(dir, name)
		if errors.Is(err, unix.ENOENT) {
			if !create {
				return full, nil
			}
			if err := unix.Mkdirat(dir, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", fmt.Errorf("log path %q: make %s: %w", rel, name, err)
			}
			next, err = openBeneath(dir, name)
		}
		if err != nil {
			return "", refuseLogPath(rel, name, err)
		}
		unix.Close(dir)
		dir = next
	}
	base := parts[len(parts)-1]
	var st unix.Stat_t
	err = unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return "", fmt.Errorf("log path %q: %w", rel, requestErr(err))
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return "", fmt.Errorf("log path %q exists and is not a regular file (a symlink?): %w", rel, errInvalid)
	}
	return full, nil
}

// openBeneath opens the directory name right below dir, refusing a symlink.
func openBeneath(dir int, name string) (int, error) {
	return unix.Openat2(dir, name, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
	})
}

func refuseLogPath(rel, name string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("log path %q: %s is a symlink or not a directory: %w", rel, name, errInvalid)
	}
	return fmt.Errorf("log path %q: %s: %w", rel, name, requestErr(err))
}

// requestErr gives the errors of a path walk that the request's path
// causes (a name longer than NAME_MAX, a file where a directory must be, a
// symlink loop) the kind InvalidArgument; others (EACCES, EIO) are the
// host's and keep theirs.
func requestErr(err error) error {
	if errors.Is(err, unix.ENAMETOOLONG) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%w: %w", err, errInvalid)
	}
	return err
}
