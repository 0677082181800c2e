// Package nri embeds the Node Resource Interface (github.com/containerd/nri)
// in aurae-cri, as containerd and CRI-O do: NRI plugins that connect to the
// NRI socket see the pods' and containers' lifecycle events and may adjust
// a container at creation and at each resource update. Every adjustment
// is checked here (a builtin validator that names the plugin and the
// field) before pkg/ocispec applies it; the CRI handlers only call the
// hooks of Hooks.
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/adaptation/builtin"
	api "github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// Defaults, as containerd's and NRI's.
const (
	DefaultSocketPath          = adaptation.DefaultSocketPath
	DefaultPluginPath          = adaptation.DefaultPluginPath
	DefaultPluginConfigPath    = adaptation.DefaultPluginConfigPath
	DefaultRegistrationTimeout = adaptation.DefaultPluginRegistrationTimeout
	DefaultRequestTimeout      = adaptation.DefaultPluginRequestTimeout
)

// validatorName is aurae-cri's own builtin plugin that checks every
// container adjustment.
const validatorName = "aurae-cri-validator"

// Config configures the NRI adaptation.
type Config struct {
	// SocketPath is where external plugins connect (made mode 0600).
	SocketPath string
	// PluginPath holds plugins that aurae-cri starts itself (NRI's
	// pre-installed plugins), PluginConfigPath their configs.
	PluginPath, PluginConfigPath string
	// RegistrationTimeout bounds a plugin's registration, RequestTimeout
	// each of its calls: a plugin that takes longer is disconnected and
	// the pod goes on without it.
	RegistrationTimeout, RequestTimeout time.Duration
	// RuntimeName and RuntimeVersion are told to plugins.
	RuntimeName, RuntimeVersion string
	// VMHandlers are the runtime handlers whose pods run in a VM: plugins
	// may give their containers no host path, host device or OCI hook.
	VMHandlers []string
	Logger     *slog.Logger
}

// State is what connecting plugins are synchronized with.
type State interface {
	Sandboxes() []sandbox.Sandbox
	Containers() []sandbox.Container
}

// Runtime is what plugins' updates of other containers, unsolicited
// updates and evictions act on (without calling the plugins again).
type Runtime interface {
	SetContainerResources(ctx context.Context, id string, res *specs.LinuxResources) error
	EvictContainer(ctx context.Context, id, reason string) error
}

// NRI is the adaptation: the NRI socket, its plugins and the hooks.
type NRI struct {
	cfg   Config
	log   *slog.Logger
	adapt *adaptation.Adaptation
	state State

	mu sync.Mutex
	rt Runtime
	// creating are the containers whose CreateContainer is with the
	// plugins: the rules their adjustments are checked against, and the
	// validator's refusal.
	creating map[string]*creation
	// plugins is how many plugins are connected (the validator included).
	plugins atomic.Int32
}

type creation struct {
	rules   rules
	refused error
	plugins map[string]bool
}

// New sets up the adaptation; Start opens the socket.
func New(cfg Config, state State) (*NRI, error) {
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RegistrationTimeout > 0 {
		adaptation.SetPluginRegistrationTimeout(cfg.RegistrationTimeout)
	}
	if cfg.RequestTimeout > 0 {
		adaptation.SetPluginRequestTimeout(cfg.RequestTimeout)
	}
	setLogger(cfg.Logger)
	n := &NRI{cfg: cfg, log: cfg.Logger.With("component", "nri"), state: state, creating: map[string]*creation{}}
	opts := []adaptation.Option{
		adaptation.WithSocketPath(cfg.SocketPath),
		adaptation.WithMetrics(pluginCount{n}),
		adaptation.WithBuiltinPlugins(&builtin.BuiltinPlugin{
			Base: validatorName, Index: "00",
			Handlers: builtin.BuiltinHandlers{ValidateContainerAdjustment: n.validate},
		}),
	}
	if cfg.PluginPath != "" {
		opts = append(opts, adaptation.WithPluginPath(cfg.PluginPath))
	}
	if cfg.PluginConfigPath != "" {
		opts = append(opts, adaptation.WithPluginConfigPath(cfg.PluginConfigPath))
	}
	a, err := adaptation.New(cfg.RuntimeName, cfg.RuntimeVersion, n.sync, n.update, opts...)
	if err != nil {
		return nil, fmt.Errorf("nri: %w", err)
	}
	n.adapt = a
	return n, nil
}

