package legacy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

const (
	// runCellTimeout bounds RunCell (pulls included) when the call's
	// deadline is later.
	runCellTimeout = 10 * time.Minute
	// cellNamespace is the namespace a RunCell container is listed in.
	cellNamespace = "aurae"
	// maxIDLen is the PodService's bound on pod and container ids.
	maxIDLen = 64
)

// nameRE is a cell's or a container's name: a portable file name, as the
// PodService's ids.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func validName(s string) bool { return len(s) <= maxIDLen && nameRE.MatchString(s) }

// WithCells lets Core run RunCell on the PodService with images from
// images; dir holds the cells' records, rootfs mounts and logs. It
// finishes what a killed auraed left there.
func (s *Core) WithCells(ctx context.Context, pods Pods, images OpenImages, dir string, log *slog.Logger) *Core {
	caps, err := ocispec.CurrentCapabilities()
	if err != nil {
		log.Warn("RunCell: read own capabilities", "error", err)
	}
	s.cellStore = &cellStore{dir: dir, pods: pods, images: images, log: log}
	s.capabilities, s.host = caps, ocispec.ProbeHost()
	s.cellStore.recover(ctx, "")
	return s
}

// CellFreed releases what RunCell made for a pod that was freed (the
// PodService's Freed hook); a pod RunCell did not make is left alone.
func (s *Core) CellFreed(ctx context.Context, podID string) error {
	if s.cellStore == nil {
		return nil
	}
	return s.cellStore.release(ctx, podID)
}

// RunCell runs the cell's containers as a pod of this auraed.
func (s *Core) RunCell(ctx context.Context, req *runtimeapi.Cell) (*runtimeapi.CellStatus, error) {
	resp, err := s.runCell(ctx, req)
	return resp, errmap.ToGRPC(err)
}

// cellPlan is a validated RunCell request.
type cellPlan struct {
	cell       string
	containers []cellContainer
	images     []string
}

