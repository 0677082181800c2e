package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
)

// selfDialTimeout bounds the wait for auraed's own socket to answer.
const selfDialTimeout = time.Minute

// vmPods opens, on first use, the VM pod controller of runtime.Core's
// RunPod: pkg/controller/vm (the one aurae-cri's aurae-vm handler uses)
// over a connection to this auraed's own socket, and re-adopts the VM pods
// of its state dir.
type vmPods struct {
	self     string // this auraed's address; "" serves no VM pods
	imageDir string
	stateDir string
	log      *slog.Logger

	mu   sync.Mutex
	conn *client.Client
	ctl  *vm.Controller
}

func (v *vmPods) open(ctx context.Context) (controller.Controller, error) {
	if v.self == "" {
		return nil, fmt.Errorf("this auraed runs no VM pods (it does not know its own address): %w", errdefs.ErrFailedPrecondition)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ctl != nil {
		return v.ctl, nil
	}
	dctx, cancel := context.WithTimeout(ctx, selfDialTimeout)
	defer cancel()
	var conn *client.Client
	var err error
	for {
		if conn, err = client.Dial(dctx, v.self); err == nil || dctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond) // the socket serves once auraed is up
	}
	if err != nil {
		return nil, fmt.Errorf("connect to this auraed at %s: %w", v.self, err)
	}
	ctl, err := vm.New(vm.Config{
		Host:      conn.Conn,
		Kernel:    filepath.Join(v.imageDir, "vmlinux"),
		Initramfs: filepath.Join(v.imageDir, "initramfs.cpio.gz"),
		StateDir:  v.stateDir,
		Logger:    v.log,
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	// Re-adopt the VM pods a previous auraed made (their guests dialed
	// again, their host log writers resumed).
	if _, err := ctl.ListPods(ctx); err != nil {
		v.log.WarnContext(ctx, "re-adopt RunPod VM pods", "error", err)
	}
	v.conn, v.ctl = conn, ctl
	return ctl, nil
}

// Close stops the controller's log writers and closes the connection.
func (v *vmPods) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	var errs []error
	if v.ctl != nil {
		errs = append(errs, v.ctl.Close())
	}
	if v.conn != nil {
		errs = append(errs, v.conn.Close())
	}
	v.ctl, v.conn = nil, nil
	return errors.Join(errs...)
}
