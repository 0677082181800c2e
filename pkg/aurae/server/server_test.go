package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/internal/testpki"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// fakeDiscovery answers, fails or panics depending on mode.
type fakeDiscovery struct {
	discoveryv0.UnimplementedDiscoveryServiceServer
	mode string
}

func (f *fakeDiscovery) Discover(context.Context, *discoveryv0.DiscoverRequest) (*discoveryv0.DiscoverResponse, error) {
	switch f.mode {
	case "panic":
		panic("boom")
	case "notfound":
		return nil, fmt.Errorf("look up cell %q: %w", "c1", errdefs.ErrNotFound)
	}
	return &discoveryv0.DiscoverResponse{Healthy: true, Version: "test"}, nil
}

type panickingObserve struct {
	observev0.UnimplementedObserveServiceServer
}

func (panickingObserve) GetAuraeDaemonLogStream(*observev0.GetAuraeDaemonLogStreamRequest, grpc.ServerStreamingServer[observev0.LogItem]) error {
	panic("stream boom")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// start serves srv on a unix socket and returns a client for it.
func start(t testing.TB, srv *grpc.Server) *client.Client {
	t.Helper()
	path := t.TempDir() + "/s.sock"
	lis, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		srv.Stop()
		<-done
	})
	return c
}

func TestInterceptorsLogMapAndRecover(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fake := &fakeDiscovery{}
	srv := New(logger)
	discoveryv0.RegisterDiscoveryServiceServer(srv, fake)
	observev0.RegisterObserveServiceServer(srv, panickingObserve{})
	c := start(t, srv)
	ctx := context.Background()

	if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatal(err)
	}
	fake.mode = "notfound"
	_, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `look up cell "c1"`) {
		t.Fatalf("wrapped errdefs.ErrNotFound became %v, want NotFound with the message", err)
	}
	fake.mode = "panic"
	if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); status.Code(err) != codes.Internal {
		t.Fatalf("panic became %v, want Internal", err)
	}
	stream, err := c.Observe.GetAuraeDaemonLogStream(ctx, &observev0.GetAuraeDaemonLogStreamRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Internal {
		t.Fatalf("stream panic became %v, want Internal", err)
	}
	// The server is still alive after both panics.
	fake.mode = ""
	if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatalf("server broken after a panic: %v", err)
	}

	type call struct{ level, code, method string }
	var calls []call
	panics := 0
	for _, r := range logs.records(t) {
		switch r["msg"] {
		case "gRPC call":
			if _, ok := r["duration"]; !ok {
				t.Fatalf("call record without duration: %v", r)
			}
			calls = append(calls, call{r["level"].(string), r["code"].(string), r["method"].(string)})
		case "panic in gRPC handler":
			panics++
			if !strings.Contains(fmt.Sprint(r["stack"]), "Discover") && !strings.Contains(fmt.Sprint(r["stack"]), "GetAuraeDaemonLogStream") {
				t.Fatalf("panic record without the handler's stack: %v", r)
			}
		}
	}
	discover := "/aurae.discovery.v0.DiscoveryService/Discover"
	want := []call{
		{"DEBUG", "OK", discover},
		{"DEBUG", "NotFound", discover},
		{"ERROR", "Internal", discover},
		{"ERROR", "Internal", "/aurae.observe.v0.ObserveService/GetAuraeDaemonLogStream"},
		{"DEBUG", "OK", discover},
	}
	if fmt.Sprint(calls) != fmt.Sprint(want) || panics != 2 {
		t.Fatalf("logged calls %v and %d panics, want %v and 2", calls, panics, want)
	}
}

func TestIsRead(t *testing.T) {
	for m, want := range map[string]bool{
		"/aurae.cells.v0.CellService/List":                          true,
		"/aurae.discovery.v0.DiscoveryService/Discover":             true,
		"/aurae.observe.v0.ObserveService/GetSubProcessStream":      true,
		"/aurae.cells.v0.CellService/Allocate":                      false,
		"/aurae.cells.v0.CellService/Start":                         false,
		"/aurae.cells.v0.CellService/Free":                          false,
		"/runtime.v1.RuntimeService/ListPodSandbox":                 true,
		"/runtime.v1.RuntimeService/RemovePodSandbox":               false,
		"/aurae.observe.v0.ObserveService/GetAuraeDaemonLogStream":  true,
		"/aurae.vms.v0.VmService/Stop":                              false,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": false,
		"/runtime.v1.RuntimeService/ContainerStatus":                true,
		"/runtime.v1.RuntimeService/PodSandboxStatus":               true,
		"/runtime.v1.RuntimeService/ListContainerStats":             true,
		"/runtime.v1.RuntimeService/PodSandboxStats":                true,
		"/runtime.v1.RuntimeService/RuntimeConfig":                  true,
		"/runtime.v1.RuntimeService/UpdateRuntimeConfig":            false,
		"/runtime.v1.RuntimeService/ListPodSandboxMetrics":          true,
		"/runtime.v1.RuntimeService/ListMetricDescriptors":          true,
		"/runtime.v1.RuntimeService/StreamPodSandboxes":             true,
		"/runtime.v1.RuntimeService/StreamContainers":               true,
		"/runtime.v1.RuntimeService/StreamPodSandboxMetrics":        true,
		"/runtime.v1.ImageService/ImageStatus":                      true,
		"/runtime.v1.ImageService/ImageFsInfo":                      true,
		"/runtime.v1.ImageService/PullImage":                        false,
		"/aurae.runtime.pod.v0.PodService/ContainerStatus":          true,
		"/aurae.runtime.pod.v0.PodService/ContainerStats":           true,
		"/aurae.runtime.pod.v0.PodService/ContainerEvents":          true,
		"/aurae.runtime.pod.v0.PodService/StopContainer":            false,
		"/aurae.runtime.pod.v0.PodService/ExecSync":                 false,
	} {
		if got := isRead(m); got != want {
			t.Errorf("isRead(%s) = %v, want %v", m, got, want)
		}
	}
}

