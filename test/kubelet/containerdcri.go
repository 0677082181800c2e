package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// ContainerdCRIConfig configures StartContainerdCRI.
type ContainerdCRIConfig struct {
	// Binary defaults to "containerd" on PATH.
	Binary string
	// SandboxImage is the CRI plugin's sandbox_image (the "pause" image),
	// e.g. a testimage busybox with Entrypoint ["/bin/sleep","2147483647"]
	// pushed to a testimage registry.
	SandboxImage string
	// RegistryConfigDir is registry.config_path: a hosts.toml directory
	// (testimage.Registry.HostsDir).
	RegistryConfigDir string
	// CNIConfDir and CNIBinDir; defaults: an empty dir of the test, and
	// /opt/cni/bin.
	CNIConfDir, CNIBinDir string
	// LogLevel defaults to "info".
	LogLevel string
	// Env is added to containerd's environment, e.g. a PATH that finds
	// the containerd-shim-runc-v2 of the same build first.
	Env []string
	// RuncBinary is the runc the shim runs (the runc options' BinaryName);
	// empty: runc on the shim's PATH.
	RuncBinary string
}

// ContainerdCRI is a containerd with its own CRI plugin enabled, on a
// socket, root and state of its own: a reference CRI runtime for the
// kubelet helpers and for comparisons.
type ContainerdCRI struct {
	dir     string
	socket  string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	// madeNetnsDir: netnsDir did not exist before this containerd.
	madeNetnsDir bool
}

// Endpoint is "unix://<socket>", for Config.CRIEndpoint.
func (c *ContainerdCRI) Endpoint() string { return "unix://" + c.socket }

// Socket is the containerd socket path.
func (c *ContainerdCRI) Socket() string { return c.socket }

// Pid is containerd's process id.
func (c *ContainerdCRI) Pid() int { return c.cmd.Process.Pid }

// Dir holds the config, root, state, socket and log.
func (c *ContainerdCRI) Dir() string { return c.dir }

// LogPath is containerd's log.
func (c *ContainerdCRI) LogPath() string { return c.logPath }

