// Package kubelet runs a real, upstream kubelet in standalone mode (no API
// server: static pods only) against any CRI endpoint, for end-to-end tests.
//
// The kubelet is built from the Go module proxy at the version pinned in
// hack/kubelet/go.mod by hack/kubelet/build.sh and cached under
// ${AURAE_CACHE_DIR:-/var/cache/aurae-cri}. Build returns its path; Start
// writes a KubeletConfiguration for this machine kind (cgroup v1 or hybrid,
// cgroupfs driver, no systemd, no swap accounting) and runs it until the
// test ends; Pods reads the kubelet's read-only /pods endpoint.
//
// Typical use, once the runtime under test serves its socket (start the
// kubelet after the runtime, so that the kubelet's cleanup — drain the
// static pods, stop — runs before the runtime's):
//
//	k := kubelet.Start(t, kubelet.Config{
//		Binary:      kubelet.Build(t),
//		CRIEndpoint: "unix://" + criSocket,
//		PodLogsDir:  "/var/log/pods",
//	})
//	sp := k.WriteStaticPod(t, kubelet.BusyboxPod(kubelet.PodSpecOptions{
//		Name: "web", Image: ref, Script: "echo hi; sleep 3600"}))
//	p := k.WaitPodPhase(t, sp.Name, sp.Namespace, kubelet.PodRunning, 3*time.Minute)
//	k.WaitContainerLog(t, p, "main", "hi", time.Minute)
//	k.RemoveStaticPod(t, sp.Name, sp.Namespace)
//	k.WaitPodGone(t, sp.Name, sp.Namespace, time.Minute)
//
// A started kubelet changes the host in ways that Start undoes:
//   - it sets six kernel tunables (vm.overcommit_memory, kernel.panic, ...;
//     see Tunables), restored when the last test kubelet on the machine
//     stops;
//   - it creates /var/lib/kubelet/device-plugins and /var/log/containers
//     whatever --root-dir says (see hostDirs): its symlinks there are
//     removed, and the dirs too when the last test kubelet stops, if they
//     did not exist before;
//   - it would install iptables chains (KUBE-IPTABLES-HINT, KUBE-FIREWALL,
//     KUBE-KUBELET-CANARY) that it does not need itself: Start prevents it
//     by running the kubelet with a PATH without /usr/sbin and /sbin.
package kubelet

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// Env variables.
const (
	// EnvBinary names a kubelet binary to use instead of building one.
	EnvBinary = "AURAE_KUBELET_BINARY"
	// EnvCacheDir is where build.sh caches the binary
	// (default /var/cache/aurae-cri).
	EnvCacheDir = "AURAE_CACHE_DIR"
	// EnvE2E gates the slow tests that build and run a kubelet.
	EnvE2E = "AURAE_KUBELET_E2E"
	// EnvLogDir names a dir where each kubelet's log is copied when its
	// test ends (kubelet-<test>-<pid>.log), e.g. for CI artifacts.
	EnvLogDir = "AURAE_KUBELET_LOG_DIR"
)

// DefaultNodeName is the node name a kubelet gets when Config.NodeName is
// empty. Static pods are named "<manifest name>-<node name>".
const DefaultNodeName = "aurae-node"

// Build builds (or finds in the cache) the pinned kubelet with
// hack/kubelet/build.sh and returns its path. When AURAE_KUBELET_BINARY is
// set, that binary is used as is. A cold build takes minutes: run
// `hack/kubelet/build.sh` (make kubelet) before `go test` so that tests only
// hit the cache.
func Build(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", EnvBinary, p, err)
		}
		return p
	}
	script, err := buildScript()
	if err != nil {
		t.Fatalf("find hack/kubelet/build.sh: %v", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, tailString(stderr.String(), 16<<10))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	bin := strings.TrimSpace(lines[len(lines)-1])
	if bin == "" {
		t.Fatalf("%s printed no path\n%s", script, stderr.String())
	}
	if strings.Contains(stderr.String(), "built kubelet") {
		t.Logf("built kubelet %s in %s", bin, time.Since(start).Round(time.Second))
	}
	return bin
}