// Start starts the pre-installed plugins and listens on the socket (mode
// 0600); rt is what plugins' updates and evictions act on. Call it once
// the state is recovered: a connecting plugin is synchronized with it.
func (n *NRI) Start(rt Runtime) error {
	n.mu.Lock()
	n.rt = rt
	n.mu.Unlock()
	if err := n.adapt.Start(); err != nil {
		return fmt.Errorf("nri: start: %w", err)
	}
	if err := os.Chmod(n.cfg.SocketPath, 0o600); err != nil {
		n.adapt.Stop()
		return fmt.Errorf("nri: socket mode: %w", err)
	}
	n.log.Info("NRI enabled", "socket", n.cfg.SocketPath, "plugin_path", n.cfg.PluginPath)
	return nil
}

// Stop disconnects the plugins and closes the socket.
func (n *NRI) Stop() {
	n.adapt.Stop()
	_ = os.Remove(n.cfg.SocketPath)
}

func (n *NRI) runtime() Runtime {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rt
}

// BlockSync keeps plugins that connect from being synchronized until the
// returned func is called: a pod or container being made is either in
// their synchronization or in their events, never lost between the two.
func (n *NRI) BlockSync() func() {
	b := n.adapt.BlockPluginSync()
	return b.Unblock
}

// RunPodSandbox tells plugins of a pod about to be ready; an error fails
// the pod.
func (n *NRI) RunPodSandbox(ctx context.Context, sb sandbox.Sandbox) error {
	if err := n.adapt.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: podOf(sb)}); err != nil {
		return fmt.Errorf("NRI RunPodSandbox: %w", err)
	}
	return nil
}

// UpdatePodSandbox tells plugins of a pod about to be resized in place to
// the pod-level resources and overhead given (nil: none); an error refuses
// the resize.
func (n *NRI) UpdatePodSandbox(ctx context.Context, sb sandbox.Sandbox, overhead, resources *runtimeapi.LinuxContainerResources) error {
	req := &api.UpdatePodSandboxRequest{Pod: podOf(sb)}
	if overhead != nil {
		req.OverheadLinuxResources = criResources(overhead)
	}
	if resources != nil {
		req.LinuxResources = criResources(resources)
	}
	if _, err := n.adapt.UpdatePodSandbox(ctx, req); err != nil {
		// The plugin's answer is a ttrpc status: its message, not its
		// code, is what the kubelet is told.
		return fmt.Errorf("an NRI plugin refused the resize: %s: %w", status.Convert(err).Message(), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// PostUpdatePodSandbox tells plugins of a pod resized in place.
func (n *NRI) PostUpdatePodSandbox(ctx context.Context, sb sandbox.Sandbox) {
	if err := n.adapt.PostUpdatePodSandbox(ctx, &api.PostUpdatePodSandboxRequest{Pod: podOf(sb)}); err != nil {
		n.log.Warn("NRI PostUpdatePodSandbox", "pod", sb.ID, "error", err)
	}
}

// StopPodSandbox tells plugins of a pod whose containers are stopped.
func (n *NRI) StopPodSandbox(ctx context.Context, sb sandbox.Sandbox) error {
	if err := n.adapt.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: podOf(sb)}); err != nil {
		return fmt.Errorf("NRI StopPodSandbox: %w", err)
	}
	return nil
}

// RemovePodSandbox tells plugins of a pod removed.
func (n *NRI) RemovePodSandbox(ctx context.Context, sb sandbox.Sandbox) {
	if err := n.adapt.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: podOf(sb)}); err != nil {
		n.log.Warn("NRI RemovePodSandbox", "pod", sb.ID, "error", err)
	}
}

