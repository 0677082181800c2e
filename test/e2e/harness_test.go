// Package e2e starts the real binaries and drives them through their sockets
// with the real clients. The binaries are built once per `go test` run, in
// TestMain. Tests need root (cgroups, namespaces) and skip without it.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

const (
	// e2eVersion is stamped into the binaries, so tests can tell them from
	// a stray daemon.
	e2eVersion = "e2e-test"
	// stopTimeout bounds a graceful stop (auraed's own bound is 5 s).
	stopTimeout = 20 * time.Second
)

// startTimeout bounds how long a daemon may take to answer Discover: 30 s,
// or AURAE_E2E_START_TIMEOUT (a Go duration; the cgroup v2 VM under TCG on a
// loaded machine gives more).
var startTimeout = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("AURAE_E2E_START_TIMEOUT")); err == nil && d > 0 {
		return d
	}
	return 30 * time.Second
}()

// binaries maps a command name (auraed, aurae-cri, ...) to its binary built
// for this run; commands missing from cmd/ are not built.
var binaries = map[string]string{}

// runID marks what this run of the package makes on the machine (its
// daemons' cgroup roots), so that its leftover check counts its own and
// not those of another run going on beside it.
var runID = func() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}()

// cgroupRootPrefix starts the cgroup root of every daemon this run starts.
func cgroupRootPrefix() string { return "aurae-e2e-" + runID + "-" }

// skipReason is set when the e2e tests cannot run here.
var skipReason string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "e2e tests need root (cgroups, namespaces, /run); run `sudo make test`"
		return m.Run()
	}
	if dir := os.Getenv(binDirEnv); dir != "" {
		// A test binary run where there is no Go toolchain (the cgroup v2
		// test VM, hack/vm-cg2): the daemons were built beside it.
		if err := prebuiltBinaries(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	} else {
		dir, err := os.MkdirTemp("", "aurae-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer func() { _ = os.RemoveAll(dir) }()
		if err := buildBinaries(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			return 1
		}
	}
	code := m.Run()
	// Every test cleans up after itself; this checks that they did.
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: left on the machine after the tests:\n  %s\n", strings.Join(left, "\n  "))
		return 1
	}
	return code
}

// buildBinaries builds every main package under cmd/ into dir.
func buildBinaries(dir string) error {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		return fmt.Errorf("list commands: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		out := filepath.Join(dir, e.Name())
		cmd := exec.Command(goBin, "build",
			"-ldflags", "-X github.com/aurae-runtime/aurae-cri/pkg/version.Version="+e2eVersion,
			"-o", out, "./cmd/"+e.Name())
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/%s: %w\n%s", e.Name(), err, b)
		}
		binaries[e.Name()] = out
	}
	return nil
}

// binDirEnv names a directory of prebuilt daemon binaries (auraed,
// aurae-holder, aurae-cri, aer, stamped with e2eVersion) that replaces the build in
// TestMain.
const binDirEnv = "AURAE_E2E_BIN_DIR"

// prebuiltBinaries takes the commands of cmd/ from dir; each must be there.
func prebuiltBinaries(dir string) error {
	for _, name := range []string{"auraed", "aurae-holder", "aurae-cri", "aer"} {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s=%s: %w", binDirEnv, dir, err)
		}
		if st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s=%s: %s is not executable", binDirEnv, dir, p)
		}
		binaries[name] = p
	}
	return nil
}

// requireRoot skips the test when the e2e tests cannot run here.
func requireRoot(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// Auraed is one auraed under test, with its own socket, state dir and cgroup
// root; Restart keeps them.
type Auraed struct {
	Socket     string
	StateDir   string
	CgroupRoot string

	t    testing.TB
	args []string
	// env is added to the daemon's environment (the test's).
	env  []string
	logs *syncBuffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait's result, once exited is closed
	client *client.Client
	// ready, when set, replaces the wait for Discover (for daemons that
	// serve another API on the same process machinery, like aurae-cri).
	ready func(t testing.TB, exited chan struct{})
}

// startAuraed starts auraed with args after its defaults for the test
// (socket and state dir in t.TempDir(), --cgroup-root aurae-e2e-<random>,
// --log-level debug), waits until Discover answers, and stops it (SIGTERM)
// and removes its cgroups, killing what is left in them, when the test ends.
func startAuraed(t testing.TB, args ...string) *Auraed {
	t.Helper()
	requireRoot(t)
	bin, ok := binaries["auraed"]
	if !ok {
		t.Fatal("auraed was not built")
	}
	// Unix socket paths are limited to 108 bytes: keep it short.
	sockDir, err := os.MkdirTemp("", "ae2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	a := &Auraed{
		Socket:     filepath.Join(sockDir, "aurae.sock"),
		StateDir:   filepath.Join(t.TempDir(), "state"),
		CgroupRoot: cgroupRootPrefix() + randomHex(t, 6),
		t:          t,
		logs:       &syncBuffer{},
	}
	a.args = append([]string{bin,
		"--socket", a.Socket,
		"--state-dir", a.StateDir,
		"--cgroup-root", a.CgroupRoot,
		"--log-level", "debug",
	}, append(cgroupDriverArgs(), args...)...)
	t.Cleanup(func() {
		a.stop(t)
		removeCgroupTree(t, a.CgroupRoot)
		stopSystemdRoot(t, a.CgroupRoot)
		if t.Failed() {
			t.Logf("auraed logs:\n%s", a.Logs())
		}
	})
	a.start(t)
	return a
}

func (a *Auraed) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(a.args[0], a.args[1:]...)
	if len(a.env) > 0 {
		cmd.Env = append(os.Environ(), a.env...)
	}
	cmd.Stderr = a.logs
	cmd.Stdout = a.logs
	// Its own process group: a ^C of `go test` reaches the daemon only
	// through our cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	_, _ = fmt.Fprintf(a.logs, "--- e2e: starting %s\n", strings.Join(a.args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", filepath.Base(a.args[0]), err)
	}
	exited := make(chan struct{})
	a.mu.Lock()
	a.cmd, a.exited, a.err = cmd, exited, nil
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.err = err
		a.mu.Unlock()
		close(exited)
	}()
	if a.ready != nil {
		a.ready(t, exited)
		return
	}
	a.waitReady(t, exited)
}

