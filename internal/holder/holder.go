// Package holder is the pod namespace holder: the process that makes a
// pod's new namespaces (started in them by pkg/aurae/pods), sets them up,
// confines itself and execs a tiny reaper that stays as the PID 1 of a pod
// that shares its PID namespace. It is its own small binary (cmd/aurae-holder,
// installed beside auraed) because a process's start costs what its binary's
// package initialisation costs: auraed's ~10 ms natively, ~1 s in a VM
// guest under TCG; auraed's own binary (/proc/self/exe, the holder role)
// stands in where aurae-holder is not installed. It imports nothing heavy:
// keep it so.
package holder

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// The contract between an auraed and the holders it starts (either
// binary): keep the names.
const (
	// Env selects the holder role (see pkg/aurae/roles) and carries the
	// namespaces it creates, comma-separated: net, ipc, uts, pid, mnt, user.
	Env = "_AURAE_POD_HOLDER"
	// EnvHostname and EnvSysctls (JSON) are what it sets up.
	EnvHostname = "_AURAE_POD_HOSTNAME"
	EnvSysctls  = "_AURAE_POD_SYSCTLS"
	// ReadyFD is the pipe on which the holder says "1" once ready, or why
	// it failed.
	ReadyFD = 3
	// BinaryName is the holder's own binary, looked for beside auraed's.
	BinaryName = "aurae-holder"
)

// Run is the holder's life, in a pod's new namespaces and a mount namespace
// of its own (with Env set): it sets them up (hostname, loopback, sysctls),
// confines itself (confine.go) and execs the reaper, which reports on the
// ready pipe and then reaps orphans until auraed kills it; it never
// returns. auraed pins the namespaces by bind mounts and kills it, unless
// the pod shares its pid namespace: a pid namespace dies with its init, so
// the holder then stays as the pod's init until Free.
func Run() {
	// Capabilities are dropped per thread, and exec takes this thread's.
	runtime.LockOSThread()
	ready := os.NewFile(ReadyFD, "ready")
	flags := strings.Split(os.Getenv(Env), ",")
	err := Setup(flags, os.Getenv(EnvHostname), os.Getenv(EnvSysctls))
	if err == nil && ReaperELF() == nil && !slices.Contains(flags, "pid") {
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

// Setup sets up the namespaces of flags that the calling thread is in: the
// hostname (uts), loopback (net) and the sysctls (JSON; net and ipc ones).
func Setup(flags []string, hostname, sysctls string) error {
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
