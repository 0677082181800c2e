package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// stream runs the kubelet's client side (SPDY, as kubectl exec/attach
// through the API server's proxy) against a streaming URL.
func stream(ctx context.Context, t *testing.T, rawURL string, opts remotecommand.StreamOptions) error {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	return ex.StreamWithContext(ctx, opts)
}

// lineWriter collects output and signals each write.
type lineWriter struct {
	buf   syncBuffer
	wrote chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func TestCRIStreaming(t *testing.T) {
	c := startCRI(t)
	ctx := t.Context()
	image := c.pushBusybox(t, "e2e/busybox:1", testimage.Options{})
	pod := c.podConfig(t, "stream")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	sleeper := runContainer(t, c, podID, pod, containerConfig("sleeper", image, "sleep", "300"))
	ticker := runContainer(t, c, podID, pod, containerConfig("ticker", image, "sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.1; done"))
	server := runContainer(t, c, podID, pod, containerConfig("pong", image, "nc", "-ll", "-p", "8080", "-e", "echo", "pong"))
	for _, id := range []string{sleeper, ticker, server} {
		waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
	}

	t.Run("exec with stdin", func(t *testing.T) {
		resp, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{
			ContainerId: sleeper, Cmd: []string{"sh", "-c", "read x; echo got $x; echo err >&2; exit 3"},
			Stdin: true, Stdout: true, Stderr: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		begin := time.Now()
		err = stream(ctx, t, resp.GetUrl(), remotecommand.StreamOptions{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr})
		var exit utilexec.CodeExitError
		if !errors.As(err, &exit) || exit.Code != 3 {
			t.Errorf("exit: %v, want exit code 3", err)
		}
		if stdout.String() != "got hello\n" || stderr.String() != "err\n" {
			t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		t.Logf("exec round trip (URL to exit code) %s", time.Since(begin))
	})

	t.Run("exec with a tty", func(t *testing.T) {
		resp, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: sleeper, Cmd: []string{"busybox", "tty"}, Tty: true, Stdout: true})
		if err != nil {
			t.Fatal(err)
		}
		var stdout bytes.Buffer
		if err := stream(ctx, t, resp.GetUrl(), remotecommand.StreamOptions{Stdout: &stdout, Tty: true}); err != nil {
			t.Fatalf("%v; output %q", err, stdout.String())
		}
		if !strings.HasPrefix(stdout.String(), "/dev/pts/") {
			t.Errorf("tty printed %q, want a /dev/pts path", stdout.String())
		}
	})

	t.Run("attach", func(t *testing.T) {
		resp, err := c.Runtime.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: ticker, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out := &lineWriter{wrote: make(chan struct{}, 1)}
		done := make(chan error, 1)
		go func() {
			done <- stream(sctx, t, resp.GetUrl(), remotecommand.StreamOptions{Stdout: out, Stderr: io.Discard})
		}()
		for strings.Count(out.buf.String(), "\n") < 3 {
			select {
			case <-out.wrote:
			case err := <-done:
				t.Fatalf("attach ended: %v; got %q", err, out.buf.String())
			case <-sctx.Done():
				t.Fatalf("attach: no 3 lines in time; got %q", out.buf.String())
			}
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("attach after cancel: %v", err)
		}
		if lines := strings.Split(strings.TrimSpace(out.buf.String()), "\n"); !strings.HasPrefix(lines[0], "line ") {
			t.Errorf("attach output %q", lines)
		}
	})

	// kubectl exec -it sends the terminal's size first: the command starts
	// with it.
	t.Run("exec with a tty sized", func(t *testing.T) {
		resp, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{
			ContainerId: sleeper, Cmd: []string{"busybox", "stty", "size"}, Tty: true, Stdin: true, Stdout: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var stdout bytes.Buffer
		// stdin open but silent: a closed stdin would be ^D to the shell.
		in, inW := io.Pipe()
		defer func() { _ = inW.Close() }()
		err = stream(sctx, t, resp.GetUrl(), remotecommand.StreamOptions{
			Stdin: in, Stdout: &stdout, Tty: true, TerminalSizeQueue: &sizeQueue{ctx: sctx, sizes: []remotecommand.TerminalSize{{Width: 111, Height: 33}}},
		})
		if err != nil || strings.TrimSpace(stdout.String()) != "33 111" {
			t.Errorf("stty size after a resize: %q %v, want 33 111", stdout.String(), err)
		}
	})

	t.Run("exec with a tty resized", func(t *testing.T) {
		resp, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{
			ContainerId: sleeper, Cmd: []string{"sh", "-c", "sleep 1; busybox stty size"}, Tty: true, Stdin: true, Stdout: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var stdout bytes.Buffer
		in, inW := io.Pipe()
		defer func() { _ = inW.Close() }()
		err = stream(sctx, t, resp.GetUrl(), remotecommand.StreamOptions{
			Stdin: in, Stdout: &stdout, Tty: true,
			TerminalSizeQueue: &sizeQueue{ctx: sctx, sizes: []remotecommand.TerminalSize{{Width: 80, Height: 24}, {Width: 99, Height: 11}}},
		})
		if err != nil || strings.TrimSpace(stdout.String()) != "11 99" {
			t.Errorf("stty size after a resize: %q %v, want 11 99", stdout.String(), err)
		}
	})

	t.Run("attach with stdin", func(t *testing.T) {
		cfg := containerConfig("cat", image, "sh", "-c", "while read l; do echo echo $l; done")
		cfg.Stdin = true
		id := runContainer(t, c, podID, pod, cfg)
		waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
		got := attachUntil(ctx, t, c, &runtimeapi.AttachRequest{ContainerId: id, Stdin: true, Stdout: true}, "ping\n", "echo ping", nil)
		if !strings.Contains(got, "echo ping") {
			t.Errorf("attach with stdin: %q", got)
		}
	})

	t.Run("attach with a tty resized", func(t *testing.T) {
		cfg := containerConfig("term", image, "sh", "-c", "while true; do busybox stty size; sleep 0.2; done")
		cfg.Tty, cfg.Stdin = true, true
		id := runContainer(t, c, podID, pod, cfg)
		waitContainerState(t, c, id, runtimeapi.ContainerState_CONTAINER_RUNNING)
		got := attachUntil(ctx, t, c, &runtimeapi.AttachRequest{ContainerId: id, Stdin: true, Stdout: true, Tty: true}, "", "44 122",
			&remotecommand.TerminalSize{Width: 122, Height: 44})
		if !strings.Contains(got, "44 122") {
			t.Errorf("attach with a tty: %q, want the new size 44 122", got)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		waitServing(t, c, server, 8080, "pong")
		resp, err := c.Runtime.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: podID, Port: []int32{8080}})
		if err != nil {
			t.Fatal(err)
		}
		got := portForwardRead(t, resp.GetUrl(), 8080)
		if got != "pong" {
			t.Errorf("port-forward read %q, want pong", got)
		}
	})

	t.Run("port-forward to a hostNetwork pod", func(t *testing.T) {
		hostPod := c.podConfig(t, "hostpf")
		hostPod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}
		hostID, err := c.Runtime.RunPodSandbox(ctx, hostPod, "")
		if err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		hostServer := runContainer(t, c, hostID, hostPod, containerConfig("pong", image, "nc", "-ll", "-p", strconv.Itoa(port), "-e", "echo", "hostpong"))
		waitServing(t, c, hostServer, port, "hostpong")
		resp, err := c.Runtime.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: hostID, Port: []int32{int32(port)}})
		if err != nil {
			t.Fatal(err)
		}
		if got := portForwardRead(t, resp.GetUrl(), port); got != "hostpong" {
			t.Errorf("port-forward to a hostNetwork pod read %q, want hostpong", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			call func() error
			want codes.Code
		}{
			{"exec empty command", func() error {
				_, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: sleeper, Stdout: true})
				return err
			}, codes.InvalidArgument},
			{"exec no streams", func() error {
				_, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: sleeper, Cmd: []string{"true"}})
				return err
			}, codes.InvalidArgument},
			{"exec unknown container", func() error {
				_, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "nope", Cmd: []string{"true"}, Stdout: true})
				return err
			}, codes.NotFound},
			{"attach unknown container", func() error {
				_, err := c.Runtime.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: "nope", Stdout: true})
				return err
			}, codes.NotFound},
			{"port-forward unknown pod", func() error {
				_, err := c.Runtime.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: "nope", Port: []int32{80}})
				return err
			}, codes.NotFound},
		} {
			if err := tc.call(); status.Code(err) != tc.want {
				t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
			}
		}
		exited := runContainer(t, c, podID, pod, containerConfig("done", image, "true"))
		waitContainerState(t, c, exited, runtimeapi.ContainerState_CONTAINER_EXITED)
		if _, err := c.Runtime.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: exited, Cmd: []string{"true"}, Stdout: true}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("exec in an exited container: %v, want FailedPrecondition", err)
		}
		if _, err := c.Runtime.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: exited, Stdout: true}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("attach to an exited container: %v, want FailedPrecondition", err)
		}
	})
}

