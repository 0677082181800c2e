package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// VirtiofsdEnv names the launcher role (pkg/aurae/roles): the daemon
// re-executes itself with it set to the share's source directory, then
// RunVirtiofsd confines itself and execs virtiofsd with the arguments
// after "--".
const VirtiofsdEnv = "_AURAE_VIRTIOFSD"

// virtiofsdEnvReadOnly, set to "1", makes the launcher's view of the share
// read-only.
const virtiofsdEnvReadOnly = "_AURAE_VIRTIOFSD_RO"

// VirtiofsdPaths are where Debian's virtiofsd is looked for: QEMU 7's C
// daemon (qemu-system-common), then the Rust one.
var VirtiofsdPaths = []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"}

const (
	virtiofsdSocket  = "fs%d.sock"
	virtiofsdPidFile = "fs%d.pid"
	virtiofsdLog     = "fs%d.log"
	// virtiofsdWait bounds the wait for virtiofsd's socket.
	virtiofsdWait = 10 * time.Second
)

// RunVirtiofsd plays the launcher role and never returns: in a mount
// namespace of its own (a slave of the host's, so mounts made below the
// share later still reach it), the share is nosuid,nodev (and read-only
// when asked) all the way down; then the seccomp filter (see
// virtiofsd_filter.go) is installed and virtiofsd exec'd.
func RunVirtiofsd() {
	source := os.Getenv(VirtiofsdEnv)
	readonly := os.Getenv(virtiofsdEnvReadOnly) == "1"
	args := os.Args[1:]
	if i := indexOf(args, "--"); i >= 0 {
		args = args[i+1:]
	}
	if err := launchVirtiofsd(source, readonly, args); err != nil {
		fmt.Fprintln(os.Stderr, "virtiofsd launcher:", err)
		os.Exit(1)
	}
	panic("unreachable")
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func launchVirtiofsd(source string, readonly bool, args []string) error {
	if source == "" || !filepath.IsAbs(source) || len(args) == 0 {
		return errors.New("want a source dir and virtiofsd's command line")
	}
	// One thread does it all: the mount namespace is the thread's, and
	// exec keeps the namespaces of the thread that calls it.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave: %w", err)
	}
	if err := unix.Mount(source, source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", source, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if readonly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, source, unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("nosuid,nodev %s: %w", source, err)
	}
	prog, err := virtiofsdFilter()
	if err != nil {
		return err
	}
	if err := installFilter(prog); err != nil {
		return err
	}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	return unix.Exec(args[0], args, env)
}

// virtiofsdBinary is the first of VirtiofsdPaths that exists.
func virtiofsdBinary() (string, error) {
	for _, p := range VirtiofsdPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("virtiofsd (Debian package qemu-system-common) not found at %s: %w: %w",
		strings.Join(VirtiofsdPaths, " or "), ErrNotInstalled, errdefs.ErrFailedPrecondition)
}

// virtiofsdArgs is virtiofsd's command line for share i of dir: its own
// namespace sandbox, no extended attributes, no CAP_MKNOD, CAP_FSETID or
// CAP_SETFCAP; sub-mounts announced, so that the guest sees each one as a
// file system of its own.
func virtiofsdArgs(bin, dir string, i int, sh Share) []string {
	return []string{bin,
		"--socket-path=" + filepath.Join(dir, fmt.Sprintf(virtiofsdSocket, i)),
		"-o", "source=" + sh.Path,
		"-o", "sandbox=namespace",
		"-o", "cache=auto",
		"-o", "no_xattr",
		"-o", "no_posix_lock",
		"-o", "no_flock",
		"-o", "announce_submounts",
		"-o", "modcaps=-mknod:-fsetid:-setfcap",
		"--rlimit-nofile=65536",
	}
}

// startVirtiofsd starts share i's virtiofsd through the launcher role,
// detached (it ends when QEMU disconnects), and waits for its socket. Its
// pid and start time go to fs<i>.pid in dir; it returns the pid.
func startVirtiofsd(ctx context.Context, dir string, i int, sh Share) (int, error) {
	bin, err := virtiofsdBinary()
	if err != nil {
		return 0, err
	}
	if strings.ContainsAny(sh.Path, ",=") || sh.Path == "" || !filepath.IsAbs(sh.Path) {
		// virtiofsd's -o list has no escape for ',' (QEMU's has).
		return 0, fmt.Errorf("share path %q: want an absolute path without ',' or '=': %w", sh.Path, errdefs.ErrInvalidArgument)
	}
	sock := filepath.Join(dir, fmt.Sprintf(virtiofsdSocket, i))
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf(virtiofsdLog, i)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(self, append([]string{"virtiofsd-launcher", "--"}, virtiofsdArgs(bin, dir, i, sh)...)...)
	cmd.Env = []string{VirtiofsdEnv + "=" + sh.Path}
	if sh.ReadOnly {
		cmd.Env = append(cmd.Env, virtiofsdEnvReadOnly+"=1")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("run virtiofsd: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	st, err := startTime(pid)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, fmt.Sprintf(virtiofsdPidFile, i)), []byte(strconv.Itoa(pid)+" "+strconv.FormatUint(st, 10)+"\n"), 0o600)
	}
	if err == nil {
		err = waitSocket(ctx, sock, exited)
	}
	if err != nil {
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitWait)
		defer cancel()
		_ = killProc(kctx, pid, st, exitWait)
		return 0, fmt.Errorf("virtiofsd for %s: %w: %s", sh.Path, err, tail(filepath.Join(dir, fmt.Sprintf(virtiofsdLog, i))))
	}
	return pid, nil
}

// waitSocket waits until path is a socket, the process is gone or the
// wait is over.
func waitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, virtiofsdWait)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited before it listened")
		case <-ctx.Done():
			return fmt.Errorf("no socket %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}

// startShares starts the virtiofsd of each of cfg's shares below dir and,
// with cfg.UID, gives dir's files to the hypervisor's user. It returns the
// pids of the virtiofsds started, also on failure: stopShares stops them.
func startShares(ctx context.Context, dir string, cfg VMConfig) ([]int, error) {
	var pids []int
	for i, sh := range cfg.Shares {
		pid, err := startVirtiofsd(ctx, dir, i, sh)
		if err != nil {
			return pids, err
		}
		pids = append(pids, pid)
	}
	if cfg.UID != 0 {
		if err := giveDir(dir, len(cfg.Shares), cfg.UID, cfg.GID); err != nil {
			return pids, err
		}
	}
	return pids, nil
}

// stopShares kills the virtiofsds of dir when startShares started any,
// bounded even when ctx has ended.
func stopShares(ctx context.Context, dir string, pids []int) {
	if len(pids) == 0 {
		return
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitWait)
	defer cancel()
	_ = killVirtiofsds(kctx, dir)
}

// killVirtiofsds kills the virtiofsd of every share of dir still running
// (each ends by itself when QEMU goes; this is for a QEMU that never
// connected) and removes its pid file.
func killVirtiofsds(ctx context.Context, dir string) error {
	pidFiles, _ := filepath.Glob(filepath.Join(dir, "fs*.pid"))
	var errs []error
	for _, f := range pidFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var pid int
		var st uint64
		if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &st); err == nil && pid > 0 {
			if err := killProc(ctx, pid, st, exitWait); err != nil {
				errs = append(errs, fmt.Errorf("virtiofsd: %w", err))
				continue
			}
		}
		_ = os.Remove(f)
	}
	return errors.Join(errs...)
}