// buildScript finds hack/kubelet/build.sh from this source file, or from the
// working directory upwards when the sources were moved (-trimpath).
func buildScript() (string, error) {
	const rel = "hack/kubelet/build.sh"
	var tried []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
		tried = append(tried, p)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("not found at %s", strings.Join(tried, ", "))
		}
		dir = parent
	}
}

// Config describes a standalone kubelet. Only Binary and CRIEndpoint are
// required.
type Config struct {
	// Binary is the kubelet to run (from Build).
	Binary string
	// CRIEndpoint is the runtime's socket, "unix:///run/aurae/cri.sock".
	CRIEndpoint string
	// ImageEndpoint defaults to CRIEndpoint.
	ImageEndpoint string

	// RootDir is the kubelet's --root-dir. Default: a fresh directory under
	// the kubelet's temporary dir, removed when the test ends. For RootDir,
	// StaticPodDir and PodLogsDir named by the caller: everything mounted
	// under RootDir and PodLogsDir is unmounted at the end, a dir that Start
	// created is removed, one that existed is left with its content.
	RootDir string
	// StaticPodDir is the staticPodPath. Default: a fresh temporary dir.
	StaticPodDir string
	// PodLogsDir is where the kubelet asks the runtime to write container
	// logs. Default: a fresh temporary dir. Set "/var/log/pods" to test the
	// kubelet's default; a dir that Start creates is removed at the end.
	PodLogsDir string
	// NodeName is --hostname-override. Default DefaultNodeName.
	NodeName string

	// Ports on 127.0.0.1; 0 picks a free one.
	ReadOnlyPort, Port, HealthzPort int

	// CgroupsPerQOS makes the kubelet create QoS cgroups (kubepods,
	// burstable, besteffort) under CgroupRoot (required then, a cgroupfs
	// path such as "/aurae-e2e", created by Start) and pass the runtime a pod
	// cgroup parent, <root>/kubepods/<qos>/pod<uid>. Default false: no QoS
	// cgroups, the runtime gets an empty cgroup parent. CgroupRoot and
	// everything under it is removed when the kubelet stops.
	CgroupsPerQOS bool
	CgroupRoot    string
	// CgroupDriver is the KubeletConfiguration's cgroupDriver: "cgroupfs"
	// (default) or "systemd" (systemd as PID 1 on cgroup v2; the kubelet
	// 1.31+ takes the runtime's from RuntimeConfig). Under systemd a
	// CgroupRoot is one level without '-' ("/e2e_root"): Start makes the
	// slice e2e_root.slice, below which the kubelet puts
	// e2e_root-kubepods-<qos>-pod<uid>.slice, and stops it at the end.
	CgroupDriver string

	// ResolvConf is the content of the resolv.conf the kubelet gives to pods
	// with dnsPolicy Default (and ClusterFirst, as no cluster DNS is set).
	// Default "nameserver 127.0.0.1\n".
	ResolvConf string
	// ClusterDNS and ClusterDomain go to the KubeletConfiguration as is.
	ClusterDNS    []string
	ClusterDomain string

	// Config is merged over the generated KubeletConfiguration (top-level
	// keys replace).
	Config map[string]any
	// Args are appended to the kubelet's command line.
	Args []string
	// Verbosity is --v. Default 2.
	Verbosity int

	// StartTimeout bounds the wait for healthz and /pods. Default 90s.
	StartTimeout time.Duration
	// DrainTimeout bounds the wait, at the end of the test, for the static
	// pods to disappear from /pods after their manifests were removed,
	// before the kubelet is stopped. Default 90s; negative skips draining
	// (the pods are then left to the runtime's owner to remove).
	DrainTimeout time.Duration
}

// Kubelet is a running standalone kubelet.
type Kubelet struct {
	cfg        Config
	base       string // temporary dir of this kubelet: config, log, defaults
	configPath string
	logPath    string
	readOnly   string // http://127.0.0.1:PORT
	main       string // https://127.0.0.1:PORT
	healthz    string

	cmd      *exec.Cmd
	logFile  *os.File
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once

	created []string // dirs outside base that Start created
	host    *hostState
	client  *http.Client
}