// CreateContainer asks plugins for their adjustments of a container about
// to be created, whose spec made from the request is spec; oomMin is the
// lowest oom_score_adj its pod's runtime can give. The adjustment (nil:
// none) has passed the validator; a refused one is an error that names
// the plugin and the field. Plugins' updates and evictions of other
// containers are applied here.
func (n *NRI) CreateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container, spec *specs.Spec, oomMin int) (*ocispec.Adjustment, error) {
	cr := &creation{rules: rules{vm: slices.Contains(n.cfg.VMHandlers, sb.RuntimeHandler), oomMin: oomMin}}
	n.mu.Lock()
	n.creating[c.ID] = cr
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.creating, c.ID)
		n.mu.Unlock()
	}()
	rsp, err := n.adapt.CreateContainer(ctx, &api.CreateContainerRequest{Pod: podOf(sb), Container: containerOf(c, spec)})
	n.mu.Lock()
	refused, plugins := cr.refused, cr.plugins
	n.mu.Unlock()
	if refused != nil {
		return nil, refused
	}
	if err != nil {
		return nil, fmt.Errorf("NRI CreateContainer: %w", err)
	}
	n.applyUpdates(ctx, c.ID, rsp.GetUpdate())
	n.evict(ctx, c.ID, rsp.GetEvict())
	adj := adjustmentOf(rsp.GetAdjust(), pluginList(plugins))
	if adj != nil {
		n.log.Info("NRI adjusted container", "pod", sb.ID, "container", c.ID, "by", adj.By)
	}
	return adj, nil
}

// validate is the builtin validator: it checks the adjustment of the
// container being created against aurae-cri's rules.
func (n *NRI) validate(_ context.Context, req *api.ValidateContainerAdjustmentRequest) error {
	id := req.GetContainer().GetId()
	n.mu.Lock()
	cr := n.creating[id]
	n.mu.Unlock()
	if cr == nil {
		return fmt.Errorf("container %s is not being created", id)
	}
	plugins := map[string]bool{}
	for _, p := range req.GetPlugins() {
		if p.GetName() != validatorName {
			plugins[p.GetIndex()+"-"+p.GetName()] = true
		}
	}
	err := checkAdjustment(id, req.GetAdjust(), req.GetOwners(), cr.rules)
	for _, u := range req.GetUpdate() {
		if err == nil {
			err = checkResources(u.GetLinux().GetResources(), func(string) string { return "" })
		}
	}
	n.mu.Lock()
	cr.refused, cr.plugins = err, plugins
	n.mu.Unlock()
	if err != nil {
		n.log.Warn("NRI adjustment refused", "pod", req.GetPod().GetId(), "container", id, "error", err)
	}
	return err
}

// PostCreateContainer, StartContainer, PostStartContainer,
// PostUpdateContainer and RemoveContainer tell plugins; their errors are
// logged (the container's fate is decided).
func (n *NRI) PostCreateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) {
	err := n.adapt.PostCreateContainer(ctx, &api.PostCreateContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)})
	n.logged("PostCreateContainer", c, err)
}

// StartContainer tells plugins of a container about to start; an error
// fails the start.
func (n *NRI) StartContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) error {
	if err := n.adapt.StartContainer(ctx, &api.StartContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)}); err != nil {
		return fmt.Errorf("NRI StartContainer: %w", err)
	}
	return nil
}

func (n *NRI) PostStartContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) {
	err := n.adapt.PostStartContainer(ctx, &api.PostStartContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)})
	n.logged("PostStartContainer", c, err)
}

// UpdateContainer asks plugins about new resources of a container: the
// resources to set (theirs over res), after checking them.
func (n *NRI) UpdateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container, res *specs.LinuxResources) (*specs.LinuxResources, error) {
	rsp, err := n.adapt.UpdateContainer(ctx, &api.UpdateContainerRequest{
		Pod: podOf(sb), Container: containerWithSpec(c), LinuxResources: api.FromOCILinuxResources(res, nil),
	})
	if err != nil {
		return nil, fmt.Errorf("NRI UpdateContainer: %w", err)
	}
	out := res
	var others []*api.ContainerUpdate
	for _, u := range rsp.GetUpdate() {
		if u.GetContainerId() != c.ID {
			others = append(others, u)
			continue
		}
		if err := checkResources(u.GetLinux().GetResources(), func(string) string { return "" }); err != nil {
			return nil, err
		}
		out = mergeResources(res, u.GetLinux().GetResources())
	}
	n.applyUpdates(ctx, c.ID, others)
	n.evict(ctx, c.ID, rsp.GetEvict())
	return out, nil
}

func (n *NRI) PostUpdateContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) {
	err := n.adapt.PostUpdateContainer(ctx, &api.PostUpdateContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)})
	n.logged("PostUpdateContainer", c, err)
}

