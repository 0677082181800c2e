package pods

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/holder"
)

// A pod that shares no pid namespace and has no user namespace needs no
// process to hold its namespaces: they are made by a thread of auraed's own
// and pinned by bind mounts, as containerd makes a pod's network namespace,
// without the holder's exec (auraed's binary started again, moved into the
// pod's cgroup, confined, then killed). The thread, locked to its
// goroutine, unshares its net, ipc and uts namespaces, sets them up as a
// holder would (holder.Setup: hostname, loopback, sysctls), pins them and
// goes back to its own namespaces before it is unlocked. Should it fail to
// go back, it stays locked and the goroutine exits: the Go runtime then
// ends the thread (or, if it is the main thread, parks it for good), so no
// other goroutine ever runs in the pod's namespaces. A user namespace cannot be
// unshared by a multi-threaded process, and a pid namespace needs an init:
// those pods keep the holder.

// threadNamespaces tells whether the pod's namespaces can be made by a
// thread (see above).
func (p *pod) threadNamespaces() bool { return !p.ownsPID() && !p.ownsUser() }

// makeNamespacesInThread makes the pod's own net, ipc and uts namespaces
// in a throw-away thread and pins them at pins[kind].
func makeNamespacesInThread(h holderSpec, pins map[string]string) error {
	var flags []string
	var clone int
	for _, ns := range []struct {
		on   bool
		name string
		flag int
	}{{h.net, "net", unix.CLONE_NEWNET}, {h.ipc, "ipc", unix.CLONE_NEWIPC}, {h.uts, "uts", unix.CLONE_NEWUTS}} {
		if ns.on {
			flags = append(flags, ns.name)
			clone |= ns.flag
		}
	}
	if h.pid || h.user != nil {
		return fmt.Errorf("pod namespaces: a thread cannot make pid or user namespaces")
	}
	sysctls := ""
	if len(h.sysctls) > 0 {
		b, err := json.Marshal(h.sysctls)
		if err != nil {
			return err
		}
		sysctls = string(b)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread's own namespaces, to go back to.
		var own []int
		defer func() {
			for _, fd := range own {
				unix.Close(fd)
			}
		}()
		for _, kind := range flags {
			fd, err := unix.Open("/proc/thread-self/ns/"+kind, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- fmt.Errorf("pod namespaces: %w", err)
				return
			}
			own = append(own, fd)
		}
		err := func() error {
			if err := unix.Unshare(clone); err != nil {
				return fmt.Errorf("pod namespaces: unshare: %w", err)
			}
			if err := holder.Setup(flags, h.hostname, sysctls); err != nil {
				return fmt.Errorf("pod namespaces: %w", err)
			}
			var pinned []string
			for _, kind := range flags {
				src := fmt.Sprintf("/proc/%d/task/%d/ns/%s", os.Getpid(), unix.Gettid(), kind)
				if err := pinFrom(src, kind, pins[kind]); err != nil {
					for _, t := range pinned {
						_ = unpin(t)
					}
					return err
				}
				pinned = append(pinned, pins[kind])
			}
			return nil
		}()
		for _, fd := range own {
			if serr := unix.Setns(fd, 0); serr != nil {
				// Still locked: the thread ends with this goroutine.
				done <- errors.Join(err, fmt.Errorf("pod namespaces: back to auraed's own: %w", serr))
				return
			}
		}
		runtime.UnlockOSThread()
		done <- err
	}()
	return <-done
}
