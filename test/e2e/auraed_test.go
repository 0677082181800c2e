package e2e

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/internal/testpki"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

func TestDiscoverOverUnixSocket(t *testing.T) {
	a := startAuraed(t)
	resp, err := a.Client().Discovery.Discover(testContext(t), &discoveryv0.DiscoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetHealthy() || resp.GetVersion() != e2eVersion {
		t.Fatalf("Discover = %v, want healthy, version %s", resp, e2eVersion)
	}
}

func TestSocketMode(t *testing.T) {
	a := startAuraed(t)
	fi, err := os.Lstat(a.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want a socket with 0600", fi.Mode())
	}
}

func TestMutualTLSOverLoopback(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	srv := ca.Server("auraed")
	allowed := ca.Client("allowed")
	stranger := testpki.NewCA(t, dir, "other").Client("stranger")

	a := startAuraed(t, "--listen", "127.0.0.1:0", "--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile, "--client-ca", ca.CertFile)
	addr := a.TCPAddr()
	if addr == "" || strings.HasSuffix(addr, ":0") {
		t.Fatalf("auraed logged no bound TCP address (%q)", addr)
	}
	discover := func(opts ...client.Option) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, "tcp://"+addr, opts...)
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
	if err := discoverWithoutClientCert(t, addr, ca.CertFile); err == nil {
		t.Fatal("client without a certificate was served")
	}
}

func TestListenWithoutTLSRefused(t *testing.T) {
	requireRoot(t)
	out, err := exec.Command(binaries["auraed"], "--socket", t.TempDir()+"/a.sock", "--listen", "127.0.0.1:0").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("auraed --listen without TLS: %v, want a non-zero exit", err)
	}
	if !strings.Contains(string(out), "mutual TLS") {
		t.Fatalf("output %q does not explain that TLS is needed", out)
	}
}

func TestDaemonLogStreamSeesACall(t *testing.T) {
	a := startAuraed(t)
	c := a.Client()
	ctx, cancel := context.WithTimeout(testContext(t), 30*time.Second)
	defer cancel()
	stream, err := c.Observe.GetAuraeDaemonLogStream(ctx, &observev0.GetAuraeDaemonLogStreamRequest{})
	if err != nil {
		t.Fatal(err)
	}
	items := make(chan *observev0.LogItem)
	recvErr := make(chan error, 1)
	go func() {
		for {
			it, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case items <- it:
			case <-ctx.Done():
				return
			}
		}
	}()
	// The subscription starts at some point after the stream opened: call
	// until one call's record arrives.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if _, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{}); err != nil {
				t.Fatal(err)
			}
		case it := <-items:
			if it.GetChannel() != "auraed" || it.GetTimestamp() == 0 {
				t.Fatalf("item = %v", it)
			}
			if strings.Contains(it.GetLine(), `"method":"/aurae.discovery.v0.DiscoveryService/Discover"`) {
				return
			}
		case err := <-recvErr:
			t.Fatalf("log stream ended: %v", err)
		case <-ctx.Done():
			t.Fatal("no record of a Discover call arrived")
		}
	}
}

func TestGracefulShutdownRemovesSocket(t *testing.T) {
	a := startAuraed(t)
	if err := a.Stop(t); err != nil {
		t.Fatalf("auraed exited with %v after SIGTERM, want status 0", err)
	}
	if _, err := os.Lstat(a.Socket); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
	if !strings.Contains(a.Logs(), `"msg":"auraed stopped"`) {
		t.Fatalf("no shutdown record in the logs:\n%s", a.Logs())
	}
}

func TestSecondDaemonOnSameSocketRefused(t *testing.T) {
	a := startAuraed(t)
	out, err := exec.Command(binaries["auraed"], "--socket", a.Socket, "--state-dir", t.TempDir(),
		"--cgroup-root", a.CgroupRoot).CombinedOutput()
	if err == nil {
		t.Fatal("a second auraed on a live socket started")
	}
	if !strings.Contains(string(out), "another auraed serves "+a.Socket) {
		t.Fatalf("output %q does not name the live socket", out)
	}
	if _, err := a.Client().Discovery.Discover(testContext(t), &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatalf("the first auraed stopped answering: %v", err)
	}
}

func TestRestartAfterKill9ReplacesStaleSocket(t *testing.T) {
	a := startAuraed(t)
	a.Kill9()
	if _, err := os.Lstat(a.Socket); err != nil {
		t.Fatalf("SIGKILL should leave the socket behind: %v", err)
	}
	a.Restart(t)
	if _, err := a.Client().Discovery.Discover(testContext(t), &discoveryv0.DiscoverRequest{}); err != nil {
		t.Fatalf("Discover after restart: %v", err)
	}
}
