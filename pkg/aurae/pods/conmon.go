package pods

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/internal/timing"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// monitor is a container created under conmon.
type monitor struct {
	pid         int // the container's init
	conmonPid   int
	conmonStart uint64
}

// syncMsg is what conmon (--api-version 1) writes on _OCI_SYNCPIPE once the
// runtime's create is done: the container's pid, or -1 and a message.
type syncMsg struct {
	Data    int    `json:"data"`
	Message string `json:"message,omitempty"`
}

// createWithConmon starts conmon, which runs `runc create` and then watches
// the container: it writes the CRI-format log and, at exit, the exit file.
// conmon daemonizes and outlives auraed. Its daemon is moved to the pod's
// monitor cgroup while `runc create` runs: a cgroup v1 move waits for an
// RCU grace period (~13 ms here), which then overlaps runc's own moves
// instead of preceding them. Only the daemon, not the runc it forked before
// the move, lands there; runc is gone once the create is done.
func (s *Service) createWithConmon(ctx context.Context, p *pod, req *podsv0.Container, steps *timing.Steps) (_ *monitor, retErr error) {
	id := req.GetId()
	bundle := s.bundleDir(id)
	logPath := req.GetLogPath()
	if logPath == "" {
		logPath = s.streamLogPath(id)
	} else if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	place, err := s.infraPlacer(p)
	if err != nil {
		return nil, fmt.Errorf("monitor cgroup: %w", err)
	}
	steps.Done("monitor_cgroup")
	args := []string{
		"--api-version", "1",
		"-c", id, "-u", id, "-n", id,
		"-r", s.runtime, "--runtime-arg", "--root=" + s.runcRoot(),
		"-b", bundle,
		"-p", filepath.Join(bundle, "pidfile"),
		"-P", filepath.Join(bundle, "conmon.pid"),
		"--exit-dir", filepath.Dir(s.exitFile(id)),
		"--socket-dir-path", filepath.Dir(s.attachDir(id)),
		"-l", "k8s-file:" + logPath,
		"--log-level", "info",
	}
	if s.cfg.CgroupDriver == cgroup.Systemd {
		// runc makes the container's scope in the pod's slice.
		args = append(args, "--runtime-arg", "--systemd-cgroup")
	}
	env := os.Environ()
	if dir := req.GetRestoreImagePath(); dir != "" {
		// conmon runs `runc restore --detach` instead of create: the
		// container is running once it answers. runc finds CRIU on PATH.
		args = append(args, "--restore", dir,
			"--runtime-opt", "--ext-unix-sk", "--runtime-opt", "--tcp-established", "--runtime-opt", "--file-locks")
		env = append(withoutPath(env), "PATH="+filepath.Dir(s.criuPath())+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if req.GetTty() {
		args = append(args, "-t")
	} else if req.GetStdin() {
		args = append(args, "-i")
	}
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer syncR.Close()
	stderr, err := os.OpenFile(filepath.Join(bundle, "conmon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		syncW.Close()
		return nil, err
	}
	defer stderr.Close()
	cmd := exec.Command(s.conmon, args...)
	cmd.Dir = bundle
	cmd.Env = append(env, "_OCI_SYNCPIPE=3")
	cmd.ExtraFiles = []*os.File{syncW}
	cmd.Stderr = stderr
	cmd.Stdout = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	syncW.Close()
	if err != nil {
		return nil, fmt.Errorf("start conmon: %w", err)
	}
	steps.Done("conmon_exec")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	kill := func() {
		_ = cmd.Process.Kill()
		ignore(<-exited)
		if pid, err := readPidFile(filepath.Join(bundle, "conmon.pid")); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// conmon's first process exits once the monitor is forked.
	timer := time.NewTimer(createTimeout)
	defer timer.Stop()
	select {
	case err := <-exited:
		if err != nil {
			return nil, fmt.Errorf("conmon: %w: %s", err, tail(filepath.Join(bundle, "conmon.log")))
		}
	case <-timer.C:
		kill()
		return nil, errors.New("conmon did not daemonize in time")
	case <-ctx.Done():
		kill()
		return nil, ctx.Err()
	}
	steps.Done("conmon_daemonize")
	conmonPid, err := readPidFile(filepath.Join(bundle, "conmon.pid"))
	if err != nil {
		return nil, fmt.Errorf("conmon pid: %w", err)
	}
	conmonStart, err := linux.StartTime(conmonPid)
	if err != nil {
		return nil, fmt.Errorf("conmon (pid %d) is gone: %s", conmonPid, tail(filepath.Join(bundle, "conmon.log")))
	}
	defer func() {
		if retErr != nil {
			_ = syscall.Kill(conmonPid, syscall.SIGKILL)
		}
	}()
	var placeErr error
	placed := make(chan struct{})
	go func() {
		defer close(placed)
		if placeErr = place(conmonPid); placeErr == nil && s.placeFault != nil {
			placeErr = s.placeFault(conmonPid)
		}
	}()
	// Not left running into the caller's undo. After a failed create the
	// move's error (the daemon may be gone already) says nothing more.
	defer func() { <-placed }()
	got := make(chan syncMsg, 1)
	readErr := make(chan error, 1)
	go func() {
		var m syncMsg
		if err := json.NewDecoder(io.LimitReader(syncR, 1<<20)).Decode(&m); err != nil {
			readErr <- err
			return
		}
		got <- m
	}()
	select {
	case m := <-got:
		if m.Data <= 0 {
			msg := strings.TrimSpace(m.Message)
			if msg == "" {
				msg = tail(filepath.Join(bundle, "conmon.log"))
			}
			return nil, fmt.Errorf("runtime create: %s", msg)
		}
		steps.Done("runtime_create")
		if <-placed; placeErr != nil {
			// conmon is killed (deferred) and the caller undoes the create.
			return nil, fmt.Errorf("place conmon (pid %d): %w", conmonPid, placeErr)
		}
		steps.Done("conmon_place")
		return &monitor{pid: m.Data, conmonPid: conmonPid, conmonStart: conmonStart}, nil
	case err := <-readErr:
		return nil, fmt.Errorf("conmon sync pipe: %w: %s", err, tail(filepath.Join(bundle, "conmon.log")))
	case <-timer.C:
		return nil, errors.New("runtime create did not finish in time")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func readPidFile(p string) (int, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s: %q", p, b)
	}
	return pid, nil
}

// tail is the end of a small diagnostics file, for error messages.
func tail(p string) string {
	b, _ := os.ReadFile(p)
	b = bytes.TrimSpace(b)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

// readExitFile returns the exit code conmon wrote and when it wrote it.
func readExitFile(p string) (int32, time.Time, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, time.Time{}, err
	}
	code, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %q", p, b)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return 0, time.Time{}, err
	}
	return int32(code), fi.ModTime(), nil
}

// runCmd runs a short command and returns its combined output.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// ignore drops an error nobody can act on (a process already being killed).
func ignore(error) {}
