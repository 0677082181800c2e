// Package daemon assembles auraed's services, so that the auraed binary and
// aurae-cri (which embeds an auraed unless told to use another) serve the
// same Aurae API from the same code.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observeapi "github.com/aurae-runtime/aurae-cri/api/observe"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	osapi "github.com/aurae-runtime/aurae-cri/api/os"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	runtimecellv0 "github.com/aurae-runtime/aurae-cri/api/runtime/cell/v0"
	scheduleapi "github.com/aurae-runtime/aurae-cri/api/schedule"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cells"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/discovery"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/legacy"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/osinfo"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/vms"
)

// Config configures the services.
type Config struct {
	StateDir   string
	CgroupRoot string
	// CgroupDriver makes pods' cgroups (cgroupfs or systemd); cells are
	// cgroupfs always.
	CgroupDriver    cgroup.Driver
	StopGracePeriod time.Duration
	// OCIRuntime is the PodService's OCI runtime binary; "" takes
	// pods.DefaultRuntime() (the pinned runc when installed, else PATH's).
	OCIRuntime string
	// AllowOldOCIRuntime starts with a runtime older than
	// pods.MinRuntimeVersion instead of refusing to.
	AllowOldOCIRuntime bool
	Logger             *slog.Logger
	// Node configures os.OSService: this node's name, its peers and how
	// to reach them, the node's CRI runtime. Logger and StopGracePeriod
	// are taken from above.
	Node osinfo.Config
	// VMImageDir holds the guest image (vmlinux, initramfs.cpio.gz) that
	// runtime.Core's RunVirtualMachine boots.
	VMImageDir string
	// VMTemplates starts VMs from VM templates where it can (VmService:
	// vms.Config.Templates).
	VMTemplates bool
	// VMPoolSize, with VMTemplates, keeps that many idle clones of the
	// template last used running, ready to become VMs (vms.Config.PoolSize).
	VMPoolSize int
	// Logs feeds GetAuraeDaemonLogStream; nil serves an empty stream.
	Logs *observe.LogBroadcaster
	// Images says where runtime.Core's RunCell and RunPod pull images.
	Images ImagesConfig
	// SelfAddress is where this auraed serves (unix:///path): RunPod's VM
	// pods are run through it, by the VM pod controller. "" runs none.
	SelfAddress string
}

// Daemon is the set of Aurae services with their state.
type Daemon struct {
	hub   *observe.Hub
	logs  *observe.LogBroadcaster
	cells *cells.Service
	pods  *pods.Service
	sched *legacy.Scheduler
	vms   *vms.Service // nil when VmService is not served
	core  *legacy.Core
	imgs  *images
	node  osinfo.Config
	os    *osinfo.Service
	extra []func(*grpc.Server)
	close []func() error
}

// New opens the services' state and reconciles it with the machine.
func New(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Logs == nil {
		cfg.Logs = observe.NewLogBroadcaster(cfg.Logger.Handler())
	}
	d := &Daemon{hub: observe.NewHub(observe.HubConfig{}), logs: cfg.Logs, node: cfg.Node}
	d.node.Logger, d.node.StopGracePeriod = cfg.Logger, cfg.StopGracePeriod
	var err error
	d.cells, err = cells.NewService(ctx, cells.Config{
		StateDir:        cfg.StateDir,
		CgroupRoot:      cfg.CgroupRoot,
		StopGracePeriod: cfg.StopGracePeriod,
		Hub:             d.hub,
		Logger:          cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("start cell service: %w", err)
	}
	d.close = append(d.close, d.cells.Close)
	// Enabled scheduled executables start now, in cells.
	if d.sched, err = legacy.NewScheduler(d.cells, cfg.StateDir, cfg.Logger); err != nil {
		_ = d.Close()
		return nil, err
	}
	d.close = append(d.close, d.sched.Close)
	d.imgs = &images{cfg: cfg.Images, dir: cfg.StateDir, log: cfg.Logger.With("component", "image")}
	d.close = append(d.close, d.imgs.Close)
	if err := d.addPods(ctx, cfg); err != nil {
		_ = d.Close()
		return nil, err
	}
	d.addVMs(ctx, cfg)
	d.core = legacy.NewCore(d.cells, d.hub)
	if d.vms != nil {
		d.core.WithVMs(ctx, d.vms, cfg.VMImageDir, cfg.Logger)
	}
	d.close = append(d.close, d.core.Close)
	d.core.WithCells(ctx, d.pods, d.imgs.open, filepath.Join(cfg.StateDir, "runcell"), cfg.Logger)
	if d.vms != nil && cfg.SelfAddress != "" {
		vp := &vmPods{self: cfg.SelfAddress, imageDir: cfg.VMImageDir, stateDir: filepath.Join(cfg.StateDir, "runpod"), log: cfg.Logger.With("component", "vm")}
		// Closed after Core: its recovery may be opening it.
		d.close = append(d.close[:len(d.close)-1], vp.Close, d.core.Close)
		d.core.WithPods(ctx, vp.open)
	}
	return d, nil
}

// Register serves the services on s.
func (d *Daemon) Register(s *grpc.Server) {
	cellsv0.RegisterCellServiceServer(s, d.cells)
	discoveryv0.RegisterDiscoveryServiceServer(s, discovery.NewService())
	observev0.RegisterObserveServiceServer(s, observe.NewService(d.hub, d.logs))
	if d.os == nil {
		// One os service for every server: one connection per peer.
		node := d.node
		node.Cells, node.Pods = d.cells, d.pods
		d.os = osinfo.New(node)
		d.close = append(d.close, d.os.Close)
	}
	osapi.RegisterOSServiceServer(s, d.os)
	// The earlier generations of the API, over the same cells.
	runtimecellv0.RegisterCellServiceServer(s, legacy.NewCellV0(d.cells))
	observeapi.RegisterObserveServer(s, legacy.NewObserve(d.cells))
	runtimeapi.RegisterCoreServer(s, d.core)
	schedule, scheduleExecutable := d.sched.Services()
	scheduleapi.RegisterScheduleServer(s, schedule)
	scheduleapi.RegisterScheduleExecutableServer(s, scheduleExecutable)
	for _, r := range d.extra {
		r(s)
	}
}

// Close releases the state files. Cells, pods and their processes outlive
// the daemon.
func (d *Daemon) Close() error {
	var errs []error
	for i := len(d.close) - 1; i >= 0; i-- {
		errs = append(errs, d.close[i]())
	}
	return errors.Join(errs...)
}
