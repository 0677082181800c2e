package pods

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// watchOOM follows the memory.events of a container's cgroup on cgroup v2
// while it exists and marks the container OOM-killed (c.oomSeen) as soon
// as its oom_kill counter is not 0, as containerd's shim watches it. Under
// the systemd driver the container's scope, and its memory.events, go with
// its last process, often before the exit is read; conmon's own watch (its
// "oom" file) loses that race when it handles the exit first. Nothing is
// watched on cgroup v1, where the counter stays until runc's delete.
func (s *Service) watchOOM(c *container, cgroupPath string) {
	if cgroupPath == "" || !cgroup.Unified() {
		return
	}
	s.watchOOMFile(c, cgroup.ControllerFile(cgroupPath, "", "memory.events"))
}

// watchOOMFile watches file (a memory.events) for c until it is removed,
// an OOM kill is seen, or the service closes.
func (s *Service) watchOOMFile(c *container, file string) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		s.log.Debug("watch for OOM kills", "container", c.id, "error", err)
		return
	}
	if _, err := unix.InotifyAddWatch(fd, file, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		if !errors.Is(err, unix.ENOENT) {
			s.log.Debug("watch for OOM kills", "container", c.id, "file", file, "error", err)
		}
		return
	}
	if oomKillsIn(file) {
		c.oomSeen.Store(true)
		unix.Close(fd)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer unix.Close(fd)
		buf := make([]byte, 4096)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(s.closing), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return
			}
			if fds[1].Revents != 0 {
				return
			}
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			gone := false
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if ev.Mask&unix.IN_IGNORED != 0 {
					gone = true
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
			if oomKillsIn(file) {
				c.oomSeen.Store(true)
				return
			}
			if gone {
				return
			}
		}
	}()
}

// oomKillsIn reports whether a memory.events (v2) or memory.oom_control
// (v1) file counts an OOM kill ("oom_kill N", N > 0).
func oomKillsIn(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return err == nil && n > 0
		}
	}
	return false
}
