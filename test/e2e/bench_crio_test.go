package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// startCRIO starts the crio of binDir (hack/crio/build.sh) until the
// benchmark ends: storage, run dirs, socket, CNI network, registries and
// signature policy of its own, containers run by the pinned runc under
// Debian's conmon, cgroupfs, no NRI, no metrics. At the end its pods are
// removed, crio is stopped, any conmon of it still alive is killed (with
// its container) and its dir unmounted and removed.
func startCRIO(b *testing.B, reg *testimage.Registry, binDir string) (*benchRuntime, error) {
	conmon, err := exec.LookPath("conmon")
	if err != nil {
		return nil, fmt.Errorf("no conmon (apt-get install conmon): %w", err)
	}
	// Not b.TempDir: the socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "aurae-crio-")
	if err != nil {
		return nil, err
	}
	bridge := "co" + randomHex(b, 4)
	var cmd *exec.Cmd
	done := make(chan struct{})
	var waitErr error
	socket := filepath.Join(dir, "crio.sock")
	b.Cleanup(func() {
		if err := stopCRIO(socket, cmd, done, dir); err != nil {
			b.Errorf("CRI-O cleanup: %v", err)
		}
		if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			b.Errorf("delete bridge %s: %v: %s", bridge, err, out)
		}
	})
	confDir := filepath.Join(dir, "net.d")
	if _, err := netcni.WriteBridgeConfig(confDir, netcni.BridgeConfig{
		NetworkName: "bench-" + bridge, Bridge: bridge, Subnet: fmt.Sprintf("10.253.%d.0/24", 1+int(randomHex(b, 1)[0])%200), DataDir: filepath.Join(dir, "ipam"),
	}); err != nil {
		return nil, err
	}
	pause := reg.Push(b, "bench/pause:1", testimage.MustBusybox(b, testimage.Options{Entrypoint: []string{"/bin/sleep", "2147483647"}}))
	q := strconv.Quote
	files := map[string]string{
		"policy.json":     `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
		"registries.conf": "unqualified-search-registries = []\n[[registry]]\nlocation = " + q(reg.Host) + "\ninsecure = true\n",
		"storage.conf": strings.Join([]string{"[storage]", `driver = "overlay"`,
			"runroot = " + q(filepath.Join(dir, "run")), "graphroot = " + q(filepath.Join(dir, "root")), ""}, "\n"),
		"crio.conf": strings.Join([]string{
			"[crio]",
			"root = " + q(filepath.Join(dir, "root")),
			"runroot = " + q(filepath.Join(dir, "run")),
			`storage_driver = "overlay"`,
			"log_dir = " + q(filepath.Join(dir, "logs")),
			"version_file = " + q(filepath.Join(dir, "run", "version")),
			"version_file_persist = " + q(filepath.Join(dir, "version")),
			"clean_shutdown_file = " + q(filepath.Join(dir, "clean.shutdown")),
			"[crio.api]",
			"listen = " + q(socket),
			`stream_address = "127.0.0.1"`,
			`stream_port = "0"`,
			"[crio.runtime]",
			`default_runtime = "runc"`,
			`cgroup_manager = "cgroupfs"`,
			`log_level = "info"`,
			"container_exits_dir = " + q(filepath.Join(dir, "exits")),
			"container_attach_socket_dir = " + q(filepath.Join(dir, "attach")),
			"namespaces_dir = " + q(filepath.Join(dir, "ns")),
			"pinns_path = " + q(filepath.Join(binDir, "pinns")),
			"hooks_dir = [" + q(filepath.Join(dir, "hooks.d")) + "]",
			"cdi_spec_dirs = [" + q(filepath.Join(dir, "cdi")) + "]",
			`irqbalance_config_file = ""`,
			`irqbalance_config_restore_file = "disable"`,
			"[crio.runtime.runtimes.runc]",
			"runtime_path = " + q(pods.PinnedRuntime),
			`runtime_type = "oci"`,
			"runtime_root = " + q(filepath.Join(dir, "runc")),
			"monitor_path = " + q(conmon),
			`monitor_cgroup = "pod"`,
			"[crio.image]",
			"pause_image = " + q(pause),
			`pause_command = ""`,
			"signature_policy = " + q(filepath.Join(dir, "policy.json")),
			"[crio.network]",
			"network_dir = " + q(confDir),
			`plugin_dirs = ["/opt/cni/bin"]`,
			"[crio.metrics]",
			"enable_metrics = false",
			"[crio.nri]",
			"enable_nri = false",
			"",
		}, "\n"),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"crio.conf.d", "hooks.d", "cdi", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	logPath := filepath.Join(dir, "crio.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd = exec.Command(filepath.Join(binDir, "crio"), "--config", filepath.Join(dir, "crio.conf"), "--config-dir", filepath.Join(dir, "crio.conf.d"),
		// Where the loopback registry is marked insecure (plain HTTP).
		"--registries-conf", filepath.Join(dir, "registries.conf"))
	cmd.Env = append(os.Environ(),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start crio: %w", err)
	}
	go func() {
		waitErr = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
	defer cancel()
	endpoint := "unix://" + socket
	for {
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("crio exited: %w: %s", waitErr, tailString(string(log), 4000))
		case <-ctx.Done():
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("crio not ready: %w: %s", ctx.Err(), tailString(string(log), 4000))
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := os.Stat(socket); err != nil {
			continue
		}
		rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
		if err != nil {
			continue
		}
		st, err := rt.Status(ctx, false)
		if err != nil || !conditionsTrue(st) {
			continue
		}
		im, err := remote.NewRemoteImageServiceBuilder().WithEndpoint(endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
		if err != nil {
			return nil, err
		}
		return &benchRuntime{
			version: runtimeVersion(b, rt), endpoint: endpoint,
			rt: rt, im: im, logDir: filepath.Join(dir, "pods"),
			procs: procSet{
				daemons: func() []int { return []int{cmd.Process.Pid} },
				// conmon's arguments name the exits dir and the bundle under dir.
				markers: []string{dir},
			},
		}, nil
	}
}

func conditionsTrue(st *runtimeapi.StatusResponse) bool {
	for _, c := range st.GetStatus().GetConditions() {
		if !c.GetStatus() {
			return false
		}
	}
	return true
}

// stopCRIO removes crio's pods, stops it, kills what it left and removes
// its dir.
func stopCRIO(socket string, cmd *exec.Cmd, done chan struct{}, dir string) error {
	var errs []error
	if cmd != nil && cmd.Process != nil {
		select {
		case <-done:
		default:
			errs = append(errs, removeAllPods("unix://"+socket))
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
	}
	// conmons (and their containers) that outlived crio.
	for pid, p := range readProcs() {
		if strings.Contains(p.cmdline, dir) && filepath.Base(strings.SplitN(p.cmdline, "\x00", 2)[0]) == "conmon" {
			errs = append(errs, fmt.Errorf("conmon %d outlived crio: killed", pid))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	errs = append(errs, testimage.RemoveStateDir(dir))
	return errors.Join(errs...)
}

// removeAllPods stops and removes every pod a CRI endpoint knows.
func removeAllPods(endpoint string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).WithConnectionTimeout(2 * time.Minute).Build(ctx)
	if err != nil {
		return err
	}
	list, err := rt.ListPodSandbox(ctx, nil)
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	var errs []error
	for _, p := range list {
		if err := rt.StopPodSandbox(ctx, p.GetId()); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", p.GetId(), err))
		}
		if err := rt.RemovePodSandbox(ctx, p.GetId()); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", p.GetId(), err))
		}
	}
	return errors.Join(errs...)
}
