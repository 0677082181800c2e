package cri

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// newNetNS makes a network namespace pinned at a file of the test's, with
// a listener on 127.0.0.1 inside it that answers "in ns\n".
func newNetNS(t *testing.T) (path, addr string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	path = filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	type result struct {
		lis net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// This thread ends in the new namespace: never unlocked, it exits
		// with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			done <- result{err: err}
			return
		}
		if err := setLoopbackUp(); err != nil {
			done <- result{err: err}
			return
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		done <- result{lis: lis, err: err}
	}()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	t.Cleanup(func() {
		_ = res.lis.Close()
		_ = unix.Unmount(path, unix.MNT_DETACH)
	})
	go func() {
		for {
			conn, err := res.lis.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("in ns\n"))
			_ = conn.Close()
		}
	}()
	return path, res.lis.Addr().String()
}

// setLoopbackUp brings lo of the current thread's namespace up.
func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { _ = unix.Close(fd) }()
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func TestDialInNetNS(t *testing.T) {
	path, addr := newNetNS(t)
	// The namespace's loopback is its own: the host's has no such listener.
	if conn, err := net.Dial("tcp", addr); err == nil {
		_ = conn.Close()
		t.Fatalf("%s answers on the host's loopback too", addr)
	}
	hostBefore, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		conn, err := dialInNetNS(t.Context(), path, addr)
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		_ = conn.Close()
		if line != "in ns\n" {
			t.Fatalf("read %q %v", line, err)
		}
	}
	// No thread went back to the pool in the pod's namespace: new ones
	// (and this one) are in the host's.
	for i := 0; i < 20; i++ {
		done := make(chan string, 1)
		go func() {
			ns, _ := os.Readlink("/proc/thread-self/ns/net")
			done <- ns
		}()
		if ns := <-done; ns != hostBefore {
			t.Fatalf("a goroutine runs in %s, not the host's %s", ns, hostBefore)
		}
	}
	if _, err := dialInNetNS(t.Context(), filepath.Join(t.TempDir(), "missing"), addr); err == nil {
		t.Error("dial in a missing namespace succeeded")
	}
}
