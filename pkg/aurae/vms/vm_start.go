package vms

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// initramfsName is the guest initramfs looked for beside a VM's kernel.
const initramfsName = "initramfs.cpio.gz"

// rootImageName is the guest's root image (the initramfs' tree as a
// read-only ext4, hack/vm-image/build.sh) looked for beside a VM's kernel:
// where the hypervisor can, the guest boots from it instead of the
// initramfs (see hypervisor.VMConfig.RootImage).
const rootImageName = "rootfs.img"

// start boots a created or stopped VM and returns where its guest auraed
// answers. Starting a running VM returns its address.
func (s *Service) start(ctx context.Context, id string) (string, error) {
	v, err := s.lookup(id)
	if err != nil {
		return "", fmt.Errorf("start vm: %w", err)
	}
	v.op.Lock()
	defer v.op.Unlock()
	v.mu.Lock()
	freed := v.freed
	v.mu.Unlock()
	if freed {
		return "", fmt.Errorf("start vm: vm %q: %w", id, errdefs.ErrNotFound)
	}
	if p := v.running(); p != nil && p.Alive() {
		return auraedAddress(v.dir), nil
	}
	cfg, err := s.bootConfig(v)
	if err != nil {
		return "", fmt.Errorf("start vm %q: %w", id, err)
	}
	if cfg.UID, err = s.hypervisorUser(v); err != nil {
		return "", fmt.Errorf("start vm %q: %w", id, err)
	}
	cfg.GID = cfg.UID
	// A boot takes seconds under TCG; bound it even when the caller does
	// not: two boots, the KVM probe, and some slack.
	bctx, cancel := bounded(ctx, 2*s.cfg.BootTimeout+time.Minute)
	defer cancel()
	t0 := time.Now()
	var p *hypervisor.Proc
	boot, note := bootCold, "templates are off"
	if s.tpl != nil {
		var how string
		if p, how, err = s.startFromTemplate(bctx, v, cfg); err != nil {
			note = err.Error()
			s.log.InfoContext(ctx, "vm boots cold: no template start", "vm", id, "reason", note)
		} else {
			boot, note = how, ""
			cfg.UID = v.status().UID
		}
	}
	if p == nil {
		if p, err = s.hv.Start(bctx, cfg); err != nil {
			return "", fmt.Errorf("start vm %q: %w", id, err)
		}
	}
	if p.Warning != "" {
		s.log.WarnContext(ctx, "vm runs without hardware acceleration", "vm", id, "accel", p.Accel, "warning", p.Warning)
	}
	s.setRunning(v, p, p.Warning, boot, note)
	s.log.InfoContext(ctx, "vm started", "vm", id, "hypervisor", s.hv.Name(), "pid", p.Pid, "uid", cfg.UID, "accel", p.Accel,
		"from", boot, "boot", time.Since(t0).Round(time.Millisecond).String())
	return auraedAddress(v.dir), nil
}

// bootConfig is the hypervisor's config for v. Files of the spec are
// checked again: they may have gone since Create.
func (s *Service) bootConfig(v *vm) (hypervisor.VMConfig, error) {
	m := v.spec
	if err := validFile("kernel_img_path", m.GetKernelImgPath()); err != nil {
		return hypervisor.VMConfig{}, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	cfg := hypervisor.VMConfig{
		ID:          v.id,
		Dir:         v.dir,
		Kernel:      m.GetKernelImgPath(),
		KernelArgs:  append([]string{}, m.GetKernelArgs()...),
		MemMiB:      m.GetMemSizeMb(),
		VCPUs:       m.GetVcpuCount(),
		Accel:       s.accel,
		BootTimeout: s.cfg.BootTimeout,
	}
	netAndShares(m, &cfg)
	if cg := m.GetCgroupPath(); cg != "" {
		cfg.Place = placeIn(cg, m.GetMemSizeMb())
	}
	// The guest auraed's hostname (hack/vm-image/README.md): the VM's id.
	if !slices.ContainsFunc(cfg.KernelArgs, func(a string) bool { return strings.HasPrefix(a, "aurae.hostname=") }) {
		cfg.KernelArgs = append(cfg.KernelArgs, "aurae.hostname="+v.id)
	}
	cfg.Initrd = s.cfg.Initramfs
	if cfg.Initrd == "" {
		if p := filepath.Join(filepath.Dir(cfg.Kernel), initramfsName); fileExists(p) {
			cfg.Initrd = p
		}
	} else if !fileExists(cfg.Initrd) {
		return cfg, fmt.Errorf("initramfs %s does not exist: %w", cfg.Initrd, errdefs.ErrFailedPrecondition)
	}
	// The root image of the same build: only beside the initramfs of the
	// kernel's dir (an initramfs from elsewhere is not its tree).
	if dir := filepath.Dir(cfg.Kernel); filepath.Clean(cfg.Initrd) == filepath.Join(dir, initramfsName) {
		if p := filepath.Join(dir, rootImageName); fileExists(p) {
			cfg.RootImage = p
		}
	}
	if rd := m.GetRootDrive(); rd != nil {
		if err := validFile("root_drive.host_path", rd.GetHostPath()); err != nil {
			return cfg, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
		}
		cfg.Drives = append(cfg.Drives, hypervisor.Drive{ID: "root", Path: rd.GetHostPath(), ReadOnly: !rd.GetIsWriteable()})
	}
	for i, d := range m.GetDriveMounts() {
		if err := validFile(fmt.Sprintf("drive_mounts[%d].host_path", i), d.GetHostPath()); err != nil {
			return cfg, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
		}
		devID := "mount" + strconv.Itoa(i)
		cfg.Drives = append(cfg.Drives, hypervisor.Drive{ID: devID, Path: d.GetHostPath(), ReadOnly: !d.GetIsWriteable()})
		// What the guest mounts where: aurae.mount=<serial>:<path>:<fstype>:<ro|rw>,
		// read by the guest from /proc/cmdline (the device is
		// /dev/disk/by-id/virtio-<serial>).
		mode := "ro"
		if d.GetIsWriteable() {
			mode = "rw"
		}
		cfg.KernelArgs = append(cfg.KernelArgs, fmt.Sprintf("aurae.mount=%s:%s:%s:%s", devID, d.GetVmPath(), d.GetFsType(), mode))
	}
	return cfg, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}
