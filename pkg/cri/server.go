// Package cri serves the Kubernetes CRI v1 (RuntimeService and
// ImageService) on top of Aurae pods. Handlers are thin: validate,
// translate, call the sandbox store and its controllers; errors are wrapped
// errdefs sentinels, mapped to gRPC codes once by the interceptor.
package cri

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// Images is what the runtime needs from the image service.
type Images interface {
	Resolve(ctx context.Context, refOrID string) (image.Image, error)
	PrepareRootfs(ctx context.Context, containerID, imageRef string) ([]image.Mount, error)
	RemoveRootfs(ctx context.Context, containerID string) error
	// Pull pulls an image (the image of an image volume that is absent).
	Pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	// PrepareImageVolume makes (or finds) the read-only view of an image;
	// RemoveImageVolume removes it by key; ImageVolumes lists the keys.
	PrepareImageVolume(ctx context.Context, imageID string) ([]image.Mount, error)
	RemoveImageVolume(ctx context.Context, key string) error
	ImageVolumes(ctx context.Context) ([]string, error)
}

// Network sets up and tears down pod networks (CNI).
type Network interface {
	// Ready is nil when pods can get a network, else why not.
	Ready() error
	Setup(ctx context.Context, podID, netnsPath string, pod *runtimeapi.PodSandboxConfig) (ips []string, err error)
	// Teardown is idempotent and works when the namespace is gone.
	Teardown(ctx context.Context, podID, netnsPath string, pod *runtimeapi.PodSandboxConfig) error
}

// Config configures the runtime service.
type Config struct {
	// RootDir holds container rootfs mount points and the state file.
	RootDir string
	// Controllers by runtime handler; "" is the default handler.
	Controllers map[string]controller.Controller
	Images      Images
	Network     Network
	Store       *sandbox.Store
	Events      *sandbox.Events
	// CgroupParent is where pods go when the request names none.
	CgroupParent string
	// CgroupDriver is the cgroup driver pods are made with, as
	// RuntimeConfig answers it: "cgroupfs" (default) or "systemd".
	CgroupDriver string
	// MonitorInterval is how often every running container is checked for
	// an exit its controller's events did not report (a safety net).
	MonitorInterval time.Duration
	Logger          *slog.Logger
	// RuntimeName and RuntimeVersion answer Version.
	RuntimeName, RuntimeVersion string
	// Host is what the hosts of the pods offer (AppArmor, SELinux,
	// recursive read-only mounts); nil probes this host (ocispec.ProbeHost).
	// Every handler's containers are taken to run on a kernel like this
	// one (a VM guest's is built for it: see README's Limitations).
	Host *ocispec.HostFeatures
	// CDI resolves the CDI devices containers ask for; nil refuses them.
	CDI ocispec.CDI
	// PidsLimit is every container's pids cgroup limit; 0: none.
	PidsLimit int64
	// Metrics counts container exits and OOM kills, recoveries and the
	// containers they mark UNKNOWN; nil counts nothing.
	Metrics *metrics.CRI
	// NRI is the Node Resource Interface (pkg/nri) whose hooks the
	// handlers call; nil: none.
	NRI NRI
	// Fault, when set, is called at each fault point (FaultPoints) for
	// fault injection tests; nil in production.
	Fault func(point string)
}

// Runtime implements runtimeapi.RuntimeServiceServer.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer

	cfg    Config
	log    *slog.Logger
	store  *sandbox.Store
	events *sandbox.Events
	ready  atomic.Bool
	// podCIDR from UpdateRuntimeConfig, informational.
	podCIDR atomic.Value
	pods    objectLocks
	ctrs    objectLocks
	// volumes serialises the use and release of one image volume (by key).
	volumes objectLocks
	// capabilities are aurae-cri's own: what privileged containers get.
	capabilities []string
	// nri is Config.NRI, or noNRI.
	nri NRI
	// host is Config.Host, probed when nil.
	host ocispec.HostFeatures
	// streams serves Exec, Attach and PortForward URLs once started.
	streams atomic.Pointer[StreamServer]
	// stats are the containers' last figures and the calls in flight.
	stats statsCache
	// checking are the containers whose exit check is in flight.
	checking inflight
	// stopMonitor ends the monitor that Recover started; bg counts its
	// goroutines.
	stopMonitor context.CancelFunc
	bg          sync.WaitGroup
}

