package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
	"github.com/aurae-runtime/aurae-cri/internal/durable"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// ImageStore is what RunCell needs of images: pkg/image's Service over
// containerd.
type ImageStore interface {
	Pull(ctx context.Context, ref string, auth *criapi.AuthConfig) (string, error)
	Resolve(ctx context.Context, refOrID string) (image.Image, error)
	PrepareRootfs(ctx context.Context, containerID, imageRef string) ([]image.Mount, error)
	RemoveRootfs(ctx context.Context, containerID string) error
}

// Pods is what RunCell needs of the PodService (auraed's, in process).
type Pods interface {
	Allocate(context.Context, *podsv0.AllocateRequest) (*podsv0.AllocateResponse, error)
	Start(context.Context, *podsv0.StartRequest) (*podsv0.StartResponse, error)
	Free(context.Context, *podsv0.FreeRequest) (*podsv0.FreeResponse, error)
	ListPods(context.Context, *podsv0.ListPodsRequest) (*podsv0.ListPodsResponse, error)
}

// OpenImages returns the image store, opening it (and containerd) on first
// use; an error wraps errdefs.ErrFailedPrecondition when auraed has none.
type OpenImages func(ctx context.Context) (ImageStore, error)

// labelCell marks the pods RunCell made, with the cell's name: recovery
// frees only a pod that carries it.
const labelCell = "io.aurae.runtime.cell"

// kindPod marks the record of a RunPod VM pod.
const kindPod = "pod"

// Record states.
const (
	cellCreating = "creating"
	cellRunning  = "running"
)

// cellRecord is what RunCell is about to make or made for a cell, written
// before each side effect to <dir>/<cell>/record.json: the pod (id = the
// cell's name, labelled), and per container its rootfs snapshot, mounted
// at <dir>/<cell>/<name>/rootfs.
type cellRecord struct {
	Cell string `json:"cell"`
	// Kind is kindPod for RunPod's VM pods ("" for RunCell's).
	Kind       string          `json:"kind,omitempty"`
	State      string          `json:"state"`
	Containers []cellContainer `json:"containers"`
}

type cellContainer struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

// cellStore keeps the records of RunCell's pods and releases what they
// name.
type cellStore struct {
	dir    string
	pods   Pods
	images OpenImages
	// vmPods opens the VM pod controller (RunPod's); nil without one.
	vmPods OpenVMPods
	log    *slog.Logger
	// mu serializes record writes and guards releasing: the cells being
	// released.
	mu        sync.Mutex
	releasing map[string]bool
}

func (c *cellStore) cellDir(cell string) string { return filepath.Join(c.dir, cell) }
func (c *cellStore) rootfsDir(cell, name string) string {
	return filepath.Join(c.dir, cell, name, "rootfs")
}
func (c *cellStore) logPath(cell, name string) string {
	return filepath.Join(c.dir, cell, name+".log")
}

// create makes the cell's dir and writes its first record; a cell whose
// dir exists is AlreadyExists.
func (c *cellStore) create(rec cellRecord) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(c.cellDir(rec.Cell), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cell %q: RunCell made it already (free its pod first): %w", rec.Cell, errdefs.ErrAlreadyExists)
		}
		return err
	}
	return c.writeLocked(rec)
}

func (c *cellStore) write(rec cellRecord) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writeLocked(rec)
}

// writeLocked writes the record atomically and durably.
func (c *cellStore) writeLocked(rec cellRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	dir := c.cellDir(rec.Cell)
	tmp := filepath.Join(dir, ".record.json.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, "record.json"))
	}
	if err == nil {
		err = durable.SyncDir(dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("record of cell %q: %w", rec.Cell, err)
	}
	return nil
}

// read reads a cell's record; ok is false when there is none.
func (c *cellStore) read(cell string) (cellRecord, bool, error) {
	b, err := os.ReadFile(filepath.Join(c.cellDir(cell), "record.json"))
	if errors.Is(err, os.ErrNotExist) {
		return cellRecord{}, false, nil
	}
	if err != nil {
		return cellRecord{}, false, err
	}
	var rec cellRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return cellRecord{}, false, fmt.Errorf("record of cell %q: %w", cell, err)
	}
	if rec.Cell != cell {
		return cellRecord{}, false, fmt.Errorf("record of cell %q names cell %q", cell, rec.Cell)
	}
	return rec, true, nil
}

