package netcni

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// NetNSPath is where NewNetNS pins the network namespace of podID.
func (m *Manager) NetNSPath(podID string) string {
	return filepath.Join(m.nsDir, "cni-"+filepath.Base(podID))
}

// NewNetNS creates a network namespace for podID, pinned by a bind mount at
// NetNSPath(podID), and returns that path.
func (m *Manager) NewNetNS(podID string) (string, error) {
	p := m.NetNSPath(podID)
	if err := CreateNetNS(p); err != nil {
		return "", err
	}
	return p, nil
}

// CreateNetNS creates a new network namespace and pins it by bind-mounting it
// on path (a new file; its directory is created if needed).
func CreateNetNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		mountErr := unix.Mount(src, path, "none", unix.MS_BIND, "")
		// Back home before the thread serves other goroutines. Should that
		// fail, the thread stays locked and dies with this goroutine (a
		// locked main thread would instead stay in the namespace, pinning it).
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		if mountErr != nil {
			errc <- fmt.Errorf("bind mount %s: %w", src, mountErr)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

// RemoveNetNS unmounts and removes a namespace pinned by CreateNetNS. A path
// that is already gone is not an error.
func RemoveNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// isNetNS reports whether path is a pinned network namespace.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// loopbackUp brings up the lo interface of the network namespace pinned
// at path, as the CNI loopback plugin would, from a thread of this process.
func loopbackUp(path string) error {
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		// setns refuses a file that is not a network namespace.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", path, err)
			return
		}
		upErr := linux.LoopbackUp()
		// As in CreateNetNS: a thread that cannot go home dies locked.
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- upErr
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("loopback of %s: %w", path, err)
	}
	return nil
}
