package pods

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNamespacesInThread: a thread makes new net, ipc and uts namespaces,
// sets the hostname, brings up loopback and writes a net sysctl in them,
// and pins them; the pins outlive the thread, the caller's namespaces are
// untouched, and no process holds the pod's namespaces.
func TestNamespacesInThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (unshare, bind mounts)")
	}
	dir := t.TempDir()
	pins := map[string]string{}
	for _, k := range []string{"net", "ipc", "uts"} {
		pins[k] = filepath.Join(dir, k)
	}
	t.Cleanup(func() {
		for _, p := range pins {
			if err := unpin(p); err != nil {
				t.Error(err)
			}
		}
	})
	ownNet, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	err = makeNamespacesInThread(holderSpec{net: true, ipc: true, uts: true, hostname: "pod-thread-ns",
		sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"}}, pins)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := os.Hostname(); h != host {
		t.Errorf("host name changed to %q", h)
	}
	// No thread of this process is left in the pod's namespaces (the
	// one that made them went back to its own).
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if n, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && n != ownNet {
			t.Errorf("thread %s is in network namespace %s, not %s", task.Name(), n, ownNet)
		}
	}
	for kind, p := range pins {
		var st, own unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatalf("%s pin: %v", kind, err)
		}
		if err := unix.Stat("/proc/self/ns/"+kind, &own); err != nil {
			t.Fatal(err)
		}
		if st.Ino == own.Ino {
			t.Errorf("%s pin is the host's namespace", kind)
		}
		if holders := processesIn(t, kind, st.Ino); len(holders) > 0 {
			t.Errorf("%s namespace held by processes %v", kind, holders)
		}
	}
	// Inside the pinned namespaces: the hostname, lo up, the sysctl.
	got := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		var own []int
		for _, k := range []string{"net", "uts"} {
			fd, err := unix.Open("/proc/thread-self/ns/"+k, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				got <- err.Error()
				return // locked: the thread goes with the goroutine
			}
			own = append(own, fd)
		}
		var out []string
		for _, k := range []string{"net", "uts"} {
			fd, err := unix.Open(pins[k], unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				got <- err.Error()
				return
			}
			err = unix.Setns(fd, 0)
			unix.Close(fd)
			if err != nil {
				got <- err.Error()
				return
			}
		}
		h, _ := os.Hostname()
		out = append(out, h)
		b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
		out = append(out, strings.TrimSpace(string(b)))
		for _, fd := range own {
			if err := unix.Setns(fd, 0); err != nil {
				got <- err.Error()
				return
			}
			unix.Close(fd)
		}
		runtime.UnlockOSThread()
		got <- strings.Join(out, " ")
	}()
	if g := strings.Fields(<-got); len(g) != 2 || g[0] != "pod-thread-ns" || g[1] != "80" {
		t.Errorf("inside the namespaces: %q, want hostname pod-thread-ns and the sysctl 80", g)
	}
}

// TestNamespacesInThreadRefusesPIDAndUser: those need a holder.
func TestNamespacesInThreadRefusesPIDAndUser(t *testing.T) {
	if err := makeNamespacesInThread(holderSpec{pid: true}, nil); err == nil {
		t.Error("pid namespace made by a thread")
	}
}

// processesIn lists the pids whose namespace of kind has inode ino.
func processesIn(t *testing.T, kind string, ino uint64) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", kind), &st) == nil && st.Ino == ino {
			out = append(out, e.Name())
		}
	}
	return out
}