// Start writes a KubeletConfiguration and runs the kubelet until the test
// ends; it returns once healthz answers ok and /pods answers. At the end of
// the test the static pods are removed and drained (see
// Config.DrainTimeout), the kubelet gets SIGTERM (SIGKILL after 30s),
// everything mounted under its dirs is unmounted, the dirs it created are
// removed, and the kernel tunables it changed are restored. Its log is
// attached to the test output when the test failed.
func Start(t testing.TB, cfg Config) *Kubelet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the kubelet needs root")
	}
	if cfg.Binary == "" || cfg.CRIEndpoint == "" {
		t.Fatalf("kubelet.Config needs Binary and CRIEndpoint")
	}
	k, err := start(t, cfg)
	if err != nil {
		if k != nil {
			t.Logf("kubelet log (%s):\n%s", k.logPath, k.LogTail(32<<10))
			k.cleanup(t)
		}
		t.Fatalf("start kubelet: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log (%s):\n%s", k.logPath, k.LogTail(64<<10))
		}
		k.drain(t)
		k.cleanup(t)
	})
	return k
}

func start(t testing.TB, cfg Config) (*Kubelet, error) {
	base, err := os.MkdirTemp("", "aurae-kubelet-")
	if err != nil {
		return nil, err
	}
	k := &Kubelet{base: base, done: make(chan struct{}), client: &http.Client{
		Timeout: 10 * time.Second,
		// The main server's certificate is self-signed, for 127.0.0.1.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback test server
	}}
	defaults := map[*string]string{
		&cfg.RootDir:      filepath.Join(base, "root"),
		&cfg.StaticPodDir: filepath.Join(base, "manifests"),
		&cfg.PodLogsDir:   filepath.Join(base, "pod-logs"),
	}
	for p, d := range defaults {
		if *p == "" {
			*p = d
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return k, err
		}
		*p = abs
	}
	if cfg.ImageEndpoint == "" {
		cfg.ImageEndpoint = cfg.CRIEndpoint
	}
	if cfg.NodeName == "" {
		cfg.NodeName = DefaultNodeName
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "nameserver 127.0.0.1\n"
	}
	if cfg.Verbosity == 0 {
		cfg.Verbosity = 2
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 90 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 90 * time.Second
	}
	if cfg.CgroupsPerQOS && cfg.CgroupRoot == "" {
		return k, errors.New("CgroupsPerQOS needs a CgroupRoot")
	}
	for _, p := range []*int{&cfg.ReadOnlyPort, &cfg.Port, &cfg.HealthzPort} {
		if *p == 0 {
			if *p, err = freePort(); err != nil {
				return k, err
			}
		}
	}
	if cfg.CgroupDriver == "" {
		cfg.CgroupDriver = "cgroupfs"
	}
	k.cfg = cfg
	if cfg.CgroupsPerQOS && cfg.CgroupDriver == "systemd" {
		if err := startRootSlice(cfg.CgroupRoot); err != nil {
			return k, err
		}
	} else if cfg.CgroupsPerQOS {
		if err := createCgroups(cfg.CgroupRoot); err != nil {
			return k, fmt.Errorf("create cgroup root %s: %w", cfg.CgroupRoot, err)
		}
	}
	for _, d := range []string{cfg.RootDir, cfg.StaticPodDir, cfg.PodLogsDir} {
		if err := k.mkdir(d); err != nil {
			return k, err
		}
	}
	resolv := filepath.Join(base, "resolv.conf")
	if err := os.WriteFile(resolv, []byte(cfg.ResolvConf), 0o644); err != nil {
		return k, err
	}
	conf, err := json.MarshalIndent(k.kubeletConfiguration(resolv), "", "  ")
	if err != nil {
		return k, err
	}
	k.configPath = filepath.Join(base, "kubelet.yaml") // JSON is YAML
	if err := os.WriteFile(k.configPath, conf, 0o644); err != nil {
		return k, err
	}
	k.readOnly = fmt.Sprintf("http://127.0.0.1:%d", cfg.ReadOnlyPort)
	k.main = fmt.Sprintf("https://127.0.0.1:%d", cfg.Port)
	k.healthz = fmt.Sprintf("http://127.0.0.1:%d/healthz", cfg.HealthzPort)

	k.host, err = acquireHostState()
	if err != nil {
		return k, err
	}

	k.logPath = filepath.Join(base, "kubelet.log")
	if k.logFile, err = os.Create(k.logPath); err != nil {
		return k, err
	}
	args := []string{
		"--config=" + k.configPath,
		"--root-dir=" + cfg.RootDir,
		"--cert-dir=" + filepath.Join(cfg.RootDir, "pki"),
		"--hostname-override=" + cfg.NodeName,
		"--v=" + strconv.Itoa(cfg.Verbosity),
	}
	args = append(args, cfg.Args...)
	k.cmd = exec.Command(cfg.Binary, args...)
	k.cmd.Stdout, k.cmd.Stderr = k.logFile, k.logFile
	k.cmd.Env = kubeletEnv()
	// Own process group; SIGTERM when the test binary dies without running
	// its cleanups (go test -timeout).
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	_, _ = fmt.Fprintf(k.logFile, "# %s %s\n# config %s:\n%s\n", cfg.Binary, strings.Join(args, " "), k.configPath, conf)
	if err := k.cmd.Start(); err != nil {
		return k, fmt.Errorf("exec %s: %w", cfg.Binary, err)
	}
	go func() {
		k.waitErr = k.cmd.Wait()
		close(k.done)
	}()
	t.Logf("kubelet pid %d: read-only %s, root %s, static pods %s, pod logs %s, log %s",
		k.cmd.Process.Pid, k.readOnly, cfg.RootDir, cfg.StaticPodDir, cfg.PodLogsDir, k.logPath)

	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	if err := k.waitReady(ctx); err != nil {
		return k, err
	}
	return k, nil
}

