package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Attach gives a running clone that was started from a template with no
// NICs and no shares (a pooled VM: see pkg/aurae/vms/pool.go) what cfg
// asks for, as a clone's start does before the guest runs: the shares'
// virtiofsds are started below cfg.Dir (which must be the dir QEMU was
// started with, renamed or not), the taps are made in cfg.NetNSPath and
// handed to QEMU over QMP (getfd), the hypervisor and the virtiofsds are
// placed (cfg.Place) before anything is hot-plugged, and the devices are
// added while the guest is paused. The guest must then be configured
// (rescan, mounts) as any clone. On failure the virtiofsds started are
// killed; QEMU is left to the caller.
func (q *QEMU) Attach(ctx context.Context, p *Proc, cfg VMConfig) (retErr error) {
	if err := templateCheck(cfg, p.Accel); err != nil {
		return err
	}
	if err := CheckDir(cfg.Dir); err != nil {
		return err
	}
	helpers, err := startShares(ctx, cfg.Dir, cfg)
	defer func() {
		if retErr != nil {
			stopShares(ctx, cfg.Dir, helpers)
		}
	}()
	if err != nil {
		return err
	}
	if cfg.Place != nil {
		if err := cfg.Place(append([]int{p.Pid}, helpers...)...); err != nil {
			return fmt.Errorf("place qemu: %w", err)
		}
	}
	c, err := dialQMP(ctx, p.ControlSocket)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	defer func() { _ = c.close() }()
	taps := make([]string, len(cfg.NICs))
	for i, n := range cfg.NICs {
		tap, err := openTapIn(cfg.NetNSPath, n.Tap)
		if err != nil {
			return err
		}
		// QEMU keeps a descriptor of its own: the tap goes with QEMU.
		taps[i] = "tap" + strconv.Itoa(i)
		_, err = c.executeFD("getfd", map[string]any{"fdname": taps[i]}, int(tap.Fd()))
		_ = tap.Close()
		if err != nil {
			return fmt.Errorf("tap %s: %w", n.Tap, err)
		}
	}
	if _, err := c.execute("stop", nil); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	herr := hotplug(c, cfg, taps)
	// Resume the guest either way: on failure the caller kills it, and a
	// pause must not outlive this call.
	if _, err := c.execute("cont", nil); err != nil {
		herr = errors.Join(herr, fmt.Errorf("attach: %w", err))
	}
	return herr
}
