package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ExecSync implements RuntimeService.ExecSync.
func (r *Runtime) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if err := r.checkReady(); err != nil {
		return nil, err
	}
	if len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("exec command is empty: %w", errInvalid)
	}
	if req.GetTimeout() < 0 {
		return nil, fmt.Errorf("timeout %d is negative: %w", req.GetTimeout(), errInvalid)
	}
	ctrl, c, err := r.runningContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	timeout := time.Duration(req.GetTimeout()) * time.Second
	callCtx, cancel := bounded(ctx, timeout+podCallTimeout)
	defer cancel()
	resp, err := ctrl.ExecSync(callCtx, c.ID, req.GetCmd(), timeout)
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID, err)
	}
	stdout, stderr := capExecOutput(resp.Stdout, resp.Stderr, maxExecSyncOutput)
	return &runtimeapi.ExecSyncResponse{Stdout: stdout, Stderr: stderr, ExitCode: resp.ExitCode}, nil
}

// maxExecSyncOutput bounds stdout and stderr together in an ExecSync reply.
// auraed keeps up to 16 MiB of each; the kubelet's CRI client
// (k8s.io/cri-client) reads replies of at most 16 MiB and would fail a larger
// one with ResourceExhausted, so the reply keeps 16 MiB less 64 KiB for the
// rest of the message. Output beyond it is dropped, as a probe expects
// (containerd and CRI-O truncate too).
const maxExecSyncOutput = 16<<20 - 64<<10

// capExecOutput truncates stdout and stderr so that together they keep at
// most limit bytes: each gets half, and what one does not use the other may.
func capExecOutput(stdout, stderr []byte, limit int) ([]byte, []byte) {
	if len(stdout)+len(stderr) <= limit {
		return stdout, stderr
	}
	half := limit / 2
	switch {
	case len(stdout) <= half:
		stderr = stderr[:limit-len(stdout)]
	case len(stderr) <= half:
		stdout = stdout[:limit-len(stderr)]
	default:
		stdout, stderr = stdout[:half], stderr[:limit-half]
	}
	return stdout, stderr
}
