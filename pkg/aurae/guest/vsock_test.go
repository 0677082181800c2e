package guest

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVsockLoopback serves on a vsock port and connects to it through the
// loopback CID (VMADDR_CID_LOCAL), where the kernel has vsock loopback.
func TestVsockLoopback(t *testing.T) {
	const port = 52431
	l, err := ListenVsock(port)
	if err != nil {
		t.Skipf("no vsock here: %v", err)
	}
	defer func() { _ = l.Close() }()
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("vsock socket: %v", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_LOCAL, Port: port}); err != nil {
		unix.Close(fd)
		t.Skipf("no vsock loopback transport here: %v", err)
	}
	peer := os.NewFile(uintptr(fd), "peer")
	defer peer.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("read %q, %v", b, err)
	}
	if c.RemoteAddr().Network() != "vsock" {
		t.Errorf("remote address %v", c.RemoteAddr())
	}
	_ = l.Close()
	if _, err := l.Accept(); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("Accept after Close: %v", err)
	}
}
