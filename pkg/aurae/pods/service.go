// Package pods serves the Aurae PodService: a pod is a cell (a cgroup) whose
// network, IPC and UTS namespaces (and PID, when shared) are pinned by bind
// mounts under the state dir; its containers are OCI bundles run by runc
// under conmon, one monitor per container, which outlives auraed.
//
// Cgroups: a pod's is <root>/<cgroup parent or "pods">/<pod id>; its
// containers' are below it (<pod>/<ctr id>, made by runc) and so is the
// leaf <pod>/.infra holding the pid namespace holder and the monitors.
//
// State dir layout:
//
//	pods.db                 bbolt: pods and containers
//	pods/<pod>/ns/{net,ipc,uts,pid}   pinned namespaces
//	pods/<pod>/{hostname,resolv.conf,hosts}
//	containers/<ctr>/       the OCI bundle, conmon's pid files and fifos
//	exits/<ctr>             conmon's exit file (the exit code)
//	attach/<ctr>/           conmon's attach socket
//	runc/                   the runtime's --root
package pods

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/holder"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/signals"
)

// Config configures the service.
type Config struct {
	// StateDir holds pods.db, bundles, pinned namespaces and exit files.
	StateDir string
	// CgroupRoot is the cgroup below which pods live: a pod's cgroup is
	// <CgroupRoot>/<cgroup parent or "pods">/<pod id>. Default "aurae"; "/"
	// puts pods right below their cgroup parent (e.g. below the kubelet's
	// cgroupfs pod cgroups, so that its pod limits hold).
	CgroupRoot string
	// Runtime is the OCI runtime binary (default DefaultRuntime(): the
	// pinned runc when installed, else "runc" on PATH).
	Runtime string
	// AllowOldRuntime starts with a runtime older than MinRuntimeVersion
	// (with a warning) instead of refusing to.
	AllowOldRuntime bool
	// Conmon is the monitor binary (default DefaultConmon(): the pinned
	// conmon when installed, else "conmon" on PATH).
	Conmon string
	// CRIU is the CRIU binary the OCI runtime uses for checkpoints and
	// restores (default PinnedCRIU).
	CRIU string
	// CgroupDriver makes pods' cgroups: cgroup.Cgroupfs (default) or
	// cgroup.Systemd (transient units; see cgroup_driver.go).
	CgroupDriver cgroup.Driver
	Logger       *slog.Logger
	// Freed, when set, is called after every successful Free, before it
	// answers (also for an unknown pod, so that a retry finishes what
	// failed): what others made for the pod (runtime.Core's rootfs
	// snapshots of a RunCell pod) is released there. Its error fails the
	// Free.
	Freed func(ctx context.Context, podID string) error
}

var _ podsv0.PodServiceServer = (*Service)(nil)

// Service implements podsv0.PodServiceServer.
type Service struct {
	podsv0.UnimplementedPodServiceServer

	cfg      Config
	log      *slog.Logger
	store    *store
	runtime  string // absolute path
	conmon   string // absolute path
	criu     criuState
	closed   atomic.Bool
	units    cgroup.Units  // systemd's units, under the systemd driver
	closing  int           // an eventfd, signalled by Close to stop watchers
	closedCh chan struct{} // closed by Close
	events   eventHub
	wg       sync.WaitGroup // watchers

	// oomFloor is auraed's own oom_score_adj: no container's may be lower.
	oomFloor int32
	// specVersion is the runtime-spec version the OCI runtime reads.
	specVersion string
	// fifoStart: the runtime is runc, whose start auraed does itself
	// (startFromFifo).
	fifoStart bool

	mu   sync.RWMutex
	pods map[string]*pod
	ctrs map[string]*container

	// beforeRuntimeStart, set by tests only, runs in Start between the
	// runtime's create and start: where a crash leaves a container created.
	beforeRuntimeStart func(id string)
	// afterMonitor, set by tests only, runs in Start once conmon has
	// created the container, before its pid is recorded.
	afterMonitor func(id string)
	// placeFault, set by tests only, fails the move of a container's
	// conmon into its pod's cgroup when it returns an error.
	placeFault func(conmonPid int) error
}