// kubeletConfiguration is the KubeletConfiguration (v1beta1) of a
// standalone kubelet on this machine kind.
func (k *Kubelet) kubeletConfiguration(resolv string) map[string]any {
	c := k.cfg
	conf := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"containerRuntimeEndpoint": c.CRIEndpoint,
		"imageServiceEndpoint":     c.ImageEndpoint,
		"staticPodPath":            c.StaticPodDir,
		"podLogsDir":               c.PodLogsDir,
		"fileCheckFrequency":       "5s",
		"syncFrequency":            "10s",
		"address":                  "127.0.0.1",
		"port":                     c.Port,
		"readOnlyPort":             c.ReadOnlyPort,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              c.HealthzPort,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": true},
			"webhook":   map[string]any{"enabled": false},
		},
		"authorization": map[string]any{"mode": "AlwaysAllow"},
		"registerNode":  false,
		// cgroup v1 (hybrid) without systemd: cgroupfs; systemd on the
		// cgroup v2 test VM.
		"cgroupDriver":           cmp.Or(c.CgroupDriver, "cgroupfs"),
		"failCgroupV1":           false,
		"failSwapOn":             false,
		"cgroupsPerQOS":          c.CgroupsPerQOS,
		"enforceNodeAllocatable": []string{},
		// No CAP_SYS_RESOURCE here: the default -999 is refused.
		"oomScoreAdj":                   0,
		"localStorageCapacityIsolation": false,
		"resolvConf":                    resolv,
		// Keep the kubelet's hands off the test's images and its disk.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available":  "1Mi",
			"nodefs.available":  "1%",
			"imagefs.available": "1%",
		},
		"serializeImagePulls": false,
		// The flex-volume prober creates this dir; the default is under
		// /usr/libexec.
		"volumePluginDir":                 filepath.Join(c.RootDir, "volume-plugins"),
		"shutdownGracePeriod":             "0s",
		"shutdownGracePeriodCriticalPods": "0s",
		"runtimeRequestTimeout":           "2m",
	}
	if c.CgroupsPerQOS {
		conf["cgroupRoot"] = c.CgroupRoot
		conf["enforceNodeAllocatable"] = []string{"pods"}
	}
	if len(c.ClusterDNS) > 0 {
		conf["clusterDNS"] = c.ClusterDNS
	}
	if c.ClusterDomain != "" {
		conf["clusterDomain"] = c.ClusterDomain
	}
	for key, v := range c.Config {
		conf[key] = v
	}
	return conf
}

