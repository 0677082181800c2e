package legacy

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	"github.com/aurae-runtime/aurae-cri/pkg/controller"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// OpenVMPods returns the controller of VM pods (pkg/controller/vm over
// this auraed's own PodService and VmService), opening it on first use.
type OpenVMPods func(ctx context.Context) (controller.Controller, error)

// vmPodHandler is the runtime handler RunPod's pods are made for.
const vmPodHandler = "aurae-vm"

// WithPods lets Core run RunPod's VM pods through vmPods. When RunPod
// made VM pods before, the controller is opened in the background (once
// auraed serves: it calls auraed's own socket), which re-adopts them, and
// what a killed auraed left half made is undone.
func (s *Core) WithPods(ctx context.Context, vmPods OpenVMPods) *Core {
	if s.cellStore == nil {
		return s
	}
	s.cellStore.vmPods = vmPods
	if !s.cellStore.hasKind(kindPod) {
		return s // nothing to re-adopt or finish: opened on first use
	}
	s.reaping.Add(1)
	go func() {
		defer s.reaping.Done()
		rctx, cancel := context.WithTimeout(s.recoverCtx(ctx), recoverTimeout)
		defer cancel()
		if _, err := vmPods(rctx); err != nil {
			s.cellStore.log.Warn("RunPod: VM pods not recovered", "error", err)
			return
		}
		s.cellStore.recover(rctx, kindPod)
	}()
	return s
}

// recoverCtx ends with Close.
func (s *Core) recoverCtx(ctx context.Context) context.Context {
	if s.reapCtx != nil {
		return s.reapCtx
	}
	return context.WithoutCancel(ctx)
}

// RunPod boots a VM with a nested auraed and runs the cells in it.
func (s *Core) RunPod(ctx context.Context, req *runtimeapi.Pod) (*runtimeapi.PodStatus, error) {
	resp, err := s.runPod(ctx, req)
	return resp, errmap.ToGRPC(err)
}

// podPlan is a validated RunPod: its containers (named <cell>.<name>,
// ids <pod>.<cell>.<name>) by cell.
type podPlan struct {
	pod        string
	cells      []cellPlan
	containers []cellContainer
	images     []string
}

