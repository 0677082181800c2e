// Package critest_test runs critest, the CRI validation suite of
// sigs.k8s.io/cri-tools, against aurae-cri (make critest). The images critest
// pulls are built here from Debian's busybox and served by a registry on
// 127.0.0.1, under their upstream names through --registry-config-dir
// mirrors. Failures not listed in hack/critest/known-failures.txt fail the
// test.
package critest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	remote "k8s.io/cri-client/pkg"

	"github.com/aurae-runtime/aurae-cri/pkg/netcni"
	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// digestSpec pulls an image by a digest fixed upstream, which no local
// build reproduces: skipped, not failed.
const digestSpec = `public image with digest should be pulled and removed`

// unavailable fails the test under CI=true and skips it elsewhere.
func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// criTools builds (or takes from the cache) crictl, critest and ginkgo.
func criTools(t *testing.T, root string) (dir, moduleDir string) {
	t.Helper()
	start := time.Now()
	out, err := exec.Command(filepath.Join(root, "hack/critest/build.sh")).Output()
	if err != nil {
		unavailable(t, "hack/critest/build.sh: %v", err)
	}
	dir = strings.TrimSpace(string(out))
	t.Logf("cri-tools in %s (%v)", dir, time.Since(start).Round(time.Second))
	cmd := exec.Command(goBin(), "list", "-m", "-json", "sigs.k8s.io/cri-tools")
	cmd.Dir = filepath.Join(root, "hack/critest")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	b, err := cmd.Output()
	if err != nil {
		unavailable(t, "go list -m sigs.k8s.io/cri-tools: %v", err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(b, &m); err != nil || m.Dir == "" {
		t.Fatalf("go list -m sigs.k8s.io/cri-tools: %v (%s)", err, b)
	}
	return dir, m.Dir
}

func TestCritest(t *testing.T) {
	if os.Getenv("AURAE_CRITEST") != "1" {
		t.Skip("critest runs under make critest (AURAE_CRITEST=1)")
	}
	if os.Geteuid() != 0 {
		unavailable(t, "critest needs root (pods, cgroups, CNI)")
	}
	for _, p := range []string{"/opt/cni/bin/bridge", testimage.BusyboxPath} {
		if _, err := os.Stat(p); err != nil {
			unavailable(t, "%s missing (make deps installs it): %v", p, err)
		}
	}
	root := repoRoot(t)
	tools, moduleDir := criTools(t, root)
	known, err := readKnownFailures(filepath.Join(root, "hack/critest/known-failures.txt"))
	if err != nil {
		t.Fatal(err)
	}

	// aurae-cri, built for this run.
	tmp := t.TempDir()
	// As /var/lib: the root of a pod's user namespace passes through to
	// the rootfs under the state dir (t.TempDir makes them 0700).
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(tmp, "aurae-cri")
	build := exec.Command(goBin(), "build", "-o", bin, "./cmd/aurae-cri")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/aurae-cri: %v\n%s", err, out)
	}

	// The images, under their upstream names.
	reg := testimage.StartRegistry(t)
	refs := critestImages(t, moduleDir)
	if len(refs) == 0 {
		t.Fatal("no image references found in critest's source")
	}
	var served []string
	for _, ref := range refs {
		if strings.Contains(ref, "@sha256:") {
			t.Logf("image %s: fixed upstream digest, not served (spec %q skipped)", ref, digestSpec)
			continue
		}
		_, repoTag := splitRef(ref)
		reg.Push(t, repoTag, imageFor(t, repoTag))
		served = append(served, ref)
	}
	t.Logf("serving %d images of critest's source from %s: %s", len(served), reg.Host, strings.Join(served, " "))
	hostsDir := filepath.Join(tmp, "hosts")
	writeHosts(t, hostsDir, reg.Host, served)

	// aurae-cri on a socket, state, cgroup root and network of the run's own.
	sockDir, err := os.MkdirTemp("", "critest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	suffix := strconv.FormatInt(time.Now().UnixNano()%1e6, 36)
	bridge, cgroupRoot := "ct"+suffix, "aurae-critest-"+suffix
	confDir := filepath.Join(tmp, "cni")
	if _, err := netcni.WriteBridgeConfig(confDir, netcni.BridgeConfig{
		NetworkName: "critest-" + suffix, Bridge: bridge, Subnet: "10.252.0.0/16", DataDir: filepath.Join(tmp, "ipam"),
	}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "cri.sock")
	nriSock := filepath.Join(sockDir, "nri.sock")
	endpoint := "unix://" + sock
	stateDir := filepath.Join(tmp, "state")
	logFile, err := os.Create(filepath.Join(tmp, "aurae-cri.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cri := exec.Command(bin,
		"--socket", sock,
		"--state-dir", stateDir,
		"--cgroup-root", cgroupRoot,
		"--containerd-address", filepath.Join(sockDir, "no-containerd.sock"),
		"--registry-config-dir", hostsDir,
		"--cni-conf-dir", confDir,
		"--cni-bin-dir", "/opt/cni/bin",
		// NRI on a socket of the run's own: critest's NRI specs connect
		// their plugin there (-nri-socket below).
		"--enable-nri",
		"--nri-socket", nriSock,
		"--nri-plugin-dir", filepath.Join(sockDir, "nri-plugins"),
		"--nri-plugin-config-dir", filepath.Join(sockDir, "nri-conf"),
		// A synchronization spec holds its plugin's Synchronize for 2 s:
		// with NRI's default 2 s request timeout on this slow machine the
		// plugin would be disconnected (as containerd's would) and the
		// spec skips.
		"--nri-plugin-request-timeout", "10s",
	)
	cri.Stdout, cri.Stderr = logFile, logFile
	if err := cri.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cri.Wait() }()
	t.Cleanup(func() {
		cleanup(t, cri, exited, endpoint, stateDir, cgroupRoot, bridge)
		if t.Failed() {
			if b, err := os.ReadFile(logFile.Name()); err == nil {
				t.Logf("aurae-cri log (last 8 KiB):\n%s", tail(b, 8<<10))
			}
		}
	})
	waitReady(t, endpoint, exited)

	// critest.
	report := filepath.Join(tmp, "critest-report.json")
	parallel := os.Getenv("CRITEST_PARALLEL")
	if parallel == "" {
		parallel = "1"
	}
	args := []string{
		"--runtime-endpoint", endpoint,
		"--image-endpoint", endpoint,
		"-nri-socket", nriSock,
		"--ginkgo.skip", digestSpec,
		"--ginkgo.json-report", report,
		"--ginkgo.no-color",
		"--ginkgo.timeout", "60m",
	}
	if parallel != "1" {
		// critest runs itself under the ginkgo CLI (built beside it).
		args = append(args, "-parallel", parallel)
	}
	if f := os.Getenv("CRITEST_FOCUS"); f != "" {
		args = append(args, "--ginkgo.focus", f)
	}
	out, err := os.Create(filepath.Join(tmp, "critest.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ct := exec.CommandContext(t.Context(), filepath.Join(tools, "critest"), args...)
	ct.Dir = tmp
	// TMPDIR: critest's parallel mode makes a "cri-test*" dir in the temp
	// dir and leaves it; the test's own temp dir goes with the test.
	ct.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"), "TMPDIR="+tmp)
	ct.Stdout, ct.Stderr = out, out
	start := time.Now()
	runErr := ct.Run()
	took := time.Since(start).Round(time.Second)
	r, err := readReport(report)
	if err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("critest (%v, %v): no report: %v\n%s", took, runErr, err, tail(b, 16<<10))
	}
	if dir := os.Getenv("CRITEST_OUTPUT_DIR"); dir != "" {
		_ = os.MkdirAll(dir, 0o755)
		for _, f := range []string{report, out.Name()} {
			if b, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644)
			}
		}
	}

	var unexpected, knownFailed, fixed []string
	for _, name := range r.failed {
		if _, ok := known[name]; ok {
			knownFailed = append(knownFailed, name)
		} else {
			unexpected = append(unexpected, name)
		}
	}
	for _, name := range r.passed {
		if _, ok := known[name]; ok {
			fixed = append(fixed, name)
		}
	}
	for _, name := range knownFailed {
		t.Logf("known failure: %s (%s)", name, known[name])
	}
	for _, name := range fixed {
		t.Logf("passes now, remove from known-failures.txt: %s", name)
	}
	summary := fmt.Sprintf("critest: %d passed, %d failed (%d known), %d skipped in %v (parallel %s)",
		len(r.passed), len(r.failed), len(knownFailed), len(r.skipped), took, parallel)
	t.Log(summary)
	fmt.Println(summary)
	for _, name := range unexpected {
		t.Errorf("failed, not in hack/critest/known-failures.txt: %s\n\t%s", name, r.messages[name])
	}
	for _, want := range mustPass {
		ok := slices.ContainsFunc(r.passed, func(name string) bool {
			return strings.Contains(name, want.context) && strings.HasSuffix(name, want.leaf)
		})
		if !ok && os.Getenv("CRITEST_FOCUS") == "" {
			t.Errorf("no passed spec %q ... %q: this host can run it (skipped: aurae-cri did not report the feature)", want.context, want.leaf)
		}
	}
	if len(r.passed)+len(r.failed) == 0 {
		t.Errorf("critest ran no spec (%v)", runErr)
	}
}

// mustPass are specs this host can run, which critest would skip (not
// fail) if aurae-cri stopped reporting the feature they need.
var mustPass = []struct{ context, leaf string }{
	{"UserNamespaces", "runtime should support NamespaceMode_POD"},
	{"UserNamespaces", "runtime should support NamespaceMode_NODE"},
	{"UserNamespaces", "runtime should fail if more than one mapping provided"},
	{"UserNamespaces", "runtime should fail if container ID 0 is not mapped"},
	{"UserNamespaces", "runtime should fail with NamespaceMode_CONTAINER"},
	{"UserNamespaces", "runtime should fail with NamespaceMode_TARGET"},
	// Skipped when ListMetricDescriptors answers Unimplemented.
	{"runtime should support metrics operations", "runtime should support returning metrics descriptors [Conformance]"},
	{"runtime should support metrics operations", "runtime should support listing pod sandbox metrics [Conformance]"},
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitReady waits until aurae-cri answers Status with every condition true.
func waitReady(t *testing.T, endpoint string, exited chan error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("aurae-cri exited before answering: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).WithConnectionTimeout(2 * time.Second).Build(ctx)
		if err == nil {
			st, serr := rt.Status(ctx, false)
			err = serr
			for _, c := range st.GetStatus().GetConditions() {
				if !c.GetStatus() {
					err = fmt.Errorf("%s: %s", c.GetType(), c.GetMessage())
				}
			}
		}
		cancel()
		if err == nil {
			return
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("aurae-cri not ready within 2m: %v", last)
}

// cleanup removes what critest left through the CRI, stops aurae-cri and
// removes its cgroups, mounts and bridge.
func cleanup(t *testing.T, cri *exec.Cmd, exited chan error, endpoint, stateDir, cgroupRoot, bridge string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if rt, err := remote.NewRemoteRuntimeServiceBuilder().WithEndpoint(endpoint).WithConnectionTimeout(5 * time.Second).Build(ctx); err == nil {
		if pods, err := rt.ListPodSandbox(ctx, nil); err == nil {
			for _, p := range pods {
				_ = rt.StopPodSandbox(ctx, p.GetId())
				if err := rt.RemovePodSandbox(ctx, p.GetId()); err != nil {
					t.Logf("cleanup: remove pod %s: %v", p.GetId(), err)
				}
			}
		}
	}
	_ = cri.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		t.Logf("aurae-cri stopped: %v", err)
	case <-time.After(30 * time.Second):
		_ = cri.Process.Kill()
		t.Logf("aurae-cri killed: %v", <-exited)
	}
	removeCgroups(t, cgroupRoot)
	if err := testimage.UnmountUnder(stateDir); err != nil {
		t.Errorf("unmount under %s: %v", stateDir, err)
	}
	if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		t.Errorf("delete bridge %s: %v: %s", bridge, err, out)
	}
}

// removeCgroups kills what is left in the cgroup root of the run in every
// hierarchy and removes it, children first.
func removeCgroups(t *testing.T, root string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", root))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", root)); err == nil {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", root))
	}
	for _, d := range dirs {
		var all []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		for i := len(all) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(all[i], "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscallKill(pid)
					}
				}
			}
			for range 50 {
				if err := os.Remove(all[i]); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
