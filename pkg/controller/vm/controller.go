// Package vm runs VM-isolated pods (RuntimeClass handler aurae-vm, alias
// kata): one microVM per pod, started by the host auraed's VmService inside
// the pod's network namespace, whose guest auraed runs the pod's containers
// through the same PodService a native pod uses.
//
// A VM pod is
//
//	host auraed   PodService pod (network POD): the pinned netns CNI sets
//	              up and the pod cgroup; no container runs in it
//	              VmService VM in that netns: tap0 mirrored with CNI's eth0
//	              by tc (as Kata does), <dir>/shared shared by virtio-fs
//	guest auraed  PodService pod (network NODE: the guest is the pod's
//	              network), the containers, their conmon and a log file
//	              private to the guest per container
//
// Container rootfs mounts and volume sources are bind-mounted under the
// shared dir, so the guest sees them at /run/aurae/shared/…; the kubelet's
// log directories are not: a writer per container on the host follows the
// guest's log (PodService.ContainerLog) and writes the CRI log file
// (logwriter.go).
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/internal/fanout"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
)

// Handlers are the RuntimeClass handlers served by this controller.
var Handlers = []string{"aurae-vm", "kata"}

// Kata's annotations that size a pod's VM, honoured the same way where
// Config.AllowedAnnotations lets them in.
const (
	AnnotationVCPUs  = "io.katacontainers.config.hypervisor.default_vcpus"
	AnnotationMemMiB = "io.katacontainers.config.hypervisor.default_memory"
	kataConfigPrefix = "io.katacontainers.config."
)

const (
	shareTag = "aurae-shared"
	// guestShared is where the guest mounts the shared dir.
	guestShared = "/run/aurae/shared"
	tapName     = "tap0"
	podIface    = "eth0"
)

// Config configures the VM controller.
type Config struct {
	// Host is the host auraed (PodService and VmService).
	Host grpc.ClientConnInterface
	// Kernel and Initramfs are the guest image (make vm-image).
	Kernel, Initramfs string
	// StateDir holds one dir per VM pod (record, shared dir).
	StateDir string
	// VCPUs and MemMiB size a VM whose pod asks for nothing (defaults 1
	// and 256); OverheadMiB is added to what a pod asks for.
	VCPUs       uint32
	MemMiB      uint32
	OverheadMiB uint32
	// MaxMemMiB bounds a VM's memory (0: no bound).
	MaxMemMiB uint32
	// AllowedAnnotations are the Kata sizing annotations pods may use.
	AllowedAnnotations map[string]bool
	// BootTimeout bounds the wait for the guest auraed (default 2 min).
	BootTimeout time.Duration
	Logger      *slog.Logger
	// GuestReconnected, when set, is called each time the connection to
	// a guest auraed becomes ready again after it had been (metrics).
	GuestReconnected func()
}

// Controller implements controller.Controller for VM pods.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	host  *native.Controller
	vms   vmsv0.VmServiceClient
	mu    sync.Mutex
	pods  map[string]*vmPod
	ctrs  map[string]string // container id → pod id
	locks sync.Map          // pod id → *sync.Mutex
	// events fans the guests' container events out to Events' subscribers;
	// one that falls behind, or may have missed events (a guest's stream
	// was lost), is dropped and resyncs.
	events fanout.Hub[controller.ContainerEvent]
	// recMu serializes the writes of pods' records.
	recMu sync.Mutex
	// writers are the containers' host-side log writers (under mu);
	// closed: Close ran, no writer starts.
	writers map[string]*logWriter
	closed  bool
}

var _ controller.Controller = (*Controller)(nil)

// New returns the VM controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Host == nil || cfg.Kernel == "" || cfg.StateDir == "" {
		return nil, fmt.Errorf("vm controller: host, kernel and state dir are required")
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = 1
	}
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 256
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("vm controller: %w", err)
	}
	return &Controller{
		cfg:     cfg,
		log:     cfg.Logger,
		host:    native.New(cfg.Host),
		vms:     vmsv0.NewVmServiceClient(cfg.Host),
		pods:    map[string]*vmPod{},
		ctrs:    map[string]string{},
		writers: map[string]*logWriter{},
	}, nil
}