// TestLogCallLevels: ExecSync, which probes call every few seconds, is
// logged at Debug when it answers and at Warn or Error when it fails;
// changes at Info, reads at Debug.
func TestLogCallLevels(t *testing.T) {
	for _, tc := range []struct {
		method string
		err    error
		want   string
	}{
		{"/runtime.v1.RuntimeService/ExecSync", nil, "DEBUG"},
		{"/aurae.runtime.pod.v0.PodService/ExecSync", nil, "DEBUG"},
		{"/runtime.v1.RuntimeService/ExecSync", status.Error(codes.NotFound, "no container"), "WARN"},
		{"/runtime.v1.RuntimeService/ExecSync", status.Error(codes.DeadlineExceeded, "timeout"), "WARN"},
		{"/runtime.v1.RuntimeService/ExecSync", status.Error(codes.Internal, "broken"), "ERROR"},
		{"/runtime.v1.RuntimeService/StopContainer", nil, "INFO"},
		{"/runtime.v1.RuntimeService/ContainerStatus", nil, "DEBUG"},
	} {
		var logs bytes.Buffer
		logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		logCall(context.Background(), logger, tc.method, time.Now(), tc.err)
		var r map[string]any
		if err := json.Unmarshal(logs.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v in %q", tc.method, err, logs.String())
		}
		if r["level"] != tc.want || r["method"] != tc.method {
			t.Errorf("%s with %v logged %v, want level %s", tc.method, tc.err, r, tc.want)
		}
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	serverPair := ca.Server("auraed")
	allowed := ca.Client("allowed")
	other := testpki.NewCA(t, dir, "other")
	stranger := other.Client("stranger")

	cfg, err := TLSConfig(serverPair.CertFile, serverPair.KeyFile, ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("config: min version %x, client auth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(slog.New(slog.DiscardHandler), grpc.Creds(credentials.NewTLS(cfg)))
	discoveryv0.RegisterDiscoveryServiceServer(srv, &fakeDiscovery{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() { srv.Stop(); <-done })
	addr := "tcp://" + lis.Addr().String()

	discover := func(opts ...client.Option) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, addr, opts...)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_, err = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
		return err
	}
	if err := discover(client.WithTLS(allowed.CertFile, allowed.KeyFile, ca.CertFile)); err != nil {
		t.Fatalf("client with a certificate of the CA: %v", err)
	}
	if err := discover(client.WithTLS(stranger.CertFile, stranger.KeyFile, ca.CertFile)); err == nil {
		t.Fatal("client with a certificate of another CA was served")
	}
	if err := discover(); err == nil {
		t.Fatal("client without TLS was served")
	}
	// TLS without a client certificate: trusts the server, presents nothing.
	if err := discoverNoClientCert(t, lis.Addr().String(), ca.CertFile); err == nil {
		t.Fatal("client without a certificate was served")
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	p := ca.Server("auraed")
	if _, err := TLSConfig(p.CertFile, p.KeyFile, p.KeyFile); err == nil {
		t.Error("a key file as CA bundle was accepted")
	}
	if _, err := TLSConfig(p.CertFile, dir+"/missing.pem", ca.CertFile); err == nil {
		t.Error("a missing key was accepted")
	}
}

// recordingObserver records the calls it is told of, as "method code".
type recordingObserver struct {
	mu       sync.Mutex
	begun    int
	finished []string
}

func (o *recordingObserver) Begin(method string) func(codes.Code) {
	o.mu.Lock()
	o.begun++
	o.mu.Unlock()
	return func(c codes.Code) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.finished = append(o.finished, method+" "+c.String())
	}
}

// The observer gets the code the client gets: after errmap, and Internal
// for a panic, for unary and streaming calls.
func TestObserverSeesFinalCodes(t *testing.T) {
	obs := &recordingObserver{}
	fake := &fakeDiscovery{}
	srv := NewObserved(slog.New(slog.DiscardHandler), obs)
	discoveryv0.RegisterDiscoveryServiceServer(srv, fake)
	observev0.RegisterObserveServiceServer(srv, panickingObserve{})
	c := start(t, srv)
	ctx := context.Background()
	for _, mode := range []string{"", "notfound", "panic"} {
		fake.mode = mode
		_, _ = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	}
	stream, err := c.Observe.GetAuraeDaemonLogStream(ctx, &observev0.GetAuraeDaemonLogStreamRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Internal {
		t.Fatalf("stream panic became %v, want Internal", err)
	}
	discover := "/aurae.discovery.v0.DiscoveryService/Discover"
	want := []string{discover + " OK", discover + " NotFound", discover + " Internal",
		"/aurae.observe.v0.ObserveService/GetAuraeDaemonLogStream Internal"}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if fmt.Sprint(obs.finished) != fmt.Sprint(want) || obs.begun != len(want) {
		t.Fatalf("observed %d calls begun, ended %v; want %d, %v", obs.begun, obs.finished, len(want), want)
	}
}
