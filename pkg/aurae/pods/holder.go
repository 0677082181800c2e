package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// The namespace holder is auraed's own binary (/proc/self/exe) started in
// the pod's new namespaces and a mount namespace of its own. It sets the
// hostname, brings up loopback, writes the pod's sysctls, confines itself
// (holder_confine.go: an empty read-only root, no capabilities, not
// dumpable) and execs a tiny reaper from a sealed memfd, which says it is
// ready and then reaps orphans. auraed pins its namespaces by bind mounts and
// kills it, unless the pod shares its pid namespace: a pid namespace dies
// with its init, so the holder then stays as the pod's init until Free. The
// binary becomes a holder in roles.Run, at the top of main (and of TestMain
// in the packages whose tests start holders).
const (
	// HolderEnv selects the holder role (see pkg/aurae/roles) and carries
	// the namespaces it creates. The name is a contract between an auraed
	// and the holders it started: keep it.
	HolderEnv   = "_AURAE_POD_HOLDER"
	envHostname = "_AURAE_POD_HOSTNAME"
	envSysctls  = "_AURAE_POD_SYSCTLS"
	holderFD    = 3
	// holderTimeout bounds the wait for a holder to be ready.
	holderTimeout = 10 * time.Second
)

// RunHolder is the pod namespace holder role: the life of this binary when
// startHolder started it (with HolderEnv set) in a pod's new namespaces. It
// sets them up, confines itself and execs the reaper, which reports on the
// ready pipe and then reaps orphans until auraed kills it; it never
// returns. Only roles.Run calls it.
func RunHolder() {
	// Capabilities are dropped per thread, and exec takes this thread's.
	runtime.LockOSThread()
	ready := os.NewFile(holderFD, "ready")
	flags := strings.Split(os.Getenv(HolderEnv), ",")
	err := setupHolder(flags, os.Getenv(envHostname), os.Getenv(envSysctls))
	if err == nil && holderReaperELF() == nil && !slices.Contains(flags, "pid") {
		// No reaper for this architecture: a holder that auraed kills once
		// it has pinned the namespaces may stay as it is until then.
		linux.ReadyAndReap(ready)
	}
	if err == nil {
		// Only on failure does it return; only Free (SIGKILL) ends the reaper.
		err = confineHolder(slices.Contains(flags, "mnt"))
	}
	_, _ = fmt.Fprintf(ready, "pod namespace holder: %v", err)
	os.Exit(1)
}

func setupHolder(flags []string, hostname, sysctls string) error {
	has := func(f string) bool { return slices.Contains(flags, f) }
	if has("uts") && hostname != "" {
		if err := unix.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if has("net") {
		if err := linux.LoopbackUp(); err != nil {
			return err
		}
	}
	if sysctls != "" {
		var m map[string]string
		if err := json.Unmarshal([]byte(sysctls), &m); err != nil {
			return fmt.Errorf("sysctls: %w", err)
		}
		for k, v := range m {
			// /proc/sys/net and the ipc sysctls show the namespaces of the
			// process that opens them: ours.
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
			}
		}
	}
	return nil
}

// holderSpec says which namespaces a holder creates.
type holderSpec struct {
	net, ipc, uts, pid bool
	hostname           string
	sysctls            map[string]string
	place              func(pid int) error
	// user, when set, makes the holder's namespaces in a new user
	// namespace with these mappings, which then owns them; the holder runs
	// as its root (a host id of the mapping, not host root).
	user *podsv0.UserNamespace
}

// startHolder starts a holder and waits until it is ready. The caller pins
// its namespaces and then kills it or keeps it; cmd.Wait is the caller's.
func startHolder(h holderSpec) (*exec.Cmd, error) {
	var flags []string
	var clone uintptr
	for _, ns := range []struct {
		on   bool
		name string
		flag uintptr
	}{{h.net, "net", unix.CLONE_NEWNET}, {h.ipc, "ipc", unix.CLONE_NEWIPC}, {h.uts, "uts", unix.CLONE_NEWUTS}, {h.pid, "pid", unix.CLONE_NEWPID}} {
		if ns.on {
			flags = append(flags, ns.name)
			clone |= ns.flag
		}
	}
	sc := ""
	if len(h.sysctls) > 0 {
		b, err := json.Marshal(h.sysctls)
		if err != nil {
			return nil, err
		}
		sc = string(b)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = []string{"aurae-pod-holder"}
	// Its own mount namespace, too, where it hides the host's tree.
	flags = append(flags, "mnt")
	clone |= unix.CLONE_NEWNS
	cmd.Env = []string{HolderEnv + "=" + strings.Join(flags, ","), envHostname + "=" + h.hostname, envSysctls + "=" + sc}
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: clone, Setsid: true}
	if h.user != nil {
		// The user namespace is made first by clone, so it owns the others.
		flags = append(flags, "user")
		cmd.Env[0] = HolderEnv + "=" + strings.Join(flags, ",")
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = sysProcIDMaps(h.user.GetUidMappings())
		cmd.SysProcAttr.GidMappings = sysProcIDMaps(h.user.GetGidMappings())
		// Containers of the pod set their groups.
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return nil, fmt.Errorf("start namespace holder: %w", err)
	}
	fail := func(err error) (*exec.Cmd, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	if h.place != nil {
		if err := h.place(cmd.Process.Pid); err != nil {
			return fail(fmt.Errorf("place namespace holder: %w", err))
		}
	}
	if err := linux.WaitReady(context.Background(), readyR, holderTimeout); err != nil {
		return fail(fmt.Errorf("namespace holder: %w", err))
	}
	return cmd, nil
}

func sysProcIDMaps(ms []*podsv0.IDMapping) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, 0, len(ms))
	for _, m := range ms {
		out = append(out, syscall.SysProcIDMap{ContainerID: int(m.GetContainerId()), HostID: int(m.GetHostId()), Size: int(m.GetSize())})
	}
	return out
}

// pin bind-mounts /proc/<pid>/ns/<kind> on target, which it creates.
func pin(pid int, kind, target string) error {
	return pinFrom(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), kind, target)
}

// pinFrom bind-mounts the namespace file src on target, which it creates.
func pinFrom(src, kind, target string) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("pin %s namespace: %w", kind, err)
	}
	f.Close()
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(target)
		return fmt.Errorf("pin %s namespace: bind %s: %w", kind, src, err)
	}
	return nil
}

// unpin unmounts and removes a pinned namespace file; a missing one is fine.
func unpin(target string) error {
	for {
		err := unix.Unmount(target, unix.MNT_DETACH)
		if err == nil {
			continue // stacked mounts after a retried pin
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		return fmt.Errorf("unpin %s: %w", target, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
