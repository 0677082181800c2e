package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

// containerDir is a container's dir under the shared dir (host side) and
// its path in the guest.
func containerDir(podDir, cid string) (host, inGuest string) {
	rel := filepath.Join("c", short(cid))
	return filepath.Join(sharedDir(podDir), rel), filepath.Join(guestShared, rel)
}

// PrepareContainer shares the container's rootfs and the sources of its
// bind mounts into the VM (bind mounts under the pod's shared dir, which
// the guest sees under /run/aurae/shared) and answers the guest pod's
// facts with the guest's paths of them. The log dir is not shared: the
// host writes the log (StartContainer).
func (c *Controller) PrepareContainer(ctx context.Context, podID string, files controller.ContainerFiles) (_ ocispec.PodFacts, retErr error) {
	p, err := c.pod(podID)
	if err != nil {
		return ocispec.PodFacts{}, err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		return ocispec.PodFacts{}, fmt.Errorf("vm pod %s: the VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	hostDir, guestDir := containerDir(p.dir, files.ID)
	// Recorded first: a restart finds what to undo, and adopts only
	// containers the host made.
	if err := c.recordContainer(p, files.ID, true); err != nil {
		return ocispec.PodFacts{}, err
	}
	defer func() {
		if retErr != nil {
			_ = unmountUnder(p.dir, hostDir)
			_ = os.RemoveAll(hostDir)
			_ = c.recordContainer(p, files.ID, false)
		}
	}()
	shared := sharedDir(p.dir)
	rel, err := filepath.Rel(shared, hostDir)
	if err != nil {
		return ocispec.PodFacts{}, err
	}
	if err := shareInto(shared, filepath.Join(rel, "rootfs"), files.Rootfs, false); err != nil {
		return ocispec.PodFacts{}, fmt.Errorf("share rootfs: %w", err)
	}
	// One share per source, read-only unless a mount of it is writable.
	readonly := map[string]bool{}
	var order []string
	for _, m := range files.Mounts {
		ro, seen := readonly[m.Source]
		if !seen {
			order = append(order, m.Source)
		}
		readonly[m.Source] = (ro || !seen) && m.Readonly
	}
	sources := make(map[string]string, len(order))
	for i, src := range order {
		name := "m" + strconv.Itoa(i)
		if err := shareInto(shared, filepath.Join(rel, name), src, readonly[src]); err != nil {
			return ocispec.PodFacts{}, fmt.Errorf("share mount source %s: %w", src, err)
		}
		sources[src] = filepath.Join(guestDir, name)
	}
	facts, err := g.pods.PrepareContainer(ctx, podID, controller.ContainerFiles{
		ID: files.ID, Rootfs: filepath.Join(guestDir, "rootfs"), PIDTarget: files.PIDTarget,
	})
	if err != nil {
		return ocispec.PodFacts{}, fmt.Errorf("guest pod: %w", err)
	}
	facts.MountSources = sources
	// The guest's runtime may run without address space randomization
	// (under TCG, hypervisor.TCGKernelArg): the container's processes get
	// Linux's default personality back.
	facts.DefaultPersonality = true
	c.mu.Lock()
	c.ctrs[files.ID] = podID
	c.mu.Unlock()
	return facts, nil
}

// StartContainer starts the prepared container in the guest pod, its log
// kept by the guest (log_stream) and written at LogPath by a writer on the
// host, whose record and file are made first.
func (c *Controller) StartContainer(ctx context.Context, podID string, ctr controller.Container) (_ controller.Started, retErr error) {
	p, err := c.pod(podID)
	if err != nil {
		return controller.Started{}, err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		return controller.Started{}, fmt.Errorf("vm pod %s: the VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	var w *logWriter
	if ctr.LogPath != "" {
		if w, err = c.prepareLogWriter(p, ctr.ID, ctr.LogPath); err != nil {
			return controller.Started{}, fmt.Errorf("container %s: %w", ctr.ID, err)
		}
		ctr.LogPath, ctr.LogStream = "", true
	}
	started, err := g.pods.StartContainer(ctx, podID, ctr)
	if w != nil {
		// A start the guest has already (a retry after a crash of
		// aurae-cri) streams its log too.
		if err == nil || errdefs.IsAlreadyExists(err) {
			c.startLogWriter(podID, ctr.ID, w)
		} else if rerr := c.dropLogWriter(p, ctr.ID, w); rerr != nil {
			c.log.Warn("undo container log writer", "pod", podID, "container", ctr.ID, "error", rerr)
		}
	}
	if err != nil {
		return controller.Started{}, err
	}
	c.mu.Lock()
	c.ctrs[ctr.ID] = podID
	c.mu.Unlock()
	return started, nil
}

// unmountUnder unmounts every mount at or below dir, deepest first; each
// is reached from root (a dir the guest cannot write) without following a
// symlink.
func unmountUnder(root, dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var targets []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			targets = append(targets, mp)
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	var errs []error
	for _, t := range targets {
		if err := unmountBeneath(root, t); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// guestOf is the guest controller of a container's pod; NotFound when the
// container or its VM is gone.
func (c *Controller) guestOf(cid string) (*native.Controller, *vmPod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, ok := c.ctrs[cid]
	if !ok {
		return nil, nil, fmt.Errorf("container %s: %w", cid, errdefs.ErrNotFound)
	}
	p := c.pods[pid]
	if p == nil || p.guest == nil {
		return nil, p, fmt.Errorf("container %s: its VM is not running: %w", cid, errdefs.ErrNotFound)
	}
	return p.guest.pods, p, nil
}

func (c *Controller) StopContainer(ctx context.Context, cid string, timeout time.Duration, signal string) error {
	g, _, err := c.guestOf(cid)
	if errdefs.IsNotFound(err) {
		return nil // its VM is off: nothing runs
	}
	if err != nil {
		return err
	}
	return g.StopContainer(ctx, cid, timeout, signal)
}

// RemoveContainer removes the container in the guest (when its VM runs)
// and its mounts under the shared dir.
func (c *Controller) RemoveContainer(ctx context.Context, podID, cid string) error {
	c.mu.Lock()
	p := c.pods[podID]
	var g *native.Controller
	if p != nil && p.guest != nil {
		g = p.guest.pods
	}
	c.mu.Unlock()
	if g != nil {
		if err := g.RemoveContainer(ctx, podID, cid); err != nil && !isNotFound(err) {
			return err
		}
	}
	if p != nil {
		if err := c.removeLogWriter(p, cid); err != nil {
			return err
		}
		hostDir, _ := containerDir(p.dir, cid)
		if err := unmountUnder(p.dir, hostDir); err != nil {
			return err
		}
		if err := os.RemoveAll(hostDir); err != nil {
			return err
		}
		if err := c.recordContainer(p, cid, false); err != nil {
			return err
		}
	}
	c.mu.Lock()
	delete(c.ctrs, cid)
	c.mu.Unlock()
	return nil
}

// ContainerStatus asks the guest; when the guest does not answer because
// its VM is gone (power off, panic, killed QEMU), the container is
// NotFound, so that the CRI's monitor records its exit.
func (c *Controller) ContainerStatus(ctx context.Context, cid string) (controller.ContainerState, error) {
	g, p, err := c.guestOf(cid)
	if err != nil {
		return controller.ContainerState{}, err
	}
	st, err := g.ContainerStatus(ctx, cid)
	if err != nil && errdefs.IsUnavailable(err) && !c.vmRunning(ctx, p.id) {
		c.dropGuest(p)
		return controller.ContainerState{}, fmt.Errorf("container %s: its VM is gone: %w", cid, errdefs.ErrNotFound)
	}
	if err == nil && (st.ID != cid || st.PodID != p.id) {
		return controller.ContainerState{}, fmt.Errorf("container %s: the guest answered for %s of pod %s: %w", cid, st.ID, st.PodID, errdefs.ErrUnknown)
	}
	return st, err
}

// vmRunning asks the VmService whether the pod's VM runs (true when it
// cannot tell).
func (c *Controller) vmRunning(ctx context.Context, podID string) bool {
	resp, err := c.vms.List(ctx, &vmsv0.VmServiceListRequest{})
	if err != nil {
		return true
	}
	for _, m := range resp.GetMachines() {
		if m.GetId() == vmID(podID) {
			return m.GetState() == vmsv0.VmState_VM_STATE_RUNNING
		}
	}
	return false
}

// dropGuest forgets a dead VM's guest client.
func (c *Controller) dropGuest(p *vmPod) {
	c.mu.Lock()
	g := p.guest
	p.guest = nil
	c.mu.Unlock()
	if g != nil {
		_ = g.Close()
	}
}

func (c *Controller) ExecSync(ctx context.Context, cid string, argv []string, timeout time.Duration) (controller.ExecResult, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return controller.ExecResult{}, err
	}
	return g.ExecSync(ctx, cid, argv, timeout)
}

func (c *Controller) ContainerStats(ctx context.Context, cid string) (controller.Stats, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return controller.Stats{}, err
	}
	return g.ContainerStats(ctx, cid)
}

func (c *Controller) UpdateContainerResources(ctx context.Context, cid string, resources *specs.LinuxResources) error {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return err
	}
	return g.UpdateContainerResources(ctx, cid, resources)
}

func (c *Controller) Exec(ctx context.Context, cid string, argv []string, sio controller.StreamIO) (int32, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return 0, err
	}
	return g.Exec(ctx, cid, argv, sio)
}

func (c *Controller) Attach(ctx context.Context, cid string, sio controller.StreamIO) error {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return err
	}
	return g.Attach(ctx, cid, sio)
}

// PortForward reaches 127.0.0.1 in the guest: the guest pod is on the
// guest's network, so the guest auraed connects from its own.
func (c *Controller) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	p, err := c.pod(podID)
	if err != nil {
		_ = stream.Close()
		return err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		_ = stream.Close()
		return fmt.Errorf("vm pod %s: the VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	return g.pods.PortForward(ctx, podID, port, stream)
}

// CheckpointContainer is refused: the container's processes live in the
// guest, whose auraed would write the CRIU images inside the VM, and a
// restore would need the same guest kernel and VM layout.
func (c *Controller) CheckpointContainer(_ context.Context, cid, _ string, _ bool) error {
	if _, _, err := c.guestOf(cid); err != nil {
		return err
	}
	return fmt.Errorf("container %s runs in a VM pod: checkpoints of VM-isolated containers are not supported (the CRIU images would be made inside the guest): %w", cid, errdefs.ErrFailedPrecondition)
}