// record is what survives an aurae-cri restart, in <dir>/pod.json; beside
// it, logs/<container>.json are the log writers' positions.
type record struct {
	VMID string `json:"vm_id"`
	// Pod is the guest pod's spec.
	Pod controller.PodSpec `json:"pod"`
	// Containers are the pod's containers as the host made them: after a
	// restart only these are adopted, whatever the guest claims.
	Containers []string `json:"containers,omitempty"`
}

// vmPod is a VM pod known to this process.
type vmPod struct {
	id, dir string
	rec     record
	guest   *guest // nil while the VM is down
}

func (c *Controller) podDir(id string) string  { return filepath.Join(c.cfg.StateDir, id) }
func sharedDir(dir string) string              { return filepath.Join(dir, "shared") }
func vmID(podID string) string                 { return "pod-" + short(podID) }
func (c *Controller) lockPod(id string) func() { return lockOf(&c.locks, id) }

func short(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}

func lockOf(m *sync.Map, id string) func() {
	v, _ := m.LoadOrStore(id, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

func (c *Controller) pod(id string) (*vmPod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pods[id]
	if !ok {
		return nil, fmt.Errorf("vm pod %s: %w", id, errdefs.ErrNotFound)
	}
	return p, nil
}

// size is the VM's vcpus and memory for a pod, as Kata sizes its VMs: the
// defaults (or Kata's annotations, where --vm-allowed-annotations lets
// them in) plus what the pod's containers ask for in sum (CPU quota
// rounded up to whole vcpus, at most the host's CPUs; memory limit), plus
// the overhead. A Kata annotation that is not allowed, not a number, or
// out of bounds (vcpus above the host's CPUs, memory in all above
// MaxMemMiB) is refused, as is any other io.katacontainers.config
// annotation: none is honoured, and none is dropped silently.
func (c *Controller) size(pod controller.PodSpec) (uint32, uint32, error) {
	hostCPUs := uint64(runtime.NumCPU())
	vcpus, mem := uint64(c.cfg.VCPUs), uint64(c.cfg.MemMiB)
	for k, v := range pod.Annotations {
		if !strings.HasPrefix(k, kataConfigPrefix) {
			continue
		}
		if k != AnnotationVCPUs && k != AnnotationMemMiB {
			return 0, 0, fmt.Errorf("annotation %s is not supported by VM pods: %w", k, errdefs.ErrInvalidArgument)
		}
		if !c.cfg.AllowedAnnotations[k] {
			return 0, 0, fmt.Errorf("annotation %s is not allowed (--vm-allowed-annotations): %w", k, errdefs.ErrInvalidArgument)
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return 0, 0, fmt.Errorf("annotation %s=%q is not a positive number: %w", k, v, errdefs.ErrInvalidArgument)
		}
		if k == AnnotationVCPUs {
			if n > hostCPUs {
				return 0, 0, fmt.Errorf("annotation %s=%d asks for more vcpus than the host's %d: %w", k, n, hostCPUs, errdefs.ErrInvalidArgument)
			}
			vcpus = n
		} else {
			mem = n
		}
	}
	res := pod.Resources
	if q, p := res.CPUQuota, res.CPUPeriod; q > 0 && p > 0 {
		vcpus += uint64((q + p - 1) / p)
	}
	if l := res.MemoryLimitBytes; l > 0 {
		mem += uint64(l+(1<<20)-1) >> 20
	}
	vcpus = min(vcpus, hostCPUs)
	mem += uint64(c.cfg.OverheadMiB)
	if max := uint64(c.cfg.MaxMemMiB); max > 0 && mem > max {
		return 0, 0, fmt.Errorf("the VM would need %d MiB, more than the %d MiB a VM pod may have (--vm-max-memory-mib): %w", mem, max, errdefs.ErrInvalidArgument)
	}
	return uint32(vcpus), uint32(mem), nil
}

// CreatePod allocates the host pod (netns, cgroup), boots the VM in its
// netns, dials the guest auraed, mounts the shared dir in the guest and
// allocates the pod there. The network is wired in StartPod.
func (c *Controller) CreatePod(ctx context.Context, spec controller.PodSpec) (_ controller.Pod, retErr error) {
	if spec.Network == controller.NamespaceNode {
		return controller.Pod{}, fmt.Errorf("a VM pod cannot share the node's network: %w", errdefs.ErrInvalidArgument)
	}
	if spec.UserNamespace != nil {
		// The VM is the pod's boundary; its handler reports no user
		// namespace support (Status), so the kubelet does not ask.
		return controller.Pod{}, fmt.Errorf("user namespaces are not supported in VM pods (handler %q): %w", spec.RuntimeHandler, errdefs.ErrInvalidArgument)
	}
	vcpus, mem, err := c.size(spec)
	if err != nil {
		return controller.Pod{}, err
	}
	id := spec.ID
	unlock := c.lockPod(id)
	defer unlock()
	t0 := time.Now()
	log := c.log.With("pod", id)
	hostPod, err := c.host.CreatePod(ctx, spec)
	if err != nil {
		return controller.Pod{}, fmt.Errorf("host pod: %w", err)
	}
	defer func() {
		if retErr != nil {
			cctx, cancel := cleanupContext()
			defer cancel()
			if err := c.removePod(cctx, id); err != nil {
				log.Error("roll back vm pod", "error", err)
			}
		}
	}()
	dir := c.podDir(id)
	if err := os.MkdirAll(sharedDir(dir), 0o700); err != nil {
		return controller.Pod{}, err
	}
	if err := makeSharedMount(sharedDir(dir)); err != nil {
		return controller.Pod{}, err
	}
	rec := record{VMID: vmID(id), Pod: guestPodSpec(spec)}
	if err := writeJSON(filepath.Join(dir, "pod.json"), rec); err != nil {
		return controller.Pod{}, err
	}
	p := &vmPod{id: id, dir: dir, rec: rec}
	c.mu.Lock()
	c.pods[id] = p
	c.mu.Unlock()

	if _, err := c.vms.Create(ctx, &vmsv0.VmServiceCreateRequest{Machine: &vmsv0.VirtualMachine{
		Id:            rec.VMID,
		VcpuCount:     vcpus,
		MemSizeMb:     mem,
		KernelImgPath: c.cfg.Kernel,
		// The guest's init mounts the share before its auraed answers.
		KernelArgs:           []string{"quiet", "aurae.virtiofs=" + shareTag + ":" + guestShared},
		NetworkNamespacePath: hostPod.NetNSPath,
		CgroupPath:           hostPod.CgroupPath,
		NetworkInterfaces:    []*vmsv0.NetworkInterface{{TapName: tapName}},
		SharedDirectories:    []*vmsv0.SharedDirectory{{Tag: shareTag, HostPath: sharedDir(dir), IsWriteable: true}},
	}}); err != nil {
		return controller.Pod{}, fmt.Errorf("create vm: %w", err)
	}
	started, err := c.vms.Start(ctx, &vmsv0.VmServiceStartRequest{VmId: rec.VMID})
	if err != nil {
		return controller.Pod{}, fmt.Errorf("start vm: %w", err)
	}
	tBoot := time.Now()
	g, err := dialGuest(ctx, started.GetAuraedAddress(), c.cfg.BootTimeout)
	if err != nil {
		return controller.Pod{}, err
	}
	c.setGuest(p, g)
	tDial := time.Now()
	if _, err := g.pods.CreatePod(ctx, rec.Pod); err != nil {
		return controller.Pod{}, fmt.Errorf("guest pod: %w", err)
	}
	log.Info("vm pod running", "vm", rec.VMID, "vcpus", vcpus, "mem_mib", mem,
		"vm_start", tBoot.Sub(t0).Round(time.Millisecond).String(),
		"guest_dial", tDial.Sub(tBoot).Round(time.Millisecond).String(),
		"total", time.Since(t0).Round(time.Millisecond).String())
	return hostPod, nil
}

// guestPodSpec is the pod as the guest runs it: in the guest's own
// network namespace, under the guest's cgroup root.
func guestPodSpec(spec controller.PodSpec) controller.PodSpec {
	g := spec
	g.CgroupParent = "pods"
	g.Network = controller.NamespaceNode
	g.Resources = controller.Resources{}
	return g
}

// StopPod powers the VM off; the host pod (and its netns) stay until
// RemovePod.
func (c *Controller) StopPod(ctx context.Context, podID string) error {
	unlock := c.lockPod(podID)
	defer unlock()
	return c.stopVM(ctx, podID)
}

func (c *Controller) stopVM(ctx context.Context, podID string) error {
	c.mu.Lock()
	p := c.pods[podID]
	var g *guest
	if p != nil {
		g, p.guest = p.guest, nil
	}
	c.mu.Unlock()
	if g != nil {
		_ = g.Close()
	}
	_, err := c.vms.Stop(ctx, &vmsv0.VmServiceStopRequest{VmId: vmID(podID)})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("stop vm: %w", err)
	}
	return nil
}

// RemovePod frees the VM, the shared dir's mounts and the host pod.
func (c *Controller) RemovePod(ctx context.Context, podID string) error {
	unlock := c.lockPod(podID)
	defer unlock()
	return c.removePod(ctx, podID)
}

func (c *Controller) removePod(ctx context.Context, podID string) error {
	c.stopLogWriters(podID, "")
	var errs []error
	if err := c.stopVM(ctx, podID); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.vms.Free(ctx, &vmsv0.VmServiceFreeRequest{VmId: vmID(podID)}); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("free vm: %w", err))
	}
	dir := c.podDir(podID)
	if err := unmountUnder(dir, sharedDir(dir)); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := c.host.RemovePod(ctx, podID); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("host pod: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.pods, podID)
	for cid, pid := range c.ctrs {
		if pid == podID {
			delete(c.ctrs, cid)
		}
	}
	c.mu.Unlock()
	return nil
}