// kubeletEnv is the environment of the kubelet: PATH without the sbin dirs,
// so that it finds no iptables (and installs no chains on the host) but
// still finds mount, umount, du, nsenter.
func kubeletEnv() []string {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "PATH=") {
			continue
		}
		env = append(env, e)
	}
	return env
}

func (k *Kubelet) waitReady(ctx context.Context) error {
	var last error
	for {
		select {
		case <-k.done:
			return fmt.Errorf("kubelet exited: %w", k.waitErr)
		default:
		}
		last = k.get(ctx, k.healthz, func(b []byte) error {
			if strings.TrimSpace(string(b)) != "ok" {
				return fmt.Errorf("healthz: %q", b)
			}
			return nil
		})
		if last == nil {
			if _, last = k.Pods(ctx); last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubelet not ready: %w (last: %w)", ctx.Err(), last)
		case <-k.done:
			return fmt.Errorf("kubelet exited: %w", k.waitErr)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (k *Kubelet) get(ctx context.Context, url string, check func([]byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, tailString(string(b), 512))
	}
	return check(b)
}

// Stop sends SIGTERM and waits for the kubelet to exit (SIGKILL after
// 30s). The pods it started keep running in the runtime, as with any
// kubelet restart. Stop is idempotent and also run when the test ends.
func (k *Kubelet) Stop() error {
	var err error
	k.stopOnce.Do(func() {
		if k.cmd == nil || k.cmd.Process == nil {
			return
		}
		_ = k.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.done:
		case <-time.After(30 * time.Second):
			_ = k.cmd.Process.Kill()
			<-k.done
			err = errors.New("kubelet ignored SIGTERM for 30s: killed")
		}
		var ee *exec.ExitError
		if k.waitErr != nil && !errors.As(k.waitErr, &ee) {
			err = errors.Join(err, k.waitErr)
		}
	})
	return err
}

// Exited reports whether the kubelet process has exited.
func (k *Kubelet) Exited() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// drain removes every manifest from the static pod dir and waits for the
// pods to leave /pods, so that the runtime sees the kubelet stop them.
func (k *Kubelet) drain(t testing.TB) {
	if k.cfg.DrainTimeout < 0 || k.Exited() {
		return
	}
	entries, err := os.ReadDir(k.cfg.StaticPodDir)
	if err != nil {
		t.Errorf("read static pod dir: %v", err)
		return
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(k.cfg.StaticPodDir, e.Name())); err != nil {
			t.Errorf("remove static pod: %v", err)
		}
	}
	var listed, running []Pod
	var cgroups []string
	var lastErr error
	if !k.poll(k.cfg.DrainTimeout, func(ctx context.Context) bool {
		if listed, lastErr = k.Pods(ctx); lastErr != nil || len(listed) > 0 {
			return false
		}
		if running, lastErr = k.RunningPods(ctx); lastErr != nil || len(running) > 0 {
			return false
		}
		cgroups = k.podCgroups()
		return len(cgroups) == 0
	}) && !k.Exited() {
		t.Errorf("%s after removing every static pod manifest: kubelet lists pods %v, runtime runs pods %v, pod cgroups left %v (last error: %v)",
			k.cfg.DrainTimeout, podNames(listed), podNames(running), cgroups, lastErr)
	}
}

// podCgroups lists the pod cgroups under the QoS cgroups of the kubelet
// (with CgroupsPerQOS): the kubelet removes them once a pod's containers
// are gone.
func (k *Kubelet) podCgroups() []string {
	if !k.cfg.CgroupsPerQOS {
		return nil
	}
	hier := "/sys/fs/cgroup/memory"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		hier = "/sys/fs/cgroup"
	}
	kubepods := filepath.Join(hier, k.cfg.CgroupRoot, "kubepods")
	if k.cfg.CgroupDriver == "systemd" {
		return systemdPodCgroups(k.cfg.CgroupRoot)
	}
	var out []string
	for _, qos := range []string{"", "burstable", "besteffort"} {
		m, _ := filepath.Glob(filepath.Join(kubepods, qos, "pod*"))
		out = append(out, m...)
	}
	return out
}

