package containerdproc

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// stateDir is a short temporary dir (socket paths must stay under 108 bytes).
func stateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctdproc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestRenderConfig(t *testing.T) {
	cfg := renderConfig("/s/containerd", "")
	for _, want := range []string{
		"version = 2\n",
		`root = "/s/containerd/root"`,
		`state = "/s/containerd/state"`,
		`"io.containerd.grpc.v1.cri"`,
		`address = "/s/containerd/containerd.sock"`,
		`address = "/s/containerd/containerd.sock.ttrpc"`,
		`level = "info"`,
		`[plugins."io.containerd.internal.v1.opt"]`,
		`path = "/s/containerd/opt"`,
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if got := tomlString("a\"b\\c\n"); got != `"a\"b\\c\u000A"` {
		t.Errorf("tomlString = %s", got)
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"/run/c.sock":        "/run/c.sock",
		"unix:///run/c.sock": "/run/c.sock",
	} {
		if got, ok := socketPath(in); !ok || got != want {
			t.Errorf("socketPath(%q) = %q, %v", in, got, ok)
		}
	}
	if _, ok := socketPath("tcp://127.0.0.1:1"); ok {
		t.Error("tcp address taken for a socket")
	}
}

func TestEnsureWithoutBinary(t *testing.T) {
	_, err := Ensure(context.Background(), Config{
		Address:  filepath.Join(t.TempDir(), "none.sock"),
		StateDir: stateDir(t),
		Binary:   "/nonexistent/containerd",
		Logger:   quiet(),
	})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

func TestEnsureWithoutStateDir(t *testing.T) {
	_, err := Ensure(context.Background(), Config{Address: "/nonexistent.sock", Logger: quiet()})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

func TestEnsureSocketPathTooLong(t *testing.T) {
	_, err := Ensure(context.Background(), Config{StateDir: "/tmp/" + strings.Repeat("d", 100), Logger: quiet()})
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("err = %v, want invalid argument", err)
	}
}

func TestEnsureChildDies(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "containerd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'boom: bad config' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := Ensure(context.Background(), Config{StateDir: stateDir(t), Binary: bin, Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "boom: bad config") || !errdefs.IsUnavailable(err) {
		t.Fatalf("err = %v, want the child's stderr and unavailable", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s to notice the child died", d)
	}
}

func TestEnsureStartsAdoptsAndStops(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Skip("no containerd binary on PATH (apt-get install containerd)")
	}
	_, statErr := os.Stat("/opt/containerd")
	optExisted := statErr == nil
	ctx := context.Background()
	dir := stateDir(t)
	p, err := Ensure(ctx, Config{Address: filepath.Join(dir, "absent.sock"), StateDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if !p.Owned() || p.Pid() == 0 || p.Address() != filepath.Join(dir, "containerd", "containerd.sock") {
		t.Fatalf("proc = %+v", p)
	}
	if _, err := Ping(ctx, p.Address()); err != nil {
		t.Fatalf("child does not answer: %v", err)
	}
	if pgid, err := syscall.Getpgid(p.Pid()); err != nil || pgid != p.Pid() {
		t.Errorf("child pgid = %d, %v; want its own group", pgid, err)
	}
	if _, err := os.Stat("/opt/containerd"); err == nil && !optExisted {
		t.Error("the child made /opt/containerd")
	}
	if _, err := os.Stat(filepath.Join(dir, "containerd", "opt")); err != nil {
		t.Errorf("opt dir: %v", err)
	}

	// A containerd answering at Address is used as it is.
	ext, err := Ensure(ctx, Config{Address: p.Address(), Logger: quiet()})
	if err != nil || ext.Owned() || ext.Address() != p.Address() {
		t.Fatalf("Ensure on a running containerd = %+v, %v", ext, err)
	}
	if err := ext.Close(); err != nil {
		t.Fatalf("Close of a containerd not owned: %v", err)
	}
	if _, err := Ping(ctx, p.Address()); err != nil {
		t.Fatalf("closing a containerd not owned stopped it: %v", err)
	}

	// A second Ensure with the same state dir adopts the running child.
	adopted, err := Ensure(ctx, Config{StateDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatalf("Ensure again: %v", err)
	}
	if !adopted.Owned() || adopted.Pid() != p.Pid() {
		t.Fatalf("second Ensure started another containerd: pid %d, first %d", adopted.Pid(), p.Pid())
	}

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := syscall.Kill(p.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("containerd %d still there after Close: %v", p.Pid(), err)
	}
	if _, err := Ping(ctx, p.Address()); err == nil {
		t.Error("containerd still answers after Close")
	}
	if _, err := os.Stat(p.pidPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left: %v", err)
	}
	if err := adopted.Close(); err != nil {
		t.Errorf("Close of the adopted proc after the child stopped: %v", err)
	}
}