// ListPods re-adopts the VM pods of the state dir (after a restart: the
// VmService re-adopted the VMs; their guests are dialed again) and lists
// the pods whose VM runs, with their containers.
func (c *Controller) ListPods(ctx context.Context) ([]controller.PodState, error) {
	ents, err := os.ReadDir(c.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	vms, err := c.vms.List(ctx, &vmsv0.VmServiceListRequest{})
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	addr := map[string]string{}
	for _, m := range vms.GetMachines() {
		if m.GetState() == vmsv0.VmState_VM_STATE_RUNNING {
			addr[m.GetId()] = m.GetAuraedAddress()
		}
	}
	var out []controller.PodState
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		id := e.Name()
		st, err := c.adopt(ctx, id, addr)
		if err != nil {
			c.log.Warn("vm pod not adopted", "pod", id, "error", err)
			continue
		}
		if st != nil {
			out = append(out, *st)
		}
	}
	return out, nil
}

// adopt loads one pod's record and, when its VM runs, dials its guest and
// answers the guest pod's status.
func (c *Controller) adopt(ctx context.Context, id string, addr map[string]string) (*controller.PodState, error) {
	unlock := c.lockPod(id)
	defer unlock()
	dir := c.podDir(id)
	var rec record
	if err := readJSON(filepath.Join(dir, "pod.json"), &rec); err != nil {
		return nil, err
	}
	c.mu.Lock()
	p, ok := c.pods[id]
	if !ok {
		p = &vmPod{id: id, dir: dir, rec: rec}
		c.pods[id] = p
	}
	g := p.guest
	c.mu.Unlock()
	a, running := addr[rec.VMID]
	if !running {
		return nil, nil
	}
	if g == nil {
		var err error
		if g, err = dialGuest(ctx, a, 30*time.Second); err != nil {
			return nil, err
		}
		c.setGuest(p, g)
	}
	pods, err := g.pods.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	for _, ps := range pods {
		if ps.ID != id {
			continue
		}
		// The guest is not trusted: only containers the host recorded are
		// adopted.
		out := controller.PodState{ID: id}
		c.mu.Lock()
		for _, cs := range ps.Containers {
			if !slices.Contains(rec.Containers, cs.ID) || cs.PodID != id {
				c.log.Warn("vm pod's guest reports a container the host did not make; ignored", "pod", id, "container", cs.ID)
				continue
			}
			c.ctrs[cs.ID] = id
			out.Containers = append(out.Containers, cs)
		}
		c.mu.Unlock()
		for _, cs := range out.Containers {
			c.resumeLogWriter(p, cs.ID)
		}
		return &out, nil
	}
	return nil, nil
}

// recordContainer adds (or removes) a container id in the pod's record,
// before the container exists (or after it is gone).
func (c *Controller) recordContainer(p *vmPod, cid string, add bool) error {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	c.mu.Lock()
	rec := p.rec
	rec.Containers = slices.DeleteFunc(slices.Clone(rec.Containers), func(x string) bool { return x == cid })
	if add {
		rec.Containers = append(rec.Containers, cid)
	}
	c.mu.Unlock()
	if err := writeJSON(filepath.Join(p.dir, "pod.json"), rec); err != nil {
		return err
	}
	c.mu.Lock()
	p.rec = rec
	c.mu.Unlock()
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// cleanupContext is for undoing work after a failure.
func cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}
