// Package hypervisor runs microVMs as separate hypervisor processes that
// outlive the daemon that started them, behind a small interface: QEMU from
// Debian (driven through QMP) by default; Cloud Hypervisor and Firecracker
// have a seam here and report that they are not installed (or not yet
// driven) when chosen.
//
// Every VM has a private directory (VMConfig.Dir, mode 0700) that holds
//
//	qmp.sock        the hypervisor's control socket (QMP for QEMU)
//	aurae.sock      the host end of the guest's virtio-serial port "aurae.0"
//	console.log     the guest's serial console
//	hypervisor.pid  the hypervisor's pid
//	hypervisor.log  the hypervisor's own stderr
//
// Acceleration: KVM only where /dev/kvm opens and a real boot of the
// configured kernel under KVM gets through (see probe.go); TCG otherwise,
// with a warning carried in Proc.Warning.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// File names inside VMConfig.Dir.
const (
	ControlSocketName = "qmp.sock"
	AuraeSocketName   = "aurae.sock"
	ConsoleLogName    = "console.log"
	PidFileName       = "hypervisor.pid"
	LogFileName       = "hypervisor.log"
	// AuraePortName is the virtio-serial port the guest auraed serves on
	// (/dev/virtio-ports/aurae.0 in the guest).
	AuraePortName = "aurae.0"
)

// maxSocketPath is the longest unix socket path (sun_path is 108 bytes with
// its terminating NUL).
const maxSocketPath = 107

// Accel is a hypervisor accelerator.
type Accel string

const (
	// AccelAuto probes: KVM when it can boot the kernel, TCG otherwise.
	AccelAuto Accel = ""
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// ParseAccel parses "", "auto", "kvm" or "tcg".
func ParseAccel(s string) (Accel, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return AccelAuto, nil
	case "kvm":
		return AccelKVM, nil
	case "tcg":
		return AccelTCG, nil
	}
	return "", fmt.Errorf("accelerator %q: want auto, kvm or tcg: %w", s, errdefs.ErrInvalidArgument)
}

// Drive is a raw block image or device given to the guest as virtio-blk.
type Drive struct {
	// ID names the device; the guest sees it as its serial number
	// (/dev/disk/by-id/virtio-<ID>). Letters, digits, '-', '_'; at most 20
	// characters (virtio-blk's serial limit).
	ID       string
	Path     string
	ReadOnly bool
}

// NIC is a guest network interface (virtio-net) backed by a tap device
// that the hypervisor makes in its network namespace and removes when it
// exits.
type NIC struct {
	// Tap is the tap device's name (at most 15 bytes).
	Tap string
	// MAC is the guest NIC's address; empty lets the hypervisor pick.
	MAC string
}

// Share is a host directory shared into the guest with virtio-fs; the
// guest mounts it by Tag (mount -t virtiofs <tag>). Mounts made below
// Path after the VM started reach the guest only when Path is a shared
// mount (virtiofsd serves it from a mount namespace of its own).
type Share struct {
	Tag      string
	Path     string
	ReadOnly bool
}

// VMConfig describes one boot of a VM.
type VMConfig struct {
	// ID names the VM (the hypervisor's process name).
	ID string
	// Dir is the VM's private directory; it must exist. Socket paths in it
	// must fit a unix socket address: see CheckDir.
	Dir    string
	Kernel string
	Initrd string // optional
	// RootImage, optional, is a read-only ext4 image of the guest's root
	// (hack/vm-image/build.sh's rootfs.img, the initramfs' tree): where the
	// machine has PCI (QEMU's q35, under TCG) the guest boots from it
	// instead of the initramfs, mapped by DAX from a virtio-pmem device, so
	// that its pages are the host's page cache of the file, one copy for
	// every VM, instead of an unpacked copy in each guest's memory. Its
	// size must be a multiple of 2 MiB.
	RootImage string
	// rootImageSize is RootImage's size, read from the file opened for
	// the hypervisor.
	rootImageSize int64
	KernelArgs    []string
	MemMiB        uint32
	VCPUs         uint32
	// Drives in order: the first one is the guest's vda.
	Drives []Drive
	// NetNSPath, when set, is the network namespace the hypervisor runs in
	// (its tap devices are made there).
	NetNSPath string
	// NICs are the guest's network interfaces, each on a tap device.
	NICs []NIC
	// Shares are host directories shared into the guest with virtio-fs.
	Shares []Share
	// UID and GID, when UID is not 0, are who the hypervisor runs as: it
	// gets the VM's dir and inherits every file it needs (see
	// qemu_files.go). A user of its own per VM, never a host user.
	UID, GID uint32
	// Accel: AccelAuto probes (cached per kernel).
	Accel Accel
	// BootTimeout bounds the wait for the guest's first console output (or
	// Booted); a boot that times out is retried once. Default 60 s.
	BootTimeout time.Duration
	// Booted, when set, replaces "the console has output" as the sign that
	// the guest booted. It is polled until it returns nil.
	Booted func(ctx context.Context) error
	// Place, when set, puts the hypervisor's process and its helpers (the
	// shares' virtiofsds) where they belong (a cgroup) right after the
	// hypervisor started, before the guest boots; an error kills them.
	Place func(pids ...int) error
	// tmpl, when set, boots a template's machine or a clone (template.go).
	tmpl *templateMode
}

