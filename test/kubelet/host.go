package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Tunables are the kernel tunables the kubelet's container manager sets at
// start (setupKernelTunables in pkg/kubelet/cm: vm.overcommit_memory=1,
// vm.panic_on_oom=0, kernel.panic=10, kernel.panic_on_oops=1,
// kernel.keys.root_maxkeys=1000000, kernel.keys.root_maxbytes=25000000).
// protectKernelDefaults=true would make it fail instead, so the tests let
// it set them and restore the values from before the first test kubelet
// when the last one stops.
var Tunables = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// hostDirs are the dirs the kubelet creates whatever its configuration
// says, each with whether the last test kubelet removes it (when it did not
// exist before the first one) with everything in it, or only when empty:
//   - /var/lib/kubelet: the device manager's socket,
//     device-plugins/kubelet.sock, is hard-coded
//     (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1.DevicePluginPath);
//   - /var/log/containers: the legacy "<pod>_<ns>_<ctr>-<id>.log" symlinks
//     to the container logs (each kubelet removes its own at cleanup).
var hostDirs = []struct {
	path string
	all  bool
}{
	{"/var/lib/kubelet", true},
	{legacyLogDir, false},
}

// legacyLogDir holds the kubelet's symlinks to container logs.
const legacyLogDir = "/var/log/containers"

// Files that coordinate the test kubelets of every test process on the
// machine (go test runs packages in parallel): lockPath serializes start
// and stop, each running kubelet holds a shared lock on usersPath, and
// statePath holds the tunables' values from before the first one.
var (
	hostDir   = "/run"
	lockPath  = func() string { return filepath.Join(hostDir, "aurae-test-kubelet.lock") }
	usersPath = func() string { return filepath.Join(hostDir, "aurae-test-kubelet.users") }
	statePath = func() string { return filepath.Join(hostDir, "aurae-test-kubelet.state") }
)

type hostState struct {
	users *os.File
}

// savedState is the content of statePath.
type savedState struct {
	// Tunables maps each of Tunables to its value before the first kubelet.
	Tunables map[string]string `json:"tunables"`
	// Existed tells, for each of hostDirs, whether it existed before.
	Existed map[string]bool `json:"existed"`
}

// acquireHostState records the tunables (when no other test kubelet runs)
// and registers one more running kubelet.
func acquireHostState() (*hostState, error) {
	unlock, err := lockHost()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(statePath()); errors.Is(err, fs.ErrNotExist) {
		st := savedState{Tunables: map[string]string{}, Existed: map[string]bool{}}
		for _, s := range Tunables {
			b, err := os.ReadFile(filepath.Join("/proc/sys", s))
			if err != nil {
				return nil, err
			}
			st.Tunables[s] = strings.TrimSpace(string(b))
		}
		for _, d := range hostDirs {
			_, err := os.Lstat(d.path)
			st.Existed[d.path] = err == nil
		}
		b, err := json.Marshal(st)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(statePath(), b, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(usersPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", usersPath(), err)
	}
	return &hostState{users: f}, nil
}

// release unregisters this kubelet; the last one restores the tunables,
// removes the hostDirs that the kubelets created, and removes the coordination files.
func (h *hostState) release() error {
	unlock, err := lockHost()
	if err != nil {
		_ = h.users.Close()
		return err
	}
	defer unlock()
	last := unix.Flock(int(h.users.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
	defer h.users.Close()
	if !last {
		return nil
	}
	var errs []error
	b, err := os.ReadFile(statePath())
	if err != nil {
		return err
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", statePath(), err)
	}
	for _, d := range hostDirs {
		if existed, ok := st.Existed[d.path]; !ok || existed {
			continue
		}
		var err error
		if d.all {
			err = os.RemoveAll(d.path)
		} else if err = os.Remove(d.path); errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTEMPTY) {
			err = nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range Tunables {
		v, ok := st.Tunables[s]
		if !ok {
			continue
		}
		p := filepath.Join("/proc/sys", s)
		if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == v {
			continue
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// Keep the state: the next kubelet's last user retries.
		return errors.Join(errs...)
	}
	return errors.Join(os.Remove(statePath()), os.Remove(usersPath()))
}

// lockHost takes the machine-wide lock. The lock file is removed by the
// last user, so a lock taken on a file that was meanwhile unlinked is
// retried on the new one.
func lockHost() (unlock func(), err error) {
	for {
		f, err := os.OpenFile(lockPath(), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockPath(), err)
		}
		var held, named unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(lockPath(), &named) == nil &&
			held.Ino == named.Ino && held.Dev == named.Dev {
			return func() {
				// Remove the lock file when no kubelet runs any more; a
				// waiter then retries on a new file.
				if _, err := os.Stat(usersPath()); errors.Is(err, fs.ErrNotExist) {
					_ = os.Remove(lockPath())
				}
				_ = f.Close()
			}, nil
		}
		_ = f.Close()
	}
}

// createCgroups creates the cgroup root (a cgroupfs path such as
// "/aurae-e2e") in every cgroup v1 hierarchy, or in the unified hierarchy
// on a cgroup v2 host: the kubelet refuses a cgroupRoot that does not
// exist.
func createCgroups(root string) error {
	root = strings.Trim(root, "/")
	if root == "" {
		return errors.New("empty cgroup root")
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return os.MkdirAll(filepath.Join("/sys/fs/cgroup", root), 0o755)
	}
	// v1 hierarchies have a tasks file; the unified one of a hybrid host
	// does not, and the kubelet does not use it.
	tasks, err := filepath.Glob("/sys/fs/cgroup/*/tasks")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		if err := os.MkdirAll(filepath.Join(filepath.Dir(t), root), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// removeCgroups removes the cgroup root (a cgroupfs path such as
// "/aurae-e2e") and everything below it in every cgroup v1 hierarchy and
// in the unified one, deepest first. Missing dirs are fine.
func removeCgroups(root string) error {
	// A cgroup whose last process just exited may stay busy for a moment.
	var err error
	for i := 0; i < 50; i++ {
		if err = removeCgroupsOnce(root); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func removeCgroupsOnce(root string) error {
	root = strings.Trim(root, "/")
	if root == "" {
		return nil
	}
	mounts, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return err
	}
	mounts = append(mounts, "/sys/fs/cgroup")
	var errs []error
	for _, m := range mounts {
		top := filepath.Join(m, root)
		var dirs []string
		err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeLogLinks removes the symlinks of legacyLogDir that point under
// podLogsDir: the kubelet removes them only when it garbage-collects the
// containers, which the runtime's cleanup may do instead.
func removeLogLinks(podLogsDir string) error {
	entries, err := os.ReadDir(legacyLogDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(legacyLogDir, e.Name())
		target, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(target, podLogsDir+string(filepath.Separator)) {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
