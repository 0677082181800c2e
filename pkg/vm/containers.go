package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	vmsv0 "github.com/aurae-runtime/aurae-cri/api/vms/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/sandbox"
)

// containerDir is a container's dir under the shared dir (host side) and
// its path in the guest.
func containerDir(podDir, cid string) (host, inGuest string) {
	rel := filepath.Join("c", short(cid))
	return filepath.Join(sharedDir(podDir), rel), filepath.Join(guestShared, rel)
}

// StartContainer makes the container's rootfs, log dir and bind-mounted
// volumes visible in the guest (bind mounts under the shared dir), points
// its spec at them, and starts it in the guest pod.
func (c *Controller) StartContainer(ctx context.Context, podID string, ctr *podsv0.Container) (_ *podsv0.StartResponse, retErr error) {
	p, err := c.pod(podID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	g := p.guest
	c.mu.Unlock()
	if g == nil {
		return nil, fmt.Errorf("vm pod %s: the VM is not running: %w", podID, errdefs.ErrFailedPrecondition)
	}
	hostDir, guestDir := containerDir(p.dir, ctr.GetId())
	defer func() {
		if retErr != nil {
			_ = unmountUnder(hostDir)
			_ = os.RemoveAll(hostDir)
		}
	}()
	if err := bindInto(ctr.GetRootfsPath(), filepath.Join(hostDir, "rootfs")); err != nil {
		return nil, fmt.Errorf("share rootfs: %w", err)
	}
	out := proto2(ctr)
	out.RootfsPath = filepath.Join(guestDir, "rootfs")
	if lp := ctr.GetLogPath(); lp != "" {
		if err := os.MkdirAll(filepath.Dir(lp), 0o755); err != nil {
			return nil, err
		}
		if err := bindInto(filepath.Dir(lp), filepath.Join(hostDir, "log")); err != nil {
			return nil, fmt.Errorf("share log dir: %w", err)
		}
		out.LogPath = filepath.Join(guestDir, "log", filepath.Base(lp))
	}
	var sp specs.Spec
	if err := json.Unmarshal(ctr.GetOciSpec(), &sp); err != nil {
		return nil, fmt.Errorf("oci spec: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	mountPodFiles, err := shareMounts(&sp, p.rec.PodFiles, hostDir, guestDir)
	if err != nil {
		return nil, err
	}
	out.MountPodFiles = out.MountPodFiles || mountPodFiles
	if sp.Root != nil {
		sp.Root.Path = out.RootfsPath
	}
	if sp.Linux != nil {
		// The guest pod's namespaces replace the host pod's.
		sp.Linux.Namespaces = slices.DeleteFunc(sp.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Path != "" })
	}
	if out.OciSpec, err = json.Marshal(&sp); err != nil {
		return nil, err
	}
	resp, err := g.pods.Start(ctx, &podsv0.StartRequest{PodId: podID, Container: out})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.ctrs[ctr.GetId()] = podID
	c.mu.Unlock()
	return resp, nil
}

func proto2(c *podsv0.Container) *podsv0.Container {
	return &podsv0.Container{Id: c.GetId(), OciSpec: c.GetOciSpec(), RootfsPath: c.GetRootfsPath(), LogPath: c.GetLogPath(),
		Tty: c.GetTty(), Stdin: c.GetStdin(), MountPodFiles: c.GetMountPodFiles()}
}

// shareMounts rewrites the spec's bind mounts for the guest: the host
// pod's own files are dropped (the guest pod mounts its own: the answer is
// true when one was), other host paths are bind-mounted under hostDir.
func shareMounts(sp *specs.Spec, podFiles []string, hostDir, guestDir string) (bool, error) {
	podFile := false
	var mounts []specs.Mount
	for i, m := range sp.Mounts {
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		if !bind {
			mounts = append(mounts, m)
			continue
		}
		if m.Source != "" && slices.Contains(podFiles, m.Source) {
			podFile = true
			continue
		}
		name := "m" + strconv.Itoa(i)
		if err := bindInto(m.Source, filepath.Join(hostDir, name)); err != nil {
			return false, fmt.Errorf("share mount %s: %w", m.Destination, err)
		}
		m.Source = filepath.Join(guestDir, name)
		mounts = append(mounts, m)
	}
	sp.Mounts = mounts
	return podFile, nil
}

// bindInto bind-mounts src (a dir or a file) at dst, making dst.
func bindInto(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if fi.IsDir() {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
	} else if f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err != nil {
		return err
	} else {
		_ = f.Close()
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", src, dst, err)
	}
	return nil
}

// unmountUnder unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
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
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
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
func (c *Controller) guestOf(cid string) (sandbox.AuraeController, *vmPod, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, ok := c.ctrs[cid]
	if !ok {
		return sandbox.AuraeController{}, nil, fmt.Errorf("container %s: %w", cid, errdefs.ErrNotFound)
	}
	p := c.pods[pid]
	if p == nil || p.guest == nil {
		return sandbox.AuraeController{}, p, fmt.Errorf("container %s: its VM is not running: %w", cid, errdefs.ErrNotFound)
	}
	return sandbox.AuraeController{Pods: p.guest.pods}, p, nil
}

func (c *Controller) StopContainer(ctx context.Context, cid string, timeout time.Duration) error {
	g, _, err := c.guestOf(cid)
	if errdefs.IsNotFound(err) {
		return nil // its VM is off: nothing runs
	}
	if err != nil {
		return err
	}
	return g.StopContainer(ctx, cid, timeout)
}

// RemoveContainer removes the container in the guest (when its VM runs)
// and its mounts under the shared dir.
func (c *Controller) RemoveContainer(ctx context.Context, cid string) error {
	g, p, err := c.guestOf(cid)
	if err == nil {
		if err := g.RemoveContainer(ctx, cid); err != nil && !isNotFound(err) {
			return err
		}
	}
	if p != nil {
		hostDir, _ := containerDir(p.dir, cid)
		if err := unmountUnder(hostDir); err != nil {
			return err
		}
		if err := os.RemoveAll(hostDir); err != nil {
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
func (c *Controller) ContainerStatus(ctx context.Context, cid string) (*podsv0.ContainerStatus, error) {
	g, p, err := c.guestOf(cid)
	if err != nil {
		return nil, err
	}
	st, err := g.ContainerStatus(ctx, cid)
	if err != nil && status.Code(err) == codes.Unavailable && !c.vmRunning(ctx, p.id) {
		c.dropGuest(p)
		return nil, fmt.Errorf("container %s: its VM is gone: %w", cid, errdefs.ErrNotFound)
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

func (c *Controller) ExecSync(ctx context.Context, cid string, argv []string, timeout time.Duration) (*podsv0.ExecSyncResponse, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return nil, err
	}
	return g.ExecSync(ctx, cid, argv, timeout)
}

func (c *Controller) ContainerStats(ctx context.Context, cid string) (*podsv0.ContainerStatsResponse, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return nil, err
	}
	return g.ContainerStats(ctx, cid)
}

func (c *Controller) UpdateContainerResources(ctx context.Context, cid string, resources []byte) error {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return err
	}
	return g.UpdateContainerResources(ctx, cid, resources)
}

func (c *Controller) ReopenContainerLog(ctx context.Context, cid string) error {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return err
	}
	return g.ReopenContainerLog(ctx, cid)
}

func (c *Controller) Exec(ctx context.Context, cid string, argv []string, sio sandbox.StreamIO) (int32, error) {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return 0, err
	}
	return g.Exec(ctx, cid, argv, sio)
}

func (c *Controller) Attach(ctx context.Context, cid string, sio sandbox.StreamIO) error {
	g, _, err := c.guestOf(cid)
	if err != nil {
		return err
	}
	return g.Attach(ctx, cid, sio)
}
