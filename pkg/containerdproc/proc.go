// Package containerdproc finds a containerd to talk to, or starts one as a
// child process.
//
// Ensure first asks the containerd at Config.Address for its version. When
// none answers and a containerd binary is installed, it starts one with a
// configuration it writes under <StateDir>/containerd/: its own root, state
// directory and gRPC socket, and the CRI plugin disabled. A child left
// running by an earlier process with the same state directory is adopted
// rather than started twice.
package containerdproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
)

// Defaults used when the corresponding Config field is zero.
const (
	DefaultBinary       = "containerd"
	DefaultStartTimeout = 30 * time.Second
	DefaultStopTimeout  = 10 * time.Second
	// PingTimeout bounds the version call that tells whether a containerd answers.
	PingTimeout = 2 * time.Second
)

// unixPathMax is the size of sun_path on Linux, terminating NUL included.
const unixPathMax = 108

// Config says where to look for containerd and where a child keeps its files.
type Config struct {
	// Address of a containerd to use if it answers (a socket path or a
	// unix:// address). Empty skips the check.
	Address string
	// StateDir is the parent of the child's directory, <StateDir>/containerd.
	// Required unless a containerd answers at Address.
	StateDir string
	// Binary is the containerd executable, a path or a name looked up on
	// PATH. Empty means "containerd".
	Binary string
	// StartTimeout bounds how long a started child may take to answer.
	StartTimeout time.Duration
	// StopTimeout bounds how long Close waits after SIGTERM before SIGKILL.
	StopTimeout time.Duration
	// LogLevel of the child ("info" when empty).
	LogLevel string
	// Logger receives this package's messages (slog.Default when nil).
	Logger *slog.Logger
}

// Proc is a containerd that answers at Address. When this package started
// (or adopted) it, Close stops it; otherwise Close does nothing.
type Proc struct {
	address string
	root    string
	dir     string
	owned   bool
	pid     int
	cmd     *exec.Cmd
	exited  chan struct{} // closed when an owned child has been reaped
	logFile *os.File
	logger  *slog.Logger
	stopTO  time.Duration

	closeOnce sync.Once
	closeErr  error
}

// Address is the containerd gRPC address to dial.
func (p *Proc) Address() string { return p.address }

// Owned reports whether Close stops this containerd (a child this package
// started or adopted).
func (p *Proc) Owned() bool { return p.owned }

// Pid is the child's pid, or 0 for a containerd this package does not own.
func (p *Proc) Pid() int { return p.pid }

// Root is the child's root directory (where its snapshotters and content
// live), or "" for a containerd this package does not own.
func (p *Proc) Root() string { return p.root }

// Dir is the child's directory, <StateDir>/containerd, or "" when not owned.
func (p *Proc) Dir() string { return p.dir }

// LogPath is the file receiving the child's stderr, or "" when not owned.
func (p *Proc) LogPath() string {
	if p.dir == "" {
		return ""
	}
	return filepath.Join(p.dir, "containerd.log")
}

// Ping asks the containerd at address for its version within PingTimeout.
func Ping(ctx context.Context, address string) (containerd.Version, error) {
	// containerd's dialer waits for a missing socket to appear: answer at
	// once instead.
	if path, ok := socketPath(address); ok {
		if _, err := os.Stat(path); err != nil {
			return containerd.Version{}, fmt.Errorf("containerd socket %q: %w: %w", path, errdefs.ErrUnavailable, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, PingTimeout)
	defer cancel()
	c, err := containerd.New(address, containerd.WithTimeout(PingTimeout))
	if err != nil {
		return containerd.Version{}, fmt.Errorf("connect to containerd at %q: %w", address, err)
	}
	defer func() { _ = c.Close() }()
	v, err := c.Version(ctx)
	if err != nil {
		return containerd.Version{}, fmt.Errorf("containerd version at %q: %w", address, err)
	}
	return v, nil
}

// socketPath returns the file of a unix socket address ("/path" or
// "unix:///path").
func socketPath(address string) (string, bool) {
	if rest, ok := strings.CutPrefix(address, "unix://"); ok {
		return rest, true
	}
	if strings.Contains(address, "://") {
		return "", false
	}
	return address, true
}

// Ensure returns a containerd that answers: the one at cfg.Address, a child
// left running in cfg.StateDir by an earlier process, or a new child. It
// fails with errdefs.ErrUnavailable when none answers and no binary is found.
func Ensure(ctx context.Context, cfg Config) (*Proc, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Address != "" {
		v, err := Ping(ctx, cfg.Address)
		if err == nil {
			logger.InfoContext(ctx, "using containerd", "address", cfg.Address, "version", v.Version)
			return &Proc{address: cfg.Address, logger: logger}, nil
		}
		logger.DebugContext(ctx, "no containerd answers", "address", cfg.Address, "error", err)
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("no containerd answers at %q and no state dir to start one: %w", cfg.Address, errdefs.ErrUnavailable)
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir %q: %w", cfg.StateDir, err)
	}
	p := newChild(filepath.Join(stateDir, "containerd"), logger, cfg.StopTimeout)
	if len(p.address) >= unixPathMax {
		return nil, fmt.Errorf("containerd socket path %q is longer than %d bytes: %w", p.address, unixPathMax-1, errdefs.ErrInvalidArgument)
	}

	if adopted, err := p.adopt(ctx); err != nil || adopted {
		if err != nil {
			return nil, err
		}
		return p, nil
	}

	bin := cfg.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("no containerd answers at %q and no %q binary to start one: %w: %w", cfg.Address, bin, errdefs.ErrUnavailable, err)
	}
	startTO := cfg.StartTimeout
	if startTO <= 0 {
		startTO = DefaultStartTimeout
	}
	if err := p.start(ctx, path, cfg.LogLevel, startTO); err != nil {
		return nil, err
	}
	return p, nil
}

func newChild(dir string, logger *slog.Logger, stopTO time.Duration) *Proc {
	return &Proc{
		address: filepath.Join(dir, "containerd.sock"),
		root:    filepath.Join(dir, "root"),
		dir:     dir,
		owned:   true,
		logger:  logger,
		stopTO:  stopTO,
	}
}

func (p *Proc) configPath() string { return filepath.Join(p.dir, "config.toml") }
func (p *Proc) pidPath() string    { return filepath.Join(p.dir, "containerd.pid") }

// adopt takes over a child that an earlier process started with the same
// state dir and that still answers. It reports false when there is none.
func (p *Proc) adopt(ctx context.Context) (bool, error) {
	pid, ok := p.recordedPid()
	if !ok {
		return false, nil
	}
	if _, err := Ping(ctx, p.address); err != nil {
		return false, nil
	}
	p.pid = pid
	p.logger.InfoContext(ctx, "adopted containerd child", "address", p.address, "pid", pid)
	return true, nil
}

// recordedPid returns the pid in the pid file if that process is still a
// containerd running with this directory's config.
func (p *Proc) recordedPid() (int, bool) {
	b, err := os.ReadFile(p.pidPath())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return 0, false
	}
	if !bytes.Contains(cmdline, []byte(p.configPath())) {
		return 0, false
	}
	return pid, true
}

