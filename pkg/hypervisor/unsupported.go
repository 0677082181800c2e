package hypervisor

import (
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/containerd/errdefs"
)

// unsupported stands for Cloud Hypervisor and Firecracker: both are driven
// through a REST API on a unix socket, which is not written yet. Choosing
// one fails at New with ErrNotInstalled when its binary is not on PATH, and
// every call fails with errdefs.ErrNotImplemented when it is.
type unsupported struct {
	name, bin string
}

var binaries = map[string]string{
	"cloud-hypervisor": "cloud-hypervisor",
	"firecracker":      "firecracker",
}

func newUnsupported(name string, o Options) (Hypervisor, error) {
	bin := o.Binary
	if bin == "" {
		bin = binaries[name]
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not on PATH: %w: %w", name, bin, ErrNotInstalled, errdefs.ErrFailedPrecondition)
	}
	return &unsupported{name: name, bin: p}, nil
}

func (u *unsupported) err() error {
	return fmt.Errorf("%s (%s) is installed but auraed does not drive it yet; use qemu: %w", u.name, u.bin, errdefs.ErrNotImplemented)
}

func (u *unsupported) Name() string { return u.name }
func (u *unsupported) Start(context.Context, VMConfig) (*Proc, error) {
	return nil, u.err()
}
func (u *unsupported) Stop(context.Context, *Proc, time.Duration) error { return u.err() }
func (u *unsupported) Kill(ctx context.Context, p *Proc) error {
	return killProc(ctx, p.Pid, p.StartTime, exitWait)
}
func (u *unsupported) Status(context.Context, *Proc) (string, error) { return "", u.err() }
func (u *unsupported) Adopt(context.Context, int, string) (*Proc, error) {
	return nil, u.err()
}