func planCell(req *runtimeapi.Cell) (cellPlan, error) {
	p := cellPlan{cell: req.GetMeta().GetName()}
	if !validName(p.cell) {
		return p, fmt.Errorf("cell.meta.name %q: want letters, digits, '.', '_' or '-', not starting with one of the last three, at most %d characters: %w", p.cell, maxIDLen, errdefs.ErrInvalidArgument)
	}
	if len(req.GetContainers()) == 0 {
		return p, fmt.Errorf("cell %q: cell.containers is empty: %w", p.cell, errdefs.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for i, c := range req.GetContainers() {
		name := c.GetMeta().GetName()
		if name == "" {
			name = "c" + strconv.Itoa(i)
		}
		id := p.cell + "." + name
		switch {
		case !nameRE.MatchString(name):
			return p, fmt.Errorf("cell %q: cell.containers[%d].meta.name %q: want letters, digits, '.', '_' or '-': %w", p.cell, i, name, errdefs.ErrInvalidArgument)
		case len(id) > maxIDLen:
			return p, fmt.Errorf("cell %q: cell.containers[%d].meta.name %q: the container id %q is longer than %d characters: %w", p.cell, i, name, id, maxIDLen, errdefs.ErrInvalidArgument)
		case seen[name]:
			return p, fmt.Errorf("cell %q: cell.containers[%d].meta.name %q given twice: %w", p.cell, i, name, errdefs.ErrInvalidArgument)
		case c.GetImage() == "":
			return p, fmt.Errorf("cell %q: cell.containers[%d].image is empty: %w", p.cell, i, errdefs.ErrInvalidArgument)
		}
		seen[name] = true
		p.containers = append(p.containers, cellContainer{Name: name, ID: id})
		p.images = append(p.images, c.GetImage())
	}
	return p, nil
}

func (s *Core) runCell(ctx context.Context, req *runtimeapi.Cell) (_ *runtimeapi.CellStatus, retErr error) {
	p, err := planCell(req)
	if err != nil {
		return nil, err
	}
	if s.cellStore == nil {
		return nil, fmt.Errorf("cell %q: this auraed runs no containers from images: %w", p.cell, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(ctx, runCellTimeout)
	defer cancel()
	log := s.cellStore.log.With("cell", p.cell)
	imgs, err := s.cellStore.images(ctx)
	if err != nil {
		return nil, fmt.Errorf("cell %q: %w", p.cell, err)
	}
	// Intent first: what follows is named in the record before it is made.
	rec := cellRecord{Cell: p.cell, State: cellCreating, Containers: p.containers}
	if err := s.cellStore.create(rec); err != nil {
		return nil, err
	}
	allocated := false
	defer func() {
		if retErr == nil {
			return
		}
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
		defer ucancel()
		if allocated {
			// The PodService's Freed hook releases the rest.
			if _, err := s.cellStore.pods.Free(uctx, &podsv0.FreeRequest{PodId: p.cell}); err != nil {
				log.ErrorContext(ctx, "RunCell failed: free its pod", "error", err)
				return
			}
		}
		if err := s.cellStore.release(uctx, p.cell); err != nil {
			log.ErrorContext(ctx, "RunCell failed: release", "error", err)
		}
	}()

	resolved := make([]image.Image, len(p.images))
	for i, ref := range p.images {
		if _, err := imgs.Pull(ctx, ref, nil); err != nil {
			return nil, fmt.Errorf("cell %q: cell.containers[%d].image %q: %w", p.cell, i, ref, err)
		}
		if resolved[i], err = imgs.Resolve(ctx, ref); err != nil {
			return nil, fmt.Errorf("cell %q: cell.containers[%d].image %q: %w", p.cell, i, ref, err)
		}
	}
	pod := &podsv0.Pod{Id: p.cell, Hostname: p.cell, Labels: map[string]string{labelCell: p.cell}}
	alloc, err := s.cellStore.pods.Allocate(ctx, &podsv0.AllocateRequest{Pod: pod})
	if err != nil {
		return nil, fmt.Errorf("cell %q: %w", p.cell, err)
	}
	allocated = true
	facts := native.Facts(pod, alloc)
	out := &runtimeapi.CellStatus{Meta: &metaapi.AuraeMeta{Name: p.cell}, Status: metaapi.Status_STATUS_ACTIVE}
	for i, c := range p.containers {
		pid, err := s.startCellContainer(ctx, imgs, p.cell, c, p.images[i], resolved[i], facts)
		if err != nil {
			return nil, fmt.Errorf("cell %q: container %q (cell.containers[%d]): %w", p.cell, c.Name, i, err)
		}
		out.ContainerStatuses = append(out.ContainerStatuses, &runtimeapi.ContainerStatus{
			Meta:   &metaapi.AuraeMeta{Name: c.Name, Message: "id " + c.ID + ", log " + s.cellStore.logPath(p.cell, c.Name)},
			Proc:   &metaapi.ProcessMeta{Pid: int32(pid)},
			Status: metaapi.Status_STATUS_ACTIVE,
		})
		log.InfoContext(ctx, "RunCell container started", "container", c.ID, "image", p.images[i], "pid", pid)
	}
	rec.State = cellRunning
	if err := s.cellStore.write(rec); err != nil {
		return nil, err
	}
	return out, nil
}

// startCellContainer prepares the container's rootfs snapshot, mounts it,
// writes its spec with pkg/ocispec and starts it in the pod.
func (s *Core) startCellContainer(ctx context.Context, imgs ImageStore, cell string, c cellContainer, ref string, img image.Image, facts ocispec.PodFacts) (int, error) {
	mounts, err := imgs.PrepareRootfs(ctx, c.ID, ref)
	if err != nil {
		return 0, err
	}
	rootfs := s.cellStore.rootfsDir(cell, c.Name)
	if err := mountRootfs(mounts, rootfs); err != nil {
		return 0, err
	}
	facts.RootfsPath = rootfs
	b, err := s.containerSpec(c, cell, ref, img, facts, rootfs)
	if err != nil {
		return 0, err
	}
	started, err := s.cellStore.pods.Start(ctx, &podsv0.StartRequest{PodId: cell, Container: &podsv0.Container{
		Id: c.ID, OciSpec: b, RootfsPath: rootfs, LogPath: s.cellStore.logPath(cell, c.Name),
	}})
	if err != nil {
		return 0, err
	}
	return int(started.GetPid()), nil
}

// mountRootfs mounts a snapshot's mounts at dir.
func mountRootfs(ms []image.Mount, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cms := make([]mount.Mount, len(ms))
	for i, m := range ms {
		cms[i] = mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options}
	}
	if err := mount.All(cms, dir); err != nil {
		return fmt.Errorf("mount rootfs at %s: %w", dir, err)
	}
	return nil
}

// containerSpec is the OCI spec of a RunCell or RunPod container, written
// by pkg/ocispec: the image's entrypoint, cmd, env, user and workdir, the
// default capabilities and seccomp profile, in the pod of facts.
func (s *Core) containerSpec(c cellContainer, pod, ref string, img image.Image, facts ocispec.PodFacts, rootfsHere string) ([]byte, error) {
	spec, err := ocispec.Generate(ocispec.Input{
		ID:        c.ID,
		SandboxID: pod,
		ImageName: ref,
		Config: &criapi.ContainerConfig{
			Metadata: &criapi.ContainerMetadata{Name: c.Name},
			Image:    &criapi.ImageSpec{Image: ref},
			Linux: &criapi.LinuxContainerConfig{SecurityContext: &criapi.LinuxContainerSecurityContext{
				Seccomp: &criapi.SecurityProfile{ProfileType: criapi.SecurityProfile_RuntimeDefault},
			}},
		},
		Sandbox: &criapi.PodSandboxConfig{
			Metadata: &criapi.PodSandboxMetadata{Name: pod, Namespace: cellNamespace, Uid: pod},
			Hostname: pod,
			Linux:    &criapi.LinuxPodSandboxConfig{},
		},
		Image:           img.Config,
		Pod:             facts,
		RootfsHere:      rootfsHere,
		AllCapabilities: s.capabilities,
		Host:            s.host,
	})
	if err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	return json.Marshal(spec)
}