// release unmounts and removes the rootfs of each container the cell's
// record names, then the cell's dir (logs included). A cell without a
// record (not RunCell's) is left alone. The pod must be freed already.
func (c *cellStore) release(ctx context.Context, cell string) error {
	if !validName(cell) {
		return nil // not a cell RunCell could have made
	}
	// One release of a cell at a time; a release that frees the cell's
	// host pod is called again by the PodService's Freed hook (nested):
	// that call leaves it to the first.
	c.mu.Lock()
	if c.releasing[cell] {
		c.mu.Unlock()
		return nil
	}
	if c.releasing == nil {
		c.releasing = map[string]bool{}
	}
	c.releasing[cell] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.releasing, cell)
		c.mu.Unlock()
	}()
	rec, ok, err := c.read(cell)
	if err != nil || !ok {
		if _, serr := os.Stat(c.cellDir(cell)); err == nil && serr == nil {
			// A dir without a record: create was cut short before it wrote.
			return os.RemoveAll(c.cellDir(cell))
		}
		return err
	}
	if rec.Kind == kindPod {
		// The VM, its shared dir and the host pod go first: they hold
		// the rootfs mounts.
		if c.vmPods == nil {
			return fmt.Errorf("release vm pod %q: this auraed serves no VM pods: %w", cell, errdefs.ErrFailedPrecondition)
		}
		ctl, err := c.vmPods(ctx)
		if err != nil {
			return fmt.Errorf("release vm pod %q: %w", cell, err)
		}
		if err := ctl.RemovePod(ctx, cell); err != nil {
			return fmt.Errorf("release vm pod %q: %w", cell, err)
		}
	}
	var imgs ImageStore
	for _, ctr := range rec.Containers {
		if err := unmountAll(c.rootfsDir(cell, ctr.Name)); err != nil {
			return fmt.Errorf("release cell %q: %w", cell, err)
		}
		if imgs == nil {
			if imgs, err = c.images(ctx); err != nil {
				return fmt.Errorf("release cell %q: %w", cell, err)
			}
		}
		if err := imgs.RemoveRootfs(ctx, ctr.ID); err != nil {
			return fmt.Errorf("release cell %q: %w", cell, err)
		}
	}
	if err := os.RemoveAll(c.cellDir(cell)); err != nil {
		return fmt.Errorf("release cell %q: %w", cell, err)
	}
	c.log.InfoContext(ctx, "cell released", "cell", cell, "containers", len(rec.Containers))
	return nil
}

// unmountAll unmounts everything mounted at dir (nothing is not an error).
func unmountAll(dir string) error {
	if err := mount.UnmountAll(dir, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		if err := mount.UnmountAll(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

// recoverTimeout bounds the recovery of one cell at start.
const recoverTimeout = time.Minute

// recover finishes what a killed auraed left: a cell cut short in its
// creation is undone (its pod freed when it carries the cell's label,
// its snapshots released); a running cell whose pod is gone (freed while
// the release could not finish) is released.
func (c *cellStore) recover(ctx context.Context, kind string) {
	entries, err := os.ReadDir(c.dir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(entries) == 0) {
		return
	}
	if err != nil {
		c.log.ErrorContext(ctx, "recover RunCell cells", "error", err)
		return
	}
	pods, err := c.ourPods(ctx)
	if err != nil {
		c.log.ErrorContext(ctx, "recover RunCell cells: list pods", "error", err)
		return
	}
	for _, e := range entries {
		cell := e.Name()
		if !e.IsDir() || !validName(cell) {
			continue
		}
		rec, ok, err := c.read(cell)
		if err != nil {
			c.log.ErrorContext(ctx, "recover RunCell cell", "cell", cell, "error", err)
			continue
		}
		if ok && rec.Kind != kind {
			continue // the other pass's
		}
		if ok && rec.State == cellRunning && pods[cell] {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, recoverTimeout)
		if pods[cell] {
			if _, err := c.pods.Free(rctx, &podsv0.FreeRequest{PodId: cell}); err != nil {
				c.log.ErrorContext(ctx, "recover RunCell cell: free its pod", "cell", cell, "error", err)
				cancel()
				continue
			}
		}
		if err := c.release(rctx, cell); err != nil {
			c.log.ErrorContext(ctx, "recover RunCell cell: release", "cell", cell, "error", err)
		} else {
			c.log.InfoContext(ctx, "RunCell cell recovered", "cell", cell, "state", rec.State)
		}
		cancel()
	}
}

// ourPods are the pods labelled as RunCell's, by id.
func (c *cellStore) ourPods(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	token := ""
	for range 10000 {
		resp, err := c.pods.ListPods(ctx, &podsv0.ListPodsRequest{PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, p := range resp.GetPods() {
			if id := p.GetPod().GetId(); p.GetPod().GetLabels()[labelCell] == id {
				out[id] = true
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
	return nil, errors.New("list pods: too many pages")
}

// hasKind tells whether a record of kind is in the store.
func (c *cellStore) hasKind(kind string) bool {
	entries, _ := os.ReadDir(c.dir)
	for _, e := range entries {
		if rec, ok, err := c.read(e.Name()); err == nil && ok && rec.Kind == kind {
			return true
		}
	}
	return false
}
