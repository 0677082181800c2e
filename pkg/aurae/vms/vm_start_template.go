package vms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"

	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	guestv0 "github.com/aurae-runtime/aurae-cri/api/guest/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// How a running VM was started (vmStatus.Boot).
const (
	bootCold     = "cold"
	bootTemplate = "template"
	// bootPool: a pooled clone of a template (pool.go).
	bootPool = "pool"
)

const (
	// configureTimeout bounds the configuration of a clone's guest.
	configureTimeout = 20 * time.Second
	// guestEntropy is how many random bytes a clone's guest is given.
	guestEntropy = 64
)

// startFromTemplate starts v from the template of its machine: from a
// pooled clone of it when the pool has one (pool.go), else by restoring a
// clone (making the template first when there is none). It returns how v
// was started (bootTemplate or bootPool). On failure nothing of the
// attempt is left running; the caller boots cold.
func (s *Service) startFromTemplate(ctx context.Context, v *vm, cfg hypervisor.VMConfig) (*hypervisor.Proc, string, error) {
	base, plan, why := splitKernelArgs(cfg.KernelArgs)
	if why != "" {
		return nil, "", fmt.Errorf("%w: %s", hypervisor.ErrTemplateUnsupported, why)
	}
	cfg.KernelArgs = append(base, "aurae.hostname="+templateHostname)
	key, err := s.tpl.hv.TemplateKey(ctx, cfg)
	if err != nil {
		return nil, "", err
	}
	if why := s.tpl.unfitReason(key); why != "" {
		return nil, "", fmt.Errorf("%w: %s", hypervisor.ErrTemplateUnsupported, why)
	}
	if pv := s.poolTake(key); pv != nil {
		t0 := time.Now()
		p, err := s.takePooled(ctx, v, cfg, plan, pv)
		s.poolWant(key, cfg)
		if err == nil {
			s.setUser(v, pv.uid)
			s.log.DebugContext(ctx, "vm pool: vm taken", "vm", v.id, "pooled", pv.name, "pid", p.Pid,
				"took", time.Since(t0).Round(time.Millisecond).String())
			return p, bootPool, nil
		}
		if ctx.Err() != nil {
			return nil, "", err
		}
		s.log.WarnContext(ctx, "vm pool: a pooled vm could not be taken, restoring a clone", "vm", v.id, "pooled", pv.name, "error", err)
	}
	p, err := s.startClone(ctx, v, cfg, key, plan)
	if err != nil {
		return nil, "", err
	}
	s.poolWant(key, cfg)
	return p, bootTemplate, nil
}

// startClone restores a clone of the template key as v, then tells the
// guest what a cold boot reads from the kernel command line, plus the time
// and fresh entropy, before anything of a workload runs in it.
func (s *Service) startClone(ctx context.Context, v *vm, cfg hypervisor.VMConfig, key string, plan guestPlan) (*hypervisor.Proc, error) {
	state, err := s.tpl.get(ctx, key, cfg)
	if err != nil {
		return nil, fmt.Errorf("vm template %s: %w", key, err)
	}
	defer state.Close()
	p, err := s.tpl.hv.StartFromTemplate(ctx, cfg, state)
	if err != nil {
		if ctx.Err() == nil {
			// It may be the template that does not load: make it again.
			s.tpl.drop(key)
		}
		return nil, err
	}
	if err := s.configureGuest(ctx, v, plan, len(cfg.NICs)+len(cfg.Shares) > 0, len(cfg.NICs)); err != nil {
		if errdefs.IsNotImplemented(err) { // the client maps Unimplemented to it
			s.tpl.markUnfit(key, "the guest image has no GuestService: rebuild it (make vm-image)")
		}
		if kerr := s.killHypervisor(ctx, p); kerr != nil {
			err = errors.Join(err, kerr)
		}
		return nil, fmt.Errorf("configure the guest restored from template %s: %w", key, err)
	}
	return p, nil
}

// configureGuest calls the clone's guest auraed: its clock, entropy,
// hostname, hot-plugged devices and shares.
func (s *Service) configureGuest(ctx context.Context, v *vm, plan guestPlan, rescan bool, nics int) error {
	cctx, cancel := context.WithTimeout(ctx, configureTimeout)
	defer cancel()
	c, err := dialRestoredGuest(cctx, v.dir)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	entropy := make([]byte, guestEntropy)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	req := &guestv0.GuestServiceConfigureRequest{
		UnixTimeNanos:     time.Now().UnixNano(),
		Entropy:           entropy,
		Hostname:          plan.hostname,
		RescanPci:         rescan,
		NetworkInterfaces: uint32(nics),
	}
	for _, m := range plan.virtiofs {
		req.Virtiofs = append(req.Virtiofs, &guestv0.VirtioFSMount{Tag: m[0], Path: m[1]})
	}
	resp, err := guestv0.NewGuestServiceClient(c.Conn).Configure(cctx, req)
	if err != nil {
		return err
	}
	// The guest's answer is not trusted for anything; its clock is logged.
	skew := time.Duration(resp.GetUnixTimeNanos() - time.Now().UnixNano())
	s.log.DebugContext(ctx, "vm guest configured", "vm", v.id, "clock_skew", skew.Round(time.Millisecond).String())
	return nil
}

// dialRestoredGuest connects to the guest auraed of a VM just restored
// from a template, and checks that it answers before anything that changes
// the guest is sent. The first connection may fail: the template was saved
// with the maker's last session open, and the guest may still write that
// session's bytes to the new host side, or end it only on seeing the new
// connection's preface. Each failed attempt is dropped and another made,
// until ctx ends.
func dialRestoredGuest(ctx context.Context, dir string) (*client.Client, error) {
	const pause = 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := client.Dial(actx, auraedAddress(dir))
		if err == nil {
			_, err = c.Discovery.Discover(actx, &discoveryv0.DiscoverRequest{})
			if err != nil {
				_ = c.Close()
			}
		}
		cancel()
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to the guest (%d attempts): %w", attempt, err)
		case <-time.After(pause):
		}
	}
}

// guestReady says whether the guest auraed of the VM in dir answers.
func guestReady(ctx context.Context, dir string) error {
	c, err := client.Dial(ctx, auraedAddress(dir))
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_, err = c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	return err
}

// killStrayHypervisor kills the QEMU whose pid file is in vmDir, if it
// still runs there (its control socket is vmDir's): a template maker's or
// a pooled VM's that a killed auraed left running, or a VM's started but
// not yet recorded running.
func (s *Service) killStrayHypervisor(ctx context.Context, vmDir string) {
	b, err := os.ReadFile(filepath.Join(vmDir, hypervisor.PidFileName))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(string(trimNL(b)))
	if err != nil || pid <= 0 {
		return
	}
	actx, cancel := context.WithTimeout(ctx, adoptTimeout)
	defer cancel()
	p, _ := s.hv.Adopt(actx, pid, hypervisor.ControlSocketPath(vmDir))
	if p == nil {
		return
	}
	if err := s.hv.Kill(ctx, p); err != nil {
		s.log.Warn("kill a stray hypervisor", "pid", pid, "error", err)
		return
	}
	s.log.Info("killed a stray hypervisor", "pid", pid, "dir", vmDir)
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