func (r *Runtime) lockPod(id string) func()       { return r.pods.lock(id) }
func (r *Runtime) lockContainer(id string) func() { return r.ctrs.lock(id) }

// NewRuntime returns the runtime service; it answers Unavailable until
// Recover has run.
func NewRuntime(cfg Config) (*Runtime, error) {
	if cfg.Store == nil || cfg.Images == nil || cfg.Network == nil || cfg.Controllers[""] == nil {
		return nil, fmt.Errorf("cri: store, images, network and a default controller are required")
	}
	if cfg.Events == nil {
		cfg.Events = sandbox.NewEvents()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MonitorInterval <= 0 {
		cfg.MonitorInterval = 5 * time.Second
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "pods"
	}
	caps, err := ocispec.CurrentCapabilities()
	if err != nil {
		return nil, fmt.Errorf("cri: own capabilities: %w", err)
	}
	host := ocispec.ProbeHost()
	if cfg.Host != nil {
		host = *cfg.Host
	} else {
		err := prepareContainersDir(cfg.RootDir)
		if err == nil {
			err = probeUserNamespaces(filepath.Join(cfg.RootDir, "containers"))
		}
		host.UserNamespaces = err == nil
		if err != nil {
			cfg.Logger.Warn("pods with a user namespace (hostUsers: false) are refused: id-mapped container rootfs do not work here", "error", err)
		}
	}
	nri := cfg.NRI
	if nri == nil {
		nri = noNRI{}
	}
	return &Runtime{cfg: cfg, log: cfg.Logger, store: cfg.Store, events: cfg.Events, capabilities: caps, host: host, nri: nri}, nil
}

// Close stops watching the containers (the event followers and the exit
// poll) and waits for them; call it once the server has drained, before
// closing the clients and the store they use.
func (r *Runtime) Close() {
	if r.stopMonitor != nil {
		r.stopMonitor()
	}
	r.bg.Wait()
	// The snapshots of removed containers, before the image service
	// closes.
	r.store.Flush()
}

// checkReady refuses calls until recovery is done.
func (r *Runtime) checkReady() error {
	if !r.ready.Load() {
		return fmt.Errorf("aurae-cri is recovering its state: %w", errdefs.ErrUnavailable)
	}
	return nil
}

func (r *Runtime) controller(handler string) (controller.Controller, error) {
	c, ok := r.cfg.Controllers[handler]
	if !ok {
		return nil, fmt.Errorf("no runtime for handler %q: %w", handler, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// controllerOf is the controller of a pod's runtime handler.
func (r *Runtime) controllerOf(podID string) (controller.Controller, error) {
	sb, err := r.store.Sandbox(podID)
	if err != nil {
		return nil, err
	}
	return r.controller(sb.RuntimeHandler)
}

// runningContainer is a container that exists and runs (else NotFound or
// FailedPrecondition), with the controller of its pod.
func (r *Runtime) runningContainer(id string) (controller.Controller, sandbox.Container, error) {
	if id == "" {
		return nil, sandbox.Container{}, fmt.Errorf("container id is empty: %w", errInvalid)
	}
	c, err := r.store.Container(id)
	if err != nil {
		return nil, sandbox.Container{}, err
	}
	if c.Status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return nil, sandbox.Container{}, fmt.Errorf("container %s is %s, not running: %w", c.ID, c.Status.State, errPrecondition)
	}
	ctrl, err := r.controllerOf(c.SandboxID)
	if err != nil {
		return nil, sandbox.Container{}, err
	}
	return ctrl, c, nil
}

// bounded gives a call to auraed, containerd or CNI its own deadline.
func bounded(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// cleanupContext is for undoing work after a failure: a fresh context, so
// that the undo runs even when the request's was cancelled.
func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}
