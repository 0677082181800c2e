package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"google.golang.org/grpc"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/vm"
)

// addVMController serves VM pods (handlers aurae-vm and kata) when the
// guest image exists; without it they are not listed, and Status says so
// by their absence. The function it returns stops the controller's log
// writers.
func addVMController(ctrls map[string]controller.Controller, cfg config, host grpc.ClientConnInterface, logger *slog.Logger, obs observability) (func(), error) {
	none := func() {}
	for _, f := range []string{cfg.VMKernel, cfg.VMInitramfs} {
		if _, err := os.Stat(f); err != nil {
			logger.Info("VM pods not served: no guest image (make vm-image)", "missing", f)
			return none, nil
		}
	}
	if want := filepath.Join(filepath.Dir(cfg.VMKernel), "initramfs.cpio.gz"); filepath.Clean(cfg.VMInitramfs) != want {
		return none, fmt.Errorf("--vm-initramfs %s: auraed's VmService boots the initramfs beside the kernel (%s)", cfg.VMInitramfs, want)
	}
	vcfg := vm.Config{
		Host:        host,
		Kernel:      cfg.VMKernel,
		Initramfs:   cfg.VMInitramfs,
		StateDir:    filepath.Join(cfg.StateDir, "vmpods"),
		OverheadMiB: uint32(cfg.VMOverheadMiB),
		MaxMemMiB:   uint32(cfg.VMMaxMemMiB),
		AllowedAnnotations: func() map[string]bool {
			a, _ := cfg.allowedAnnotations() // checked by parseConfig
			return a
		}(),
		Logger: logger.With("component", "vm"),
	}
	if obs.cri != nil {
		vcfg.GuestReconnected = obs.cri.GuestReconnected
	}
	c, err := vm.New(vcfg)
	if err != nil {
		return none, err
	}
	for _, h := range vm.Handlers {
		ctrls[h] = c
	}
	return func() { _ = c.Close() }, nil
}
