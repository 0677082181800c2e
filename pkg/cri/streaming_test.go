package cri

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// streamFixture is a recovered runtime with a pod, a running container
// "run" and a created one "created".
func streamFixture(t *testing.T, hostNetwork bool) (*fixture, string) {
	t.Helper()
	f := newFixture(t, true)
	cfg := podConfig("s")
	if hostNetwork {
		cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}}
	}
	pod, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"run", "created"} {
		c := &sandbox.Container{ID: id, SandboxID: pod.GetPodSandboxId(), Name: id + "_s", Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: id}},
			CreatedAt: time.Now(), Status: sandbox.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_CREATED}}
		if err := f.store.AddContainer(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.rt.StartContainer(t.Context(), &runtimeapi.StartContainerRequest{ContainerId: "run"}); err != nil {
		t.Fatal(err)
	}
	return f, pod.GetPodSandboxId()
}

func TestStreamingRequestsAreChecked(t *testing.T) {
	f, podID := streamFixture(t, false)
	ctx := t.Context()
	if _, err := f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "run", Cmd: []string{"sh"}, Stdout: true}); code(err) != codes.Unavailable {
		t.Fatalf("exec without a stream server: %v, want Unavailable", err)
	}
	srv, err := f.rt.StartStreaming("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"exec: empty cmd", call(f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "run", Stdout: true})), codes.InvalidArgument},
		{"exec: no stream", call(f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "run", Cmd: []string{"sh"}})), codes.InvalidArgument},
		{"exec: tty and stderr", call(f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "run", Cmd: []string{"sh"}, Tty: true, Stderr: true})), codes.InvalidArgument},
		{"exec: unknown", call(f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "nope", Cmd: []string{"sh"}, Stdout: true})), codes.NotFound},
		{"exec: not running", call(f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "created", Cmd: []string{"sh"}, Stdout: true})), codes.FailedPrecondition},
		{"attach: no stream", call(f.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "run"})), codes.InvalidArgument},
		{"attach: unknown", call(f.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "nope", Stdout: true})), codes.NotFound},
		{"attach: not running", call(f.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "created", Stdout: true})), codes.FailedPrecondition},
		{"port-forward: no pod", call(f.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{})), codes.InvalidArgument},
		{"port-forward: bad port", call(f.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{70000}})), codes.InvalidArgument},
		{"port-forward: unknown", call(f.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: "nope"})), codes.NotFound},
	} {
		if code(tc.err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, tc.err, tc.want)
		}
	}
	resp, err := f.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "run", Cmd: []string{"sh"}, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := url.Parse(resp.GetUrl()); err != nil || u.Host != srv.Addr() || !strings.HasPrefix(u.Path, "/exec/") {
		t.Errorf("exec URL %q (%v), want one on %s", resp.GetUrl(), err, srv.Addr())
	}
	if _, err := f.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID}); code(err) != codes.FailedPrecondition {
		t.Errorf("port-forward to a stopped pod: %v, want FailedPrecondition", err)
	}
}

func call[T any](_ T, err error) error { return err }

func TestExecThroughTheStreamServer(t *testing.T) {
	f, _ := streamFixture(t, false)
	srv, err := f.rt.StartStreaming("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	resp, err := f.rt.Exec(t.Context(), &runtimeapi.ExecRequest{ContainerId: "run", Cmd: []string{"a", "b"}, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(resp.GetUrl())
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(t.Context(), remotecommand.StreamOptions{Stdin: strings.NewReader("hi"), Stdout: &stdout, Stderr: &stderr})
	var exit utilexec.CodeExitError
	if !errors.As(err, &exit) || exit.Code != 2 {
		t.Errorf("exit %v, want code 2", err)
	}
	if stdout.String() != "hi" || stderr.String() != "[\"a\" \"b\"]\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	// A URL is good for one session.
	if err := ex.StreamWithContext(t.Context(), remotecommand.StreamOptions{Stdout: io.Discard}); err == nil {
		t.Error("a second session on the same URL succeeded")
	}
}

// TestPortForwardThroughTheController: the stream server's port-forward
// session reaches the pod's controller with the pod and the port, and
// what the controller answers reaches the client.
func TestPortForwardThroughTheController(t *testing.T) {
	f, podID := streamFixture(t, true)
	srv, err := f.rt.StartStreaming("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	const port = 8080
	resp, err := f.rt.PortForward(t.Context(), &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{port}})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(resp.GetUrl())
	transport, upgrader, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			t.Errorf("port forwarder: %v", err)
		}
	}()
	<-ready
	ports, err := fw.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if want := fmt.Sprintf("port %d of %s\n", port, podID); line != want {
		t.Errorf("through the forward: %q %v, want %q", line, err, want)
	}
}
