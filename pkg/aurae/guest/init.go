package guest

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
)

// ServeEnv is set in the environment of the serving auraed that the guest
// init starts; it selects the RunServer role (see pkg/aurae/roles). The name
// is a contract between the init and the auraed it started: keep it.
const ServeEnv = "_AURAE_GUEST_SERVE"

// Path is the guest's PATH (runc, conmon, busybox's applets).
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Shutdown timings.
const (
	serverGrace  = 5 * time.Second // SIGTERM → the serving auraed's exit
	othersGrace  = 2 * time.Second // SIGTERM → SIGKILL of every other process
	restartDelay = time.Second     // before a serving auraed that died is restarted
)

// Init is the guest's PID 1.
type Init struct {
	cfg Config
	log *slog.Logger
	// pid1 is false under --guest in a process that is not PID 1: then
	// nothing is powered off, RunInit exits instead.
	pid1   bool
	server *os.Process
}

// RunInit is the guest init role: auraed as a microVM's PID 1 (the kernel
// starts it), or given --guest first when another init execs it. It
// prepares the guest, starts the serving auraed (RunServer) and supervises
// it until a power-off request (SIGTERM, SIGINT/Ctrl-Alt-Del, the ACPI power
// button). It never returns: as PID 1 it powers the machine off, otherwise
// it exits once everything was stopped. Only roles.Run calls it.
func RunInit() {
	pid1 := os.Getpid() == 1
	// Stage 1 runs before /proc exists: log to the console with defaults.
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "guest-init")
	if err := SwitchRoot(log); err != nil {
		log.Error("switch root", "error", err)
	}
	if err := Setup(); err != nil {
		log.Error("guest setup", "error", err)
	}
	cfg, err := ReadConfig()
	if err != nil {
		log.Warn("kernel command line", "error", err)
	}
	log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel})).With("component", "guest-init")
	for _, m := range cfg.VirtioFS {
		// Before the serving auraed starts, so that the host finds the
		// share mounted once the guest answers (a shell in a cell to mount
		// it cost a start of this binary under TCG).
		start := time.Now()
		if err := MountVirtioFS(m); err != nil {
			log.Error("mount virtio-fs share", "tag", m.Tag, "path", m.Path, "error", err)
			continue
		}
		log.Debug("virtio-fs share mounted", "tag", m.Tag, "path", m.Path, "took", time.Since(start).String())
	}
	if pid1 {
		// Under --guest the hostname and lo belong to whoever is PID 1.
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			log.Error("set hostname", "error", err)
		}
		if err := linux.LoopbackUp(); err != nil {
			log.Error("loopback", "error", err)
		}
	}
	in := &Init{cfg: cfg, log: log, pid1: pid1}
	in.run()
	os.Exit(0)
}

func (in *Init) run() {
	if !in.pid1 {
		// Orphans of our children come to us, as they would to PID 1.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			in.log.Warn("child subreaper", "error", err)
		}
	} else if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		// Ctrl-Alt-Del becomes SIGINT to PID 1.
		in.log.Warn("ctrl-alt-del", "error", err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	power := make(chan string, 1)
	watchPowerButton(in.log, power)

	in.log.Info("guest init", "config", in.cfg.String(), "pid", os.Getpid())
	in.startServer()
	var restart <-chan time.Time
	for {
		select {
		case s := <-sigs:
			if s == unix.SIGCHLD {
				if in.reap() && restart == nil {
					restart = time.After(restartDelay)
				}
				continue
			}
			in.shutdown("signal " + s.String())
			return
		case why := <-power:
			in.shutdown(why)
			return
		case <-restart:
			restart = nil
			in.startServer()
		}
	}
}

// startServer starts the serving auraed: this binary again, with ServeEnv.
func (in *Init) startServer() {
	cmd := &exec.Cmd{
		Path:   "/proc/self/exe",
		Args:   []string{"auraed"},
		Env:    []string{"PATH=" + Path, "HOME=/root", "TERM=linux", ServeEnv + "=1"},
		Dir:    "/",
		Stdout: os.Stderr,
		Stderr: os.Stderr,
	}
	start := cmd.Start
	if in.cfg.TCG {
		start = func() error { return startNoRandomize(cmd) }
	}
	if err := start(); err != nil {
		in.log.Error("start the serving auraed", "error", err)
		return
	}
	in.server = cmd.Process
	in.log.Info("serving auraed started", "pid", cmd.Process.Pid)
}

// addrNoRandomize is the personality flag ADDR_NO_RANDOMIZE
// (linux/personality.h).
const addrNoRandomize = 0x0040000

// startNoRandomize starts cmd without address space randomization, for a
// guest under TCG (aurae.tcg=1): the serving auraed and everything it
// starts (conmon, crun, the pod holder) inherit the personality, so each of
// their execs maps its code where the last one did and QEMU reuses what it
// translated instead of translating it anew (measured in a guest: conmon's
// start 4-5x, crun's 2-3x faster). The containers' own processes get
// Linux's default personality back from the runtime (the VM controller's
// specs set linux.personality), so workloads keep their ASLR.
func startNoRandomize(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		// A personality is a thread's: this one forks the child with it,
		// then ends with the goroutine (never unlocked), so nothing else
		// runs on it.
		runtime.LockOSThread()
		old, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
		if errno != 0 {
			errc <- fmt.Errorf("personality: %w", errno)
			return
		}
		if _, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, old|addrNoRandomize, 0, 0); errno != 0 {
			errc <- fmt.Errorf("personality: %w", errno)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// reap collects every exited child (orphans included) and says whether the
// serving auraed was one of them.
func (in *Init) reap() (serverDied bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if pid <= 0 || err != nil {
			return serverDied
		}
		if in.server != nil && pid == in.server.Pid {
			in.log.Error("the serving auraed exited; restarting it", "status", statusString(ws))
			in.server = nil
			serverDied = true
		} else {
			in.log.Debug("reaped", "pid", pid, "status", statusString(ws))
		}
	}
}

// shutdown stops the serving auraed, then every other process, syncs and
// powers off (as PID 1).
func (in *Init) shutdown(why string) {
	in.log.Info("powering off", "reason", why)
	if in.server != nil {
		_ = in.server.Signal(unix.SIGTERM)
		deadline := time.Now().Add(serverGrace)
		for in.server != nil && time.Now().Before(deadline) {
			in.reap()
			time.Sleep(20 * time.Millisecond)
		}
		if in.server != nil {
			in.log.Warn("the serving auraed did not stop in time", "after", serverGrace)
		}
	}
	if in.pid1 {
		// kill(-1) signals every process but the caller.
		_ = unix.Kill(-1, unix.SIGTERM)
		in.waitAll(othersGrace)
		_ = unix.Kill(-1, unix.SIGKILL)
		in.waitAll(othersGrace)
	} else if in.server != nil {
		_ = in.server.Kill()
		in.waitAll(othersGrace)
	}
	unix.Sync()
	if !in.pid1 {
		in.log.Info("guest init done (not PID 1: no power off)")
		return
	}
	in.log.Info("power off")
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		in.log.Error("power off", "error", err)
	}
	// PID 1 must not exit (the kernel would panic): wait for the end.
	select {}
}

// waitAll reaps children until there are none left or d is over.
func (in *Init) waitAll(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			return
		}
		if pid > 0 {
			if in.server != nil && pid == in.server.Pid {
				in.server = nil
			}
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func statusString(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit %d", ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("%#x", uint32(ws))
}