func (p *Proc) start(ctx context.Context, bin, logLevel string, timeout time.Duration) (retErr error) {
	for _, d := range []string{p.dir, p.root, filepath.Join(p.dir, "state"), filepath.Join(p.dir, "opt")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("create containerd dir: %w", err)
		}
	}
	if err := writeConfig(p.configPath(), p.dir, logLevel); err != nil {
		return err
	}
	// A socket file left by a dead child would make the new one fail to listen.
	if err := os.Remove(p.address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale containerd socket: %w", err)
	}
	logFile, err := os.OpenFile(p.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open containerd log: %w", err)
	}
	// The child must outlive ctx (ctx only bounds the start), so it is not
	// started with exec.CommandContext.
	cmd := exec.Command(bin, "--config", p.configPath())
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = p.dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a ^C to ours must not reach it before we
		// have stopped what uses it.
		Setpgid: true,
		// Do not leave it running when this process dies.
		Pdeathsig: syscall.SIGTERM,
	}
	// Pdeathsig fires when the thread that forked the child exits, and Go
	// ends threads whose goroutine exits while locked to them (as network
	// namespace code does). Fork from a locked thread that lives as long as
	// the child does.
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	p.cmd = cmd
	p.pid = cmd.Process.Pid
	p.logFile = logFile
	p.exited = exited
	defer func() {
		if retErr != nil {
			_ = p.Close()
		}
	}()
	if err := os.WriteFile(p.pidPath(), []byte(strconv.Itoa(p.pid)+"\n"), 0o640); err != nil {
		return fmt.Errorf("write containerd pid file: %w", err)
	}
	p.logger.InfoContext(ctx, "started containerd child", "address", p.address, "pid", p.pid, "log", p.LogPath())
	return p.waitReady(ctx, timeout)
}

func (p *Proc) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if _, err := os.Stat(p.address); err == nil {
			if _, err := Ping(ctx, p.address); err == nil {
				return nil
			} else {
				lastErr = err
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("containerd child exited before answering (%s), log tail:\n%s: %w",
				p.cmd.ProcessState, tail(p.LogPath(), 2048), errdefs.ErrUnavailable)
		case <-ctx.Done():
			return fmt.Errorf("containerd child did not answer at %q within %s (last error: %w): %w",
				p.address, timeout, lastErr, ctx.Err())
		case <-tick.C:
		}
	}
}

// Close stops an owned containerd: SIGTERM, then SIGKILL after the stop
// timeout. It is a no-op for a containerd this package did not start.
func (p *Proc) Close() error {
	if !p.owned || p.pid == 0 {
		return nil
	}
	p.closeOnce.Do(func() {
		p.closeErr = p.stop()
		if p.logFile != nil {
			_ = p.logFile.Close()
		}
		if err := os.Remove(p.pidPath()); err != nil && !errors.Is(err, os.ErrNotExist) && p.closeErr == nil {
			p.closeErr = err
		}
	})
	return p.closeErr
}

func (p *Proc) stop() error {
	exited := p.exited
	if exited == nil {
		// Adopted: not our child, so poll for it to go away.
		exited = make(chan struct{})
		go func(pid int) {
			defer close(exited)
			for syscall.Kill(pid, 0) == nil {
				time.Sleep(50 * time.Millisecond)
			}
		}(p.pid)
	}
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal containerd %d: %w", p.pid, err)
	}
	select {
	case <-exited:
		p.logger.Info("stopped containerd child", "pid", p.pid)
		return nil
	case <-time.After(p.stopTO):
	}
	p.logger.Warn("containerd child ignored SIGTERM, killing it", "pid", p.pid, "after", p.stopTO)
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill containerd %d: %w", p.pid, err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(p.stopTO):
		return fmt.Errorf("containerd %d still running after SIGKILL", p.pid)
	}
}

// childEnv is this process's environment less the variables that would point
// the child at another containerd's files.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONTAINERD_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return err.Error()
	}
	return string(b)
}