// NewService opens the state and reconciles it with the machine: pods whose
// cgroup or directory still exists are served again; containers whose
// monitor lives are watched again, those that exited meanwhile get the exit
// code conmon wrote.
func NewService(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("pods: state dir is empty: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "aurae"
	}
	// "/" becomes "": the hierarchy root.
	cfg.CgroupRoot = strings.Trim(path.Clean("/"+cfg.CgroupRoot), "/")
	if cfg.Runtime == "" {
		cfg.Runtime = DefaultRuntime()
	}
	if cfg.CgroupDriver == "" {
		cfg.CgroupDriver = cgroup.Cgroupfs
	}
	if cfg.CgroupDriver == cgroup.Systemd {
		if _, err := cgroup.ChooseDriver(string(cgroup.Systemd), cgroup.ThisHost()); err != nil {
			return nil, fmt.Errorf("pods: %w: %w", err, errdefs.ErrFailedPrecondition)
		}
	}
	conmonConfigured := cfg.Conmon != ""
	if !conmonConfigured {
		cfg.Conmon = DefaultConmon()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	rt, err := exec.LookPath(cfg.Runtime)
	if err != nil {
		return nil, fmt.Errorf("pods: OCI runtime %q: %w: %w", cfg.Runtime, err, errdefs.ErrFailedPrecondition)
	}
	cm, err := exec.LookPath(cfg.Conmon)
	if err != nil {
		return nil, fmt.Errorf("pods: monitor %q: %w: %w", cfg.Conmon, err, errdefs.ErrFailedPrecondition)
	}
	if rt, err = filepath.Abs(rt); err != nil {
		return nil, err
	}
	if cm, err = filepath.Abs(cm); err != nil {
		return nil, err
	}
	logConmon(ctx, cfg.Logger, conmonConfigured, cm)
	if hb := holderBinary(); hb == selfExe {
		cfg.Logger.InfoContext(ctx, "pod namespace holder", "path", hb, "reason", holder.BinaryName+" is not installed beside this binary, root-owned and only root-writable")
	} else {
		cfg.Logger.InfoContext(ctx, "pod namespace holder", "path", hb)
	}
	specVersion, runtimeName, err := checkRuntime(ctx, cfg.Logger, rt, cfg.AllowOldRuntime)
	if err != nil {
		return nil, fmt.Errorf("pods: %w", err)
	}
	for _, d := range []string{"pods", "containers", "exits", "attach", "runc", "trash"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("pods: state dir: %w", err)
		}
	}
	closing, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("pods: %w", err)
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		unix.Close(closing)
		return nil, err
	}
	floor, err := linux.OwnOOMScoreAdj()
	if err != nil {
		unix.Close(closing)
		_ = st.close()
		return nil, fmt.Errorf("pods: own oom_score_adj: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger, store: st, runtime: rt, conmon: cm, closing: closing, closedCh: make(chan struct{}), oomFloor: int32(floor), specVersion: specVersion, fifoStart: runtimeName == "runc", pods: map[string]*pod{}, ctrs: map[string]*container{}}
	if err := s.recover(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("recover pods: %w", err)
	}
	return s, nil
}

// Close stops watching containers and releases the state file. Pods,
// containers and their monitors outlive the service.
func (s *Service) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.closedCh)
	// The counter stays non-zero: every watcher sees it.
	_, _ = unix.Write(s.closing, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	s.wg.Wait()
	unix.Close(s.closing)
	return s.store.close()
}

func (s *Service) podDir(id string) string    { return filepath.Join(s.cfg.StateDir, "pods", id) }
func (s *Service) bundleDir(id string) string { return filepath.Join(s.cfg.StateDir, "containers", id) }

// trashDir holds the files of removed containers until they are removed
// (toTrash, emptyTrash).
func (s *Service) trashDir() string           { return filepath.Join(s.cfg.StateDir, "trash") }
func (s *Service) exitFile(id string) string  { return filepath.Join(s.cfg.StateDir, "exits", id) }
func (s *Service) attachDir(id string) string { return filepath.Join(s.cfg.StateDir, "attach", id) }
func (s *Service) runcRoot() string           { return filepath.Join(s.cfg.StateDir, "runc") }

func (s *Service) podCgroup(spec *podsv0.Pod) string {
	if absoluteParent(spec) {
		return strings.Trim(spec.GetCgroupParent(), "/") + "/" + spec.GetId()
	}
	parent := strings.Trim(spec.GetCgroupParent(), "/")
	if parent == "" {
		parent = "pods"
	}
	if s.cfg.CgroupRoot == "" {
		return parent + "/" + spec.GetId()
	}
	return s.cfg.CgroupRoot + "/" + parent + "/" + spec.GetId()
}

