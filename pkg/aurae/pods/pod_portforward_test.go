package pods

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
)

// newNetNS makes a network namespace pinned at a file of the test's, with
// a listener on 127.0.0.1 inside it that answers "in ns\n".
func newNetNS(t *testing.T) (path, addr string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	path = filepath.Join(t.TempDir(), "netns")
	if err := netcni.CreateNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netcni.RemoveNetNS(path) })
	lis := listenIn(t, path, linux.LoopbackUp)
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("in ns\n"))
			_ = conn.Close()
		}
	}()
	return path, lis.Addr().String()
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

// listenInNetNS listens on 127.0.0.1 inside the network namespace at path
// and answers each connection with what it read, after the client's
// half-close.
func listenInNetNS(t *testing.T, path string) int {
	t.Helper()
	lis := listenIn(t, path, nil)
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				b, _ := io.ReadAll(conn)
				_, _ = fmt.Fprintf(conn, "pod got %s\n", b)
			}()
		}
	}()
	return lis.Addr().(*net.TCPAddr).Port
}

// TestPortForwardRPC forwards through PodService.PortForward (the native
// controller's client side against the service) to a server bound to
// 127.0.0.1 in the pod's network namespace, with the half-close passed on;
// an unknown pod and a bad port are refused.
func TestPortForwardRPC(t *testing.T) {
	e := newEnv(t)
	alloc := e.allocate(&podsv0.Pod{Id: "pf"})
	port := listenInNetNS(t, alloc.GetNetworkNamespacePath())
	ctl := native.WithClient(e.streamClient())

	// The client's connection, as the kubelet's stream server hands it over.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	stream, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.PortForward(t.Context(), "pf", int32(port), stream) }()
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = client.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(client)
	if string(b) != "pod got ping\n" {
		t.Fatalf("through the forward: %q %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The host's loopback has no such server: the connection was the pod's.
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
		_ = c.Close()
		t.Fatalf("port %d answers on the host's loopback too", port)
	}

	for _, tc := range []struct {
		pod  string
		port int32
		want codes.Code
	}{{"nopod", int32(port), codes.NotFound}, {"pf", 0, codes.InvalidArgument}, {"pf", 70000, codes.InvalidArgument}} {
		a, b := net.Pipe()
		err := ctl.PortForward(t.Context(), tc.pod, tc.port, b)
		_ = a.Close()
		if status.Code(errors.Unwrap(err)) != tc.want && status.Code(err) != tc.want {
			t.Errorf("port forward to %s:%d: %v, want %s", tc.pod, tc.port, err, tc.want)
		}
	}
}

// listenIn listens on 127.0.0.1 inside the network namespace at path,
// after setup (when not nil) ran there; the listener closes with the test.
func listenIn(t *testing.T, path string, setup func() error) net.Listener {
	t.Helper()
	var lis net.Listener
	err := linux.InNetNS(path, func() error {
		if setup != nil {
			if err := setup(); err != nil {
				return err
			}
		}
		var err error
		lis, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		if lis != nil {
			_ = lis.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}