// StartContainerdCRI runs containerd with its CRI plugin until the test
// ends. At the end every pod sandbox still known to its CRI plugin is
// stopped and removed (with its containers), containerd is stopped, any
// shim of it still alive is killed, and its dir is unmounted and removed.
func StartContainerdCRI(t testing.TB, cfg ContainerdCRIConfig) *ContainerdCRI {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containerd")
	}
	if cfg.Binary == "" {
		cfg.Binary = "containerd"
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		t.Skipf("no %s binary (apt-get install containerd): %v", cfg.Binary, err)
	}
	// Not t.TempDir: the socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "aurae-ctdcri-")
	if err != nil {
		t.Fatal(err)
	}
	c := &ContainerdCRI{
		dir:     dir,
		socket:  filepath.Join(dir, "containerd.sock"),
		logPath: filepath.Join(dir, "containerd.log"),
		done:    make(chan struct{}),
	}
	// containerd's CRI plugin pins its pods' network namespaces under the
	// machine's netnsDir, which it makes and never removes.
	if _, err := os.Lstat(netnsDir); errors.Is(err, fs.ErrNotExist) {
		c.madeNetnsDir = true
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(c.logPath); err == nil {
				t.Logf("containerd log (%s):\n%s", c.logPath, tailString(string(b), 32<<10))
			}
		}
		if err := c.close(); err != nil {
			t.Errorf("containerd CRI cleanup: %v", err)
		}
	})
	if cfg.CNIConfDir == "" {
		cfg.CNIConfDir = filepath.Join(dir, "net.d")
	}
	if cfg.CNIBinDir == "" {
		cfg.CNIBinDir = "/opt/cni/bin"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if err := os.MkdirAll(cfg.CNIConfDir, 0o755); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(confPath, []byte(c.config(cfg)), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config", confPath)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.Env = append(os.Environ(), cfg.Env...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		_ = logf.Close()
		t.Fatalf("start containerd: %v", err)
	}
	go func() {
		c.waitErr = c.cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.waitReady(ctx); err != nil {
		t.Fatalf("containerd CRI not ready: %v", err)
	}
	return c
}

func (c *ContainerdCRI) config(cfg ContainerdCRIConfig) string {
	q := strconv.Quote
	cri := `[plugins."io.containerd.grpc.v1.cri"]`
	return strings.Join([]string{
		"version = 2",
		"root = " + q(filepath.Join(c.dir, "root")),
		"state = " + q(filepath.Join(c.dir, "state")),
		`disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]`,
		"[grpc]",
		"  address = " + q(c.socket),
		"[ttrpc]",
		"  address = " + q(c.socket+".ttrpc"),
		"[debug]",
		"  level = " + q(cfg.LogLevel),
		"[metrics]",
		`  address = ""`,
		// NRI (on by default in containerd 2.x) would listen on the
		// machine's /var/run/nri/nri.sock.
		`[plugins."io.containerd.nri.v1.nri"]`,
		"  disable = true",
		`[plugins."io.containerd.internal.v1.opt"]`,
		"  path = " + q(filepath.Join(c.dir, "opt")),
		cri,
		"  sandbox_image = " + q(cfg.SandboxImage),
		`  stream_server_address = "127.0.0.1"`,
		`  stream_server_port = "0"`,
		// No CAP_SYS_RESOURCE here; see the design doc.
		"  restrict_oom_score_adj = true",
		// Do not load containerd's AppArmor profile into the kernel.
		"  disable_apparmor = true",
		"  [" + cri[1:len(cri)-1] + `.containerd]`,
		`    snapshotter = "overlayfs"`,
		`    default_runtime_name = "runc"`,
		"    [" + cri[1:len(cri)-1] + `.containerd.runtimes.runc]`,
		`      runtime_type = "io.containerd.runc.v2"`,
		"      [" + cri[1:len(cri)-1] + `.containerd.runtimes.runc.options]`,
		"        SystemdCgroup = false",
		"        BinaryName = " + q(cfg.RuncBinary),
		// runc's state; the default is /run/containerd/runc.
		"        Root = " + q(filepath.Join(c.dir, "runc")),
		"  [" + cri[1:len(cri)-1] + `.cni]`,
		"    bin_dir = " + q(cfg.CNIBinDir),
		"    conf_dir = " + q(cfg.CNIConfDir),
		"  [" + cri[1:len(cri)-1] + `.registry]`,
		"    config_path = " + q(cfg.RegistryConfigDir),
		"",
	}, "\n")
}

func (c *ContainerdCRI) dial() (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+c.socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.socket)
		}))
}

func (c *ContainerdCRI) waitReady(ctx context.Context) error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	last := fmt.Errorf("no socket %s", c.socket)
	for {
		select {
		case <-c.done:
			return fmt.Errorf("containerd exited: %w", c.waitErr)
		default:
		}
		if _, err := os.Stat(c.socket); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, last = rs.Version(cctx, &runtimeapi.VersionRequest{})
			cancel()
			if last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RuntimeClient is a CRI RuntimeService client on the socket; the
// connection is closed when the test ends.
func (c *ContainerdCRI) RuntimeClient(t testing.TB) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := c.dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

func (c *ContainerdCRI) removeSandboxes() error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	var errs []error
	for _, s := range resp.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s: %w", s.Id, err))
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s: %w", s.Id, err))
		}
	}
	return errors.Join(errs...)
}

func (c *ContainerdCRI) close() error {
	var errs []error
	if c.cmd != nil && c.cmd.Process != nil {
		select {
		case <-c.done:
		default:
			errs = append(errs, c.removeSandboxes())
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(30 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.done
			}
		}
	}
	errs = append(errs, killShims(c.dir))
	errs = append(errs, testimage.RemoveStateDir(c.dir))
	if c.madeNetnsDir {
		// Only when empty: another containerd of a test running beside
		// this one may have a pod's namespace in it.
		_ = os.Remove(netnsDir)
	}
	return errors.Join(errs...)
}

// netnsDir is where containerd's CRI plugin pins pods' network namespaces.
const netnsDir = "/run/netns"

// killShims kills the containerd-shim processes whose command line names a
// path under dir (the shims of a containerd started there), and their
// containers' processes with them (the shims' process groups).
func killShims(dir string) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") || !strings.Contains(string(b), dir) {
			continue
		}
		errs = append(errs, fmt.Errorf("containerd shim %d outlived its containerd: killed", pid))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return errors.Join(errs...)
}