// waitReady waits until Discover answers on the socket.
func (a *Auraed) waitReady(t testing.TB, exited chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("auraed exited before answering (%v); logs:\n%s", a.exitErr(), a.Logs())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := client.Dial(ctx, "unix://"+a.Socket)
		if err == nil {
			var resp *discoveryv0.DiscoverResponse
			resp, err = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
			if err == nil && (!resp.GetHealthy() || resp.GetVersion() != e2eVersion) {
				err = fmt.Errorf("unexpected Discover answer %v", resp)
			}
			if err == nil {
				cancel()
				a.mu.Lock()
				a.client = c
				a.mu.Unlock()
				return
			}
			_ = c.Close()
		}
		cancel()
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("auraed did not answer Discover within %v: %v; logs:\n%s", startTimeout, last, a.Logs())
}

// Client returns a client connected to the running auraed's socket.
func (a *Auraed) Client() *client.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client == nil {
		a.t.Fatal("auraed is not running")
	}
	return a.client
}

// Pid is the pid of the running daemon.
func (a *Auraed) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		a.t.Fatal("auraed is not running")
	}
	return a.cmd.Process.Pid
}

// Logs returns everything auraed wrote to stderr, over all its runs.
func (a *Auraed) Logs() string {
	return a.logs.String()
}

// Records returns the JSON log records of all runs; other lines are skipped.
func (a *Auraed) Records() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(a.Logs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TCPAddr is the TCP address the current run serves on (--listen), as
// logged at startup; "" without --listen. The line comes once the unix
// socket already answers: it is waited for, for a few seconds.
func (a *Auraed) TCPAddr() string {
	for deadline := time.Now().Add(10 * time.Second); ; {
		addr, logged := "", false
		for _, r := range a.Records() {
			if r["msg"] == "auraed serving" {
				addr, _ = r["listen"].(string)
				logged = true
			}
		}
		if logged || time.Now().After(deadline) {
			return addr
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill9 kills auraed with SIGKILL and waits for it: no cleanup runs, the
// socket stays behind.
func (a *Auraed) Kill9() {
	a.t.Helper()
	a.signal(syscall.SIGKILL)
	_ = a.wait(a.t)
}

// Stop sends SIGTERM and waits for auraed to exit; it returns the exit
// error (nil for status 0).
func (a *Auraed) Stop(t testing.TB) error {
	t.Helper()
	a.signal(syscall.SIGTERM)
	return a.wait(t)
}

// Restart stops auraed if it runs (SIGTERM) and starts it again with the
// same arguments, socket and state dir.
func (a *Auraed) Restart(t testing.TB) {
	t.Helper()
	a.stop(t)
	a.start(t)
}

// stop is Stop without caring how auraed ended; a no-op when not running.
func (a *Auraed) stop(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	running := a.cmd != nil
	a.mu.Unlock()
	if running {
		_ = a.Stop(t)
	}
}

func (a *Auraed) signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	select {
	case <-a.exited:
	default:
		_ = a.cmd.Process.Signal(sig)
	}
}

// wait waits for the current run to end (SIGKILL after stopTimeout) and
// closes its client.
func (a *Auraed) wait(t testing.TB) error {
	t.Helper()
	a.mu.Lock()
	cmd, exited, c := a.cmd, a.exited, a.client
	a.client = nil
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if c != nil {
		_ = c.Close()
	}
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		t.Errorf("auraed did not exit within %v; killing it", stopTimeout)
		_ = cmd.Process.Kill()
		<-exited
	}
	a.mu.Lock()
	a.cmd = nil
	err := a.err
	a.mu.Unlock()
	return err
}

func (a *Auraed) exitErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// removeCgroupTree kills every process left in the cgroup root (cells outlive
// auraed) and removes its cgroups, in every hierarchy.
func removeCgroupTree(t testing.TB, root string) {
	t.Helper()
	dirs := []string{filepath.Join("/sys/fs/cgroup", root)}
	if entries, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name(), root))
			}
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err != nil {
			continue
		}
		if err := removeCgroup(d); err != nil {
			t.Errorf("clean up cgroup %s: %v", d, err)
		}
	}
}

// removeCgroup kills the processes of cgroup dir and its children and
// removes them, children first.
func removeCgroup(dir string) error {
	var subdirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			subdirs = append(subdirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Reverse(subdirs) // children before parents
	deadline := time.Now().Add(10 * time.Second)
	for _, d := range subdirs {
		for {
			pids := cgroupPids(d)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("processes %v do not die", pids)
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for {
			err := syscall.Rmdir(d)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("rmdir %s: %w", d, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func cgroupPids(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer is a bytes.Buffer safe for a writing process and reading tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testContext is a context bounded for one e2e test.
func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