// sizeQueue gives its terminal sizes, then none until ctx ends.
type sizeQueue struct {
	ctx   context.Context
	sizes []remotecommand.TerminalSize
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if len(q.sizes) > 0 {
		sz := q.sizes[0]
		q.sizes = q.sizes[1:]
		return &sz
	}
	<-q.ctx.Done()
	return nil
}

// attachUntil attaches with req, writes input every 200 ms (when not
// empty) and returns the output once it contains want (or 30 s passed).
func attachUntil(ctx context.Context, t *testing.T, c *CRI, req *runtimeapi.AttachRequest, input, want string, size *remotecommand.TerminalSize) string {
	t.Helper()
	resp, err := c.Runtime.Attach(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out := &lineWriter{wrote: make(chan struct{}, 1)}
	in, inW := io.Pipe()
	defer func() { _ = inW.Close() }()
	opts := remotecommand.StreamOptions{Stdout: out, Tty: req.GetTty()}
	if req.GetStdin() {
		opts.Stdin = in
	}
	if size != nil {
		opts.TerminalSizeQueue = &sizeQueue{ctx: sctx, sizes: []remotecommand.TerminalSize{*size}}
	}
	done := make(chan error, 1)
	go func() { done <- stream(sctx, t, resp.GetUrl(), opts) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(out.buf.String(), want) {
		select {
		case <-out.wrote:
		case <-tick.C:
			if input != "" {
				go func() { _, _ = inW.Write([]byte(input)) }()
			}
		case err := <-done:
			t.Fatalf("attach ended: %v; got %q", err, out.buf.String())
		case <-sctx.Done():
			return out.buf.String()
		}
	}
	cancel()
	_ = inW.Close()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("attach after cancel: %v", err)
	}
	return out.buf.String()
}

// waitServing waits until the container's server answers want on
// 127.0.0.1:port of its own network namespace: a port forward to a port
// nobody listens on ends the client's whole forwarding session.
func waitServing(t *testing.T, c *CRI, id string, port int, want string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 100; i++ {
		out, _, err = c.Runtime.ExecSync(t.Context(), id, []string{"nc", "-w", "2", "127.0.0.1", strconv.Itoa(port)}, 10*time.Second)
		if err == nil && strings.TrimSpace(string(out)) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("server on port %d does not answer: %q %v", port, out, err)
}

// portForwardRead forwards a local port to the pod's port through the
// streaming URL (client-go's port forwarder, as kubectl port-forward),
// sends send (when not empty) and returns the last non-empty line read.
func portForwardRead(t *testing.T, rawURL string, podPort int, send ...string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", podPort)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fwDone := make(chan error, 1)
	go func() { fwDone <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		if err := <-fwDone; err != nil {
			t.Logf("port forwarder: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-fwDone:
		t.Fatalf("port forwarder: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("port forwarder not ready")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v %v", ports, err)
	}
	var line string
	for i := 0; i < 50; i++ {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local), 2*time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if len(send) > 0 {
				_, _ = conn.Write([]byte(send[0]))
				b, _ := io.ReadAll(conn)
				_ = conn.Close()
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if line = strings.TrimSpace(lines[len(lines)-1]); line != "" {
					return line
				}
				continue
			}
			line, _ = bufio.NewReader(conn).ReadString('\n')
			_ = conn.Close()
			if line = strings.TrimSpace(line); line != "" {
				return line
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return line
}