// Proc is a running hypervisor process.
type Proc struct {
	Pid int
	// StartTime is the process's start time in clock ticks since boot:
	// with Pid it names one process even after the pid is reused.
	StartTime uint64
	// ControlSocket is the hypervisor's control socket (QMP for QEMU).
	ControlSocket string
	Accel         Accel
	// Warning says why the VM runs slower than it could (TCG).
	Warning string
}

// Alive reports whether the process still runs.
func (p *Proc) Alive() bool { return alive(p.Pid, p.StartTime) }

// Wait waits until the process exits or ctx ends.
func (p *Proc) Wait(ctx context.Context) error { return waitExit(ctx, p.Pid, p.StartTime) }

// Hypervisor starts, stops and adopts VMs of one kind.
type Hypervisor interface {
	// Name is "qemu", "cloud-hypervisor" or "firecracker".
	Name() string
	// Start boots a VM and returns once the guest has booted (or fails,
	// leaving no process behind). The process outlives the caller.
	Start(ctx context.Context, cfg VMConfig) (*Proc, error)
	// Stop asks the guest to power down, waits up to grace for the
	// hypervisor to exit, then quits the hypervisor, then kills it.
	Stop(ctx context.Context, p *Proc, grace time.Duration) error
	// Kill kills the hypervisor process and waits for it to exit.
	Kill(ctx context.Context, p *Proc) error
	// Status asks the hypervisor for the VM's run state ("running",
	// "paused", "shutdown", …).
	Status(ctx context.Context, p *Proc) (string, error)
	// Adopt takes over a hypervisor started earlier (by this or another
	// process): pid must still run this hypervisor on controlSocket, and its
	// control socket must answer. When the process is the hypervisor's but
	// its control socket does not answer, Adopt returns the Proc with an
	// error (errdefs.ErrUnavailable), so that the caller can kill it.
	Adopt(ctx context.Context, pid int, controlSocket string) (*Proc, error)
}

// ErrNotInstalled is returned when the hypervisor's binary is not on PATH.
var ErrNotInstalled = errors.New("hypervisor not installed")

// Options configure New.
type Options struct {
	// Binary overrides the hypervisor's binary (default: looked up on PATH).
	Binary string
	// CacheDir keeps the acceleration probe's results (one file per kernel
	// hash); empty keeps them in memory only.
	CacheDir string
	// ProbeTimeout bounds the KVM probe boot (default 20 s).
	ProbeTimeout time.Duration
}

// New returns the hypervisor called name: "qemu" (also ""),
// "cloud-hypervisor" or "firecracker".
func New(name string, o Options) (Hypervisor, error) {
	switch name {
	case "", "qemu":
		return NewQEMU(o), nil
	case "cloud-hypervisor", "firecracker":
		return newUnsupported(name, o)
	}
	return nil, fmt.Errorf("hypervisor %q: want qemu, cloud-hypervisor or firecracker: %w", name, errdefs.ErrInvalidArgument)
}

// CheckDir checks that dir is absolute and that the sockets in it fit a
// unix socket address.
func CheckDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("vm dir %q is not absolute: %w", dir, errdefs.ErrInvalidArgument)
	}
	for _, n := range []string{ControlSocketName, AuraeSocketName} {
		if p := filepath.Join(dir, n); len(p) > maxSocketPath {
			return fmt.Errorf("socket path %s is longer than %d bytes (unix socket limit): %w", p, maxSocketPath, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// AuraeSocket is the host end of the guest auraed's channel for a VM dir.
func AuraeSocket(dir string) string { return filepath.Join(dir, AuraeSocketName) }

// ConsoleLog is the guest console's log for a VM dir.
func ConsoleLog(dir string) string { return filepath.Join(dir, ConsoleLogName) }

// ControlSocketPath is the hypervisor's control socket for a VM dir.
func ControlSocketPath(dir string) string { return filepath.Join(dir, ControlSocketName) }