func planPod(req *runtimeapi.Pod) (podPlan, error) {
	p := podPlan{pod: req.GetMeta().GetName()}
	if !validName(p.pod) {
		return p, fmt.Errorf("pod.meta.name %q: want letters, digits, '.', '_' or '-', not starting with one of the last three, at most %d characters: %w", p.pod, maxIDLen, errdefs.ErrInvalidArgument)
	}
	if len(req.GetCells()) == 0 {
		return p, fmt.Errorf("pod %q: pod.cells is empty: %w", p.pod, errdefs.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for i, c := range req.GetCells() {
		cp, err := planCell(c)
		if err != nil {
			return p, fmt.Errorf("pod %q: pod.cells[%d]: %w", p.pod, i, err)
		}
		if seen[cp.cell] {
			return p, fmt.Errorf("pod %q: pod.cells[%d].meta.name %q given twice: %w", p.pod, i, cp.cell, errdefs.ErrInvalidArgument)
		}
		seen[cp.cell] = true
		for j, ctr := range cp.containers {
			id := p.pod + "." + ctr.ID
			if len(id) > maxIDLen {
				return p, fmt.Errorf("pod %q: pod.cells[%d].containers[%d]: the container id %q is longer than %d characters: %w", p.pod, i, j, id, maxIDLen, errdefs.ErrInvalidArgument)
			}
			p.containers = append(p.containers, cellContainer{Name: ctr.ID, ID: id})
			p.images = append(p.images, cp.images[j])
		}
		p.cells = append(p.cells, cp)
	}
	return p, nil
}

func (s *Core) runPod(ctx context.Context, req *runtimeapi.Pod) (_ *runtimeapi.PodStatus, retErr error) {
	p, err := planPod(req)
	if err != nil {
		return nil, err
	}
	if s.cellStore == nil || s.cellStore.vmPods == nil {
		return nil, fmt.Errorf("pod %q: this auraed runs no VM pods: %w", p.pod, errdefs.ErrFailedPrecondition)
	}
	if err := checkGuestImage(s.vmImageDir); err != nil {
		return nil, fmt.Errorf("pod %q: %w", p.pod, err)
	}
	ctx, cancel := context.WithTimeout(ctx, runCellTimeout)
	defer cancel()
	store := s.cellStore
	log := store.log.With("pod", p.pod)
	imgs, err := store.images(ctx)
	if err != nil {
		return nil, fmt.Errorf("pod %q: %w", p.pod, err)
	}
	ctl, err := store.vmPods(ctx)
	if err != nil {
		return nil, fmt.Errorf("pod %q: %w", p.pod, err)
	}
	rec := cellRecord{Cell: p.pod, Kind: kindPod, State: cellCreating, Containers: p.containers}
	if err := store.create(rec); err != nil {
		return nil, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
		defer ucancel()
		if err := store.release(uctx, p.pod); err != nil {
			log.ErrorContext(ctx, "RunPod failed: release", "error", err)
		}
	}()
	resolved := make([]image.Image, len(p.images))
	for i, ref := range p.images {
		if _, err := imgs.Pull(ctx, ref, nil); err != nil {
			return nil, fmt.Errorf("pod %q: container %q: image %q: %w", p.pod, p.containers[i].Name, ref, err)
		}
		if resolved[i], err = imgs.Resolve(ctx, ref); err != nil {
			return nil, fmt.Errorf("pod %q: container %q: image %q: %w", p.pod, p.containers[i].Name, ref, err)
		}
	}
	if _, err := ctl.CreatePod(ctx, controller.PodSpec{
		ID: p.pod, RuntimeHandler: vmPodHandler, Hostname: p.pod,
		Labels: map[string]string{labelCell: p.pod},
	}); err != nil {
		return nil, fmt.Errorf("pod %q: %w", p.pod, err)
	}
	out := &runtimeapi.PodStatus{
		Meta:          &metaapi.AuraeMeta{Name: p.pod},
		Status:        metaapi.Status_STATUS_ACTIVE,
		SpawnResponse: &runtimeapi.SpawnResponse{VmId: vmPodID(p.pod)},
		Instance:      &runtimeapi.Instance{Meta: &metaapi.AuraeMeta{Name: vmPodID(p.pod)}},
	}
	var cellStatuses []*runtimeapi.CellStatus
	var notes []string
	k := 0
	for _, cp := range p.cells {
		cs := &runtimeapi.CellStatus{Meta: &metaapi.AuraeMeta{Name: cp.cell}, Status: metaapi.Status_STATUS_ACTIVE}
		for range cp.containers {
			c := p.containers[k]
			pid, err := s.startPodContainer(ctx, ctl, imgs, p.pod, c, p.images[k], resolved[k])
			if err != nil {
				return nil, fmt.Errorf("pod %q: container %q: %w", p.pod, c.Name, err)
			}
			logPath := store.logPath(p.pod, c.Name)
			cs.ContainerStatuses = append(cs.ContainerStatuses, &runtimeapi.ContainerStatus{
				Meta:   &metaapi.AuraeMeta{Name: c.Name, Message: "id " + c.ID + ", log " + logPath},
				Proc:   &metaapi.ProcessMeta{Pid: int32(pid)},
				Status: metaapi.Status_STATUS_ACTIVE,
			})
			notes = append(notes, c.Name+": id "+c.ID+", log "+logPath)
			log.InfoContext(ctx, "RunPod container started", "container", c.ID, "image", p.images[k], "guest_pid", pid)
			k++
		}
		cellStatuses = append(cellStatuses, cs)
	}
	out.CellStatus = cellStatuses[0]
	out.Meta.Message = strings.Join(notes, "; ")
	rec.State = cellRunning
	if err := store.write(rec); err != nil {
		return nil, err
	}
	return out, nil
}

// vmPodID is the VmService id of a VM pod's VM (pkg/controller/vm's).
func vmPodID(pod string) string {
	if len(pod) > 16 {
		pod = pod[:16]
	}
	return "pod-" + pod
}

// startPodContainer prepares the container's rootfs snapshot on the host,
// shares it into the VM and starts the container in the guest pod, its
// log written on the host.
func (s *Core) startPodContainer(ctx context.Context, ctl controller.Controller, imgs ImageStore, pod string, c cellContainer, ref string, img image.Image) (int, error) {
	mounts, err := imgs.PrepareRootfs(ctx, c.ID, ref)
	if err != nil {
		return 0, err
	}
	rootfs := s.cellStore.rootfsDir(pod, c.Name)
	if err := mountRootfs(mounts, rootfs); err != nil {
		return 0, err
	}
	logPath := s.cellStore.logPath(pod, c.Name)
	facts, err := ctl.PrepareContainer(ctx, pod, controller.ContainerFiles{ID: c.ID, Rootfs: rootfs, LogPath: logPath})
	if err != nil {
		return 0, err
	}
	b, err := s.containerSpec(c, pod, ref, img, facts, rootfs)
	if err != nil {
		return 0, err
	}
	started, err := ctl.StartContainer(ctx, pod, controller.Container{ID: c.ID, Spec: b, LogPath: logPath})
	if err != nil {
		return 0, err
	}
	return started.Pid, nil
}