func (k *Kubelet) cleanup(t testing.TB) {
	if err := k.Stop(); err != nil {
		t.Errorf("stop kubelet: %v", err)
	}
	if k.logFile != nil {
		_ = k.logFile.Close()
		if dir := os.Getenv(EnvLogDir); dir != "" && k.cmd != nil && k.cmd.Process != nil {
			k.keepLog(t, dir)
		}
	}
	for _, d := range []string{k.cfg.RootDir, k.cfg.PodLogsDir, k.base} {
		if d == "" {
			continue
		}
		if err := testimage.UnmountUnder(d); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	}
	if k.cfg.PodLogsDir != "" {
		if err := removeLogLinks(k.cfg.PodLogsDir); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	}
	if k.cfg.CgroupsPerQOS && k.cfg.CgroupDriver == "systemd" {
		if err := stopRootSlice(k.cfg.CgroupRoot); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	} else if k.cfg.CgroupsPerQOS {
		if err := removeCgroups(k.cfg.CgroupRoot); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	}
	for i := len(k.created) - 1; i >= 0; i-- {
		if err := os.RemoveAll(k.created[i]); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	}
	if k.base != "" {
		if err := os.RemoveAll(k.base); err != nil {
			t.Errorf("kubelet cleanup: %v", err)
		}
	}
	if k.host != nil {
		if err := k.host.release(); err != nil {
			t.Errorf("kubelet cleanup: restore kernel tunables: %v", err)
		}
		k.host = nil
	}
}

func (k *Kubelet) keepLog(t testing.TB, dir string) {
	b, err := os.ReadFile(k.logPath)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		err = os.WriteFile(filepath.Join(dir, fmt.Sprintf("kubelet-%s-%d.log", name, k.cmd.Process.Pid)), b, 0o644)
	}
	if err != nil {
		t.Logf("keep kubelet log in %s: %v", dir, err)
	}
}

// mkdir creates d and its missing parents, remembering the topmost one it
// created outside the kubelet's temporary dir for removal.
func (k *Kubelet) mkdir(d string) error {
	if !strings.HasPrefix(d, k.base+string(filepath.Separator)) {
		top := ""
		for p := d; ; p = filepath.Dir(p) {
			if _, err := os.Lstat(p); err == nil {
				break
			}
			top = p
			if filepath.Dir(p) == p {
				break
			}
		}
		if top != "" {
			k.created = append(k.created, top)
		}
	}
	return os.MkdirAll(d, 0o755)
}

// Accessors.

// ReadOnlyURL is "http://127.0.0.1:PORT", the kubelet's read-only server.
func (k *Kubelet) ReadOnlyURL() string { return k.readOnly }

// URL is "https://127.0.0.1:PORT", the kubelet's main server (self-signed
// certificate; anonymous requests are allowed).
func (k *Kubelet) URL() string { return k.main }

// NodeName is the kubelet's node name (the suffix of static pod names).
func (k *Kubelet) NodeName() string { return k.cfg.NodeName }

// RootDir is the kubelet's --root-dir.
func (k *Kubelet) RootDir() string { return k.cfg.RootDir }

// StaticPodDir is the kubelet's staticPodPath.
func (k *Kubelet) StaticPodDir() string { return k.cfg.StaticPodDir }

// PodLogsDir is the kubelet's podLogsDir.
func (k *Kubelet) PodLogsDir() string { return k.cfg.PodLogsDir }

// ConfigPath is the KubeletConfiguration file.
func (k *Kubelet) ConfigPath() string { return k.configPath }

// LogPath is the file that holds the kubelet's stdout and stderr.
func (k *Kubelet) LogPath() string { return k.logPath }

// Pid is the kubelet's process id.
func (k *Kubelet) Pid() int { return k.cmd.Process.Pid }

// LogTail returns the last n bytes of the kubelet's log.
func (k *Kubelet) LogTail(n int) string {
	b, err := os.ReadFile(k.logPath)
	if err != nil {
		return fmt.Sprintf("(read kubelet log: %v)", err)
	}
	return tailString(string(b), n)
}

// LogLines returns the lines of the kubelet's log that contain substr.
func (k *Kubelet) LogLines(substr string) []string {
	f, err := os.Open(k.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			out = append(out, sc.Text())
		}
	}
	return out
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "...\n" + s
}
