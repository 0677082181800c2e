package pods

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// PinnedCRIU is where `make deps` installs the pinned CRIU (hack/criu),
// which auraed hands to the OCI runtime for checkpoints and restores.
const PinnedCRIU = "/opt/aurae/bin/criu"

const (
	// checkpointCeiling bounds a checkpoint whose caller set no deadline.
	checkpointCeiling = 10 * time.Minute
	criuCheckTimeout  = 30 * time.Second
)

// criuProbeTimeout bounds ProbeCheckpoint: a dump of a sleeping process
// takes well under a second where CRIU works. Tests shorten it.
var criuProbeTimeout = 10 * time.Second

// criuState remembers the binary that passed `criu check` and a test dump
// (the answer does not change while auraed runs); a failed `criu check` is
// asked again next time, a failed or hung dump is not (it cost its timeout).
type criuState struct {
	mu       sync.Mutex
	okPath   string
	probed   string // the binary whose test dump failed, with probeErr
	probeErr error
}

// CheckpointContainer implements PodService.CheckpointContainer.
func (s *Service) CheckpointContainer(ctx context.Context, req *podsv0.CheckpointContainerRequest) (*podsv0.CheckpointContainerResponse, error) {
	err := s.checkpoint(ctx, req)
	return &podsv0.CheckpointContainerResponse{}, errmap.ToGRPC(err)
}

func (s *Service) checkpoint(ctx context.Context, req *podsv0.CheckpointContainerRequest) (retErr error) {
	id := req.GetContainerId()
	if err := validID("container", id); err != nil {
		return err
	}
	dir := req.GetImagePath()
	if err := validPath("checkpoint image path", dir); err != nil {
		return err
	}
	if filepath.Clean(dir) != dir {
		return fmt.Errorf("checkpoint image path %q is not clean: %w", dir, errdefs.ErrInvalidArgument)
	}
	c, err := s.lookupContainer(id)
	if err != nil {
		return err
	}
	rec := c.record()
	if rec.State != stateRunning || isDone(c.done) {
		return fmt.Errorf("container %q is not running: %w", id, errdefs.ErrFailedPrecondition)
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("checkpoint image path %s exists: %w", dir, errdefs.ErrAlreadyExists)
	}
	if err := s.criuUsable(ctx); err != nil {
		return err
	}
	if _, hasDeadline := ctx.Deadline(); !hasDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, checkpointCeiling)
		defer cancel()
	}
	// The directory is made here, exclusively: an existing one is not ours.
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("checkpoint image path %s exists: %w", dir, errdefs.ErrAlreadyExists)
		}
		return fmt.Errorf("checkpoint image path: %w", err)
	}
	log := s.log.With("pod", rec.PodID, "container", id)
	defer func() {
		if retErr != nil {
			if err := os.RemoveAll(dir); err != nil {
				log.Warn("remove partial checkpoint", "path", dir, "error", err)
			}
		}
	}()
	args := []string{"--root", s.runcRoot(), "checkpoint", "--image-path", dir, "--work-path", dir,
		// conmon holds the other ends of the container's stdio pipes and
		// its attach socket; runc records the pipes (descriptors.json) so
		// that a restore under a new conmon inherits new ones.
		"--ext-unix-sk", "--tcp-established", "--file-locks"}
	if req.GetLeaveRunning() {
		args = append(args, "--leave-running")
	}
	start := time.Now()
	out, err := s.runWithCRIU(ctx, append(args, id)...)
	if err != nil {
		s.thaw(rec.CgroupPath, log)
		if ctx.Err() != nil {
			return fmt.Errorf("checkpoint container %q: %w", id, ctx.Err())
		}
		return fmt.Errorf("checkpoint container %q: %w: %s%s", id, err, strings.TrimSpace(string(out)), criuLogTail(dir, "dump.log"))
	}
	log.Info("container checkpointed", "path", dir, "leave_running", req.GetLeaveRunning(), "duration", time.Since(start))
	return nil
}

