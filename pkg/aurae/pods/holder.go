package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/holder"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// The namespace holder (internal/holder) runs cmd/aurae-holder where it is
// installed beside this binary (holderBinary), else this binary itself
// (/proc/self/exe) in the holder role, chosen in roles.Run at the top of
// main (and of TestMain in the packages whose tests start holders).
const (
	// HolderEnv selects the holder role: see holder.Env.
	HolderEnv = holder.Env
	// holderTimeout bounds the wait for a holder to be ready.
	holderTimeout = 10 * time.Second
	// selfExe is this process's binary, re-executed in a role (roles.Run).
	selfExe = "/proc/self/exe"
)

// RunHolder is the pod namespace holder role (holder.Run); only roles.Run
// calls it.
func RunHolder() { holder.Run() }

// holderPath is the binary h's holder runs: holderBinary, but this
// binary's own for a holder in a user namespace, which execs as a user of
// the pod's mapping and may not traverse the directories to aurae-holder
// (/proc/self/exe needs no traversal).
func holderPath(user bool) string {
	if user {
		return selfExe
	}
	return holderBinary()
}

// holderBinary is the binary a holder runs: aurae-holder beside this
// process's binary when it is a regular file owned by root that only root
// can write, else this binary.
var holderBinary = sync.OnceValue(func() string {
	exe, err := os.Executable()
	if err != nil {
		return selfExe
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return selfExe
	}
	p := filepath.Join(filepath.Dir(exe), holder.BinaryName)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 0 || st.Mode&0o022 != 0 || st.Mode&0o100 == 0 {
		return selfExe
	}
	return p
})

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
	cmd := exec.Command(holderPath(h.user != nil))
	cmd.Args = []string{"aurae-pod-holder"}
	// Its own mount namespace, too, where it hides the host's tree.
	flags = append(flags, "mnt")
	clone |= unix.CLONE_NEWNS
	cmd.Env = []string{holder.Env + "=" + strings.Join(flags, ","), holder.EnvHostname + "=" + h.hostname, holder.EnvSysctls + "=" + sc}
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: clone, Setsid: true}
	if h.user != nil {
		// The user namespace is made first by clone, so it owns the others.
		flags = append(flags, "user")
		cmd.Env[0] = holder.Env + "=" + strings.Join(flags, ",")
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