// StopContainer tells plugins of a container that stopped (stopped by a
// request, or exited by itself), once.
func (n *NRI) StopContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) {
	rsp, err := n.adapt.StopContainer(ctx, &api.StopContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)})
	n.logged("StopContainer", c, err)
	if updates := rsp.GetUpdate(); len(updates) > 0 {
		// Not under the caller's lock of the stopped container: another
		// container's update takes that one's.
		go func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			n.applyUpdates(ctx, c.ID, updates)
		}()
	}
}

func (n *NRI) RemoveContainer(ctx context.Context, sb sandbox.Sandbox, c sandbox.Container) {
	err := n.adapt.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: podOf(sb), Container: containerWithSpec(c)})
	n.logged("RemoveContainer", c, err)
}

func (n *NRI) logged(event string, c sandbox.Container, err error) {
	if err != nil {
		n.log.Warn("NRI "+event, "pod", c.SandboxID, "container", c.ID, "error", err)
	}
}

// sync gives a plugin that connects the pods and containers there are,
// and applies the updates it answers with.
func (n *NRI) sync(ctx context.Context, cb adaptation.SyncCB) error {
	var pods []*api.PodSandbox
	for _, sb := range n.state.Sandboxes() {
		pods = append(pods, podOf(sb))
	}
	var ctrs []*api.Container
	for _, c := range n.state.Containers() {
		if !c.Status.Removing {
			ctrs = append(ctrs, containerWithSpec(c))
		}
	}
	updates, err := cb(ctx, pods, ctrs)
	if err != nil {
		return err
	}
	n.applyUpdates(ctx, "", updates)
	return nil
}

// update applies a plugin's unsolicited updates; it answers the failed
// ones.
func (n *NRI) update(ctx context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	return n.applyUpdates(ctx, "", updates), nil
}

// applyUpdates sets the resources plugins ask of containers other than
// self; what fails is logged and answered.
func (n *NRI) applyUpdates(ctx context.Context, self string, updates []*api.ContainerUpdate) []*api.ContainerUpdate {
	rt := n.runtime()
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		id := u.GetContainerId()
		if id == self {
			continue
		}
		res := u.GetLinux().GetResources()
		err := checkResources(res, func(string) string { return "" })
		if err == nil && rt == nil {
			err = fmt.Errorf("NRI is not started: %w", errdefs.ErrUnavailable)
		}
		if err == nil {
			err = rt.SetContainerResources(ctx, id, res.ToOCI())
		}
		if err != nil {
			failed = append(failed, u)
			if !u.GetIgnoreFailure() || !errors.Is(err, errdefs.ErrNotFound) {
				n.log.Warn("NRI container update failed", "container", id, "error", err)
			}
			continue
		}
		n.log.Info("NRI updated container resources", "container", id)
	}
	return failed
}

func (n *NRI) evict(ctx context.Context, self string, evictions []*api.ContainerEviction) {
	rt := n.runtime()
	for _, e := range evictions {
		if e.GetContainerId() == self || rt == nil {
			continue
		}
		if err := rt.EvictContainer(ctx, e.GetContainerId(), e.GetReason()); err != nil {
			n.log.Warn("NRI eviction failed", "container", e.GetContainerId(), "reason", e.GetReason(), "error", err)
			continue
		}
		n.log.Info("NRI evicted container", "container", e.GetContainerId(), "reason", e.GetReason())
	}
}

// mergeResources sets what NRI's resources set over cur's.
func mergeResources(cur *specs.LinuxResources, r *api.LinuxResources) *specs.LinuxResources {
	return ocispec.MergeResources(cur, r.ToOCI())
}

// Plugins is how many plugins are connected and synchronized, aurae-cri's
// own validator included.
func (n *NRI) Plugins() int { return int(n.plugins.Load()) }

// pluginCount follows the number of plugins (NRI's Metrics).
type pluginCount struct{ n *NRI }

func (pluginCount) RecordPluginInvocation(string, string, error)                               {}
func (pluginCount) RecordPluginLatency(string, string, time.Duration)                          {}
func (pluginCount) RecordPluginAdjustments(string, string, *api.ContainerAdjustment, int, int) {}
func (p pluginCount) UpdatePluginCount(count int) {
	if old := p.n.plugins.Swap(int32(min(count, 1<<30))); int(old) != count { //nolint:gosec // bounded
		p.n.log.Info("NRI plugins connected", "plugins", count)
	}
}