// criuUsable runs `criu check` once per auraed (until it passes): where
// CRIU is missing or cannot work on this kernel, FailedPrecondition with
// CRIU's own reason.
func (s *Service) criuUsable(ctx context.Context) error {
	s.criu.mu.Lock()
	defer s.criu.mu.Unlock()
	bin := s.criuPath()
	if s.criu.okPath == bin {
		return nil
	}
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("CRIU is not installed at %s (make deps builds it): %w", bin, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(ctx, criuCheckTimeout)
	defer cancel()
	if s.criu.probed == bin {
		return s.criu.probeErr
	}
	out, err := runCmd(ctx, bin, "check")
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("criu check: %w", ctx.Err())
		}
		return fmt.Errorf("CRIU cannot run here (criu check: %s): %s: %w", err.Error(), strings.TrimSpace(string(out)), errdefs.ErrFailedPrecondition)
	}
	if err := ProbeCheckpoint(ctx, bin); err != nil {
		if errdefs.IsFailedPrecondition(err) {
			s.criu.probed, s.criu.probeErr = bin, err
			s.log.Warn("checkpoints refused: CRIU cannot dump a process on this host", "criu", bin, "error", err)
		}
		return err
	}
	s.criu.okPath = bin
	return nil
}

// ProbeCheckpoint dumps a throwaway process (a sleep of its own, left
// running, then killed) with the CRIU at bin, within criuProbeTimeout.
// `criu check` passes on hosts where a dump then hangs (a 6.18 Firecracker
// guest: the dumped task never stops at the end of the parasite's
// sigreturn, and CRIU waits for it for good); there a checkpoint would
// hold the container half-dumped until its deadline. A dump that fails or
// does not end in time is FailedPrecondition, with CRIU's log.
func ProbeCheckpoint(parent context.Context, bin string) error {
	ctx, cancel := context.WithTimeout(parent, criuProbeTimeout)
	defer cancel()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return fmt.Errorf("checkpoint probe: %w", err)
	}
	dir, err := os.MkdirTemp("", "aurae-criu-probe-")
	if err != nil {
		return fmt.Errorf("checkpoint probe: %w", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	subject := exec.Command(sleep, "1000")
	subject.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := subject.Start(); err != nil {
		return fmt.Errorf("checkpoint probe: %w", err)
	}
	defer func() {
		_ = subject.Process.Kill()
		ignore(subject.Wait())
	}()
	cmd := exec.CommandContext(ctx, bin, "dump", "-t", fmt.Sprint(subject.Process.Pid), "-D", dir, "--leave-running", "-o", "dump.log", "-v4")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if err := parent.Err(); err != nil {
			return fmt.Errorf("checkpoint probe: %w", err) // the caller's end, not CRIU's
		}
		why := err.Error()
		if ctx.Err() != nil {
			why = fmt.Sprintf("did not end within %s", criuProbeTimeout)
		}
		return fmt.Errorf("CRIU cannot checkpoint on this host (a test dump of a sleeping process %s): %s%s: %w",
			why, strings.TrimSpace(out.String()), criuLogTail(dir, "dump.log"), errdefs.ErrFailedPrecondition)
	}
	return nil
}

func (s *Service) criuPath() string {
	if s.cfg.CRIU != "" {
		return s.cfg.CRIU
	}
	return PinnedCRIU
}

// runWithCRIU runs the OCI runtime so that it finds our CRIU: runc looks
// for "criu" on PATH, so the pinned binary's directory comes first. The
// runtime gets its own process group, killed whole when ctx ends (CRIU is
// its child: once it is gone the dumped tasks are detached).
func (s *Service) runWithCRIU(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.runtime, args...)
	cmd.Env = append(withoutPath(os.Environ()), "PATH="+filepath.Dir(s.criuPath())+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

func withoutPath(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "PATH=") {
			out = append(out, e)
		}
	}
	return out
}

// thaw undoes a freeze that a dump cut short left on the container's
// cgroup (runc freezes it while CRIU dumps).
func (s *Service) thaw(cgroupPath string, log interface{ Warn(string, ...any) }) {
	for _, f := range []struct{ path, value string }{
		{filepath.Join("/sys/fs/cgroup/freezer", cgroupPath, "freezer.state"), "THAWED"},
		{filepath.Join("/sys/fs/cgroup", cgroupPath, "cgroup.freeze"), "0"},
		{filepath.Join("/sys/fs/cgroup/unified", cgroupPath, "cgroup.freeze"), "0"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			continue
		}
		if err := os.WriteFile(f.path, []byte(f.value), 0); err != nil {
			log.Warn("thaw container cgroup", "path", f.path, "error", err)
		}
	}
}

// criuLogTail is the end of CRIU's log in dir, for an error message.
func criuLogTail(dir, name string) string {
	t := tail(filepath.Join(dir, name))
	if t == "" {
		return ""
	}
	if i := strings.LastIndex(t, "\n"); len(t) > 600 && i > 0 {
		t = t[len(t)-600:]
	}
	return " (criu " + name + ": " + t + ")"
}