// absoluteParent: the pod's cgroup parent is from the hierarchies' roots
// (the kubelet's pod cgroup), not below auraed's cgroup root.
func absoluteParent(spec *podsv0.Pod) bool {
	return strings.HasPrefix(spec.GetCgroupParent(), "/") && strings.Trim(spec.GetCgroupParent(), "/") != ""
}

func (s *Service) lookupPod(id string) (*pod, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.pods[id]
	if !ok || p.reserved {
		return nil, fmt.Errorf("pod %q: %w", id, errdefs.ErrNotFound)
	}
	return p, nil
}

func (s *Service) lookupContainer(id string) (*container, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.ctrs[id]
	if !ok || c.reserved() {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// Allocate implements PodService.Allocate.
func (s *Service) Allocate(ctx context.Context, req *podsv0.AllocateRequest) (*podsv0.AllocateResponse, error) {
	resp, err := s.allocate(ctx, req.GetPod())
	return resp, errmap.ToGRPC(err)
}

// Free implements PodService.Free.
func (s *Service) Free(ctx context.Context, req *podsv0.FreeRequest) (*podsv0.FreeResponse, error) {
	if err := validID("pod", req.GetPodId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if err := s.free(ctx, req.GetPodId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if s.cfg.Freed != nil {
		if err := s.cfg.Freed(ctx, req.GetPodId()); err != nil {
			return nil, errmap.ToGRPC(fmt.Errorf("free pod %q: %w", req.GetPodId(), err))
		}
	}
	return &podsv0.FreeResponse{}, nil
}

// Start implements PodService.Start.
func (s *Service) Start(ctx context.Context, req *podsv0.StartRequest) (*podsv0.StartResponse, error) {
	resp, err := s.start(ctx, req.GetPodId(), req.GetContainer())
	return resp, errmap.ToGRPC(err)
}

// Stop implements PodService.Stop.
func (s *Service) Stop(ctx context.Context, req *podsv0.StopRequest) (*podsv0.StopResponse, error) {
	if err := validID("container", req.GetContainerId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if req.GetTimeoutSeconds() < 0 {
		return nil, errmap.ToGRPC(fmt.Errorf("timeout %d s is negative: %w", req.GetTimeoutSeconds(), errdefs.ErrInvalidArgument))
	}
	sig := syscall.SIGTERM
	if name := req.GetSignal(); name != "" {
		// Names only, in their canonical spelling: a fixed list.
		if c, err := signals.Canonical(name); err != nil || c != name {
			return nil, errmap.ToGRPC(fmt.Errorf("signal %q is not a signal name such as SIGQUIT: %w", name, errdefs.ErrInvalidArgument))
		}
		sig, _ = signals.Parse(name)
	}
	if err := s.stop(ctx, req.GetContainerId(), req.GetTimeoutSeconds(), sig); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.StopResponse{}, nil
}

// RemoveContainer implements PodService.RemoveContainer.
func (s *Service) RemoveContainer(ctx context.Context, req *podsv0.RemoveContainerRequest) (*podsv0.RemoveContainerResponse, error) {
	if err := validID("container", req.GetContainerId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if err := s.removeContainer(ctx, req.GetContainerId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.RemoveContainerResponse{}, nil
}

// ContainerStatus implements PodService.ContainerStatus, from memory.
func (s *Service) ContainerStatus(ctx context.Context, req *podsv0.ContainerStatusRequest) (*podsv0.ContainerStatusResponse, error) {
	if err := validID("container", req.GetContainerId()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	c, err := s.lookupContainer(req.GetContainerId())
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &podsv0.ContainerStatusResponse{Status: c.status()}, nil
}

// ExecSync implements PodService.ExecSync.
func (s *Service) ExecSync(ctx context.Context, req *podsv0.ExecSyncRequest) (*podsv0.ExecSyncResponse, error) {
	resp, err := s.execSync(ctx, req)
	return resp, errmap.ToGRPC(err)
}

// ContainerStats implements PodService.ContainerStats.
func (s *Service) ContainerStats(ctx context.Context, req *podsv0.ContainerStatsRequest) (*podsv0.ContainerStatsResponse, error) {
	resp, err := s.stats(ctx, req.GetContainerId())
	return resp, errmap.ToGRPC(err)
}
