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
// while it exists and marks the container (c.oomSeen) as soon as the OOM
// killer was invoked in it: its "oom" or "oom_kill" counter is not 0, as
// conmon (and so CRI-O) counts both. Under the systemd driver the
// container's scope, and its memory.events, go with its last process,
// often before the exit is read, and the kernel may drop the change that
// counts the kill: it defers a change that follows another within a few
// milliseconds, and a cgroup removed meanwhile never reports it. The "oom"
// count, raised before the kill, is then the last thing seen. Nothing is
// watched on cgroup v1, where the counter stays until runc's delete.
func (s *Service) watchOOM(c *container, cgroupPath string) {
	if cgroupPath == "" || !cgroup.Unified() {
		return
	}
	s.watchOOMFile(c, cgroup.ControllerFile(cgroupPath, "", "memory.events"))
}

// watchOOMFile watches file (a memory.events) for c until it is removed,
// an OOM is seen, or the service closes. Each change is judged by the one
// read that follows it: a second read may find the cgroup gone.
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
	if b, err := os.ReadFile(file); err == nil && oomIn(b) {
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
			b, err := os.ReadFile(file)
			if err == nil && oomIn(b) {
				c.oomSeen.Store(true)
				s.log.Debug("OOM in the container's cgroup", "pod", c.podID, "container", c.id, "events", strings.Join(strings.Fields(string(b)), " "))
				return
			}
			if gone || err != nil {
				return
			}
		}
	}()
}

// oomKillsIn reports whether a memory.events (v2) or memory.oom_control
// (v1) file counts an OOM (see oomIn).
func oomKillsIn(file string) bool {
	b, err := os.ReadFile(file)
	return err == nil && oomIn(b)
}

// oomIn reports whether the content of a memory.events (v2) or
// memory.oom_control (v1) counts an invocation of the OOM killer: "oom N"
// (v2) or "oom_kill N" with N > 0.
func oomIn(b []byte) bool {
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || (name != "oom" && name != "oom_kill") {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil && n > 0 {
			return true
		}
	}
	return false
}
