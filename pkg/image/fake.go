package image

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Images is what the container code uses of the image service. *Service
// implements it against containerd; *Fake in memory, for unit tests.
type Images interface {
	Resolve(ctx context.Context, refOrID string) (Image, error)
	PrepareRootfs(ctx context.Context, containerID, imageRef string) ([]Mount, error)
	RootfsMounts(ctx context.Context, containerID string) ([]Mount, error)
	RemoveRootfs(ctx context.Context, containerID string) error
	Pull(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error)
	PrepareImageVolume(ctx context.Context, imageID string) ([]Mount, error)
	RemoveImageVolume(ctx context.Context, key string) error
	ImageVolumes(ctx context.Context) ([]string, error)
}

var (
	_ Images = (*Service)(nil)
	_ Images = (*Fake)(nil)
)

// Fake is an in-memory Images for unit tests: images are added with Add,
// and a prepared rootfs is a bind mount of RootfsSource.
type Fake struct {
	// RootfsSource is the source of the bind mount PrepareRootfs returns.
	RootfsSource string

	mu     sync.Mutex
	images map[string]Image  // by id
	rootfs map[string]string // container id → image id
	// volumes are the prepared image volumes (keys); pulls counts Pull
	// calls that found their image.
	volumes map[string]bool
	pulls   int
	// removeRootfsGate, when not nil, holds RemoveRootfs until it is
	// closed; removeRootfsErr fails it.
	removeRootfsGate <-chan struct{}
	removeRootfsErr  error
}

// HoldRemoveRootfs makes RemoveRootfs wait until gate is closed (nil: not
// at all) and then fail with err (nil: succeed).
func (f *Fake) HoldRemoveRootfs(gate <-chan struct{}, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removeRootfsGate, f.removeRootfsErr = gate, err
}

// NewFake returns an empty Fake whose rootfs mounts bind rootfsSource.
func NewFake(rootfsSource string) *Fake {
	return &Fake{RootfsSource: rootfsSource, images: map[string]Image{}, rootfs: map[string]string{}, volumes: map[string]bool{}}
}

// Add makes img resolvable by its id, its repo tags and repo digests (each
// normalized). An empty ID is made up from the first tag.
func (f *Fake) Add(img Image) Image {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img.ID == "" {
		img.ID = digest.FromString(strings.Join(img.RepoTags, ",")).String()
	}
	for i, r := range img.RepoTags {
		if n, err := NormalizeRef(r); err == nil {
			img.RepoTags[i] = n.String()
		}
	}
	for i, r := range img.RepoDigests {
		if n, err := NormalizeRef(r); err == nil {
			img.RepoDigests[i] = n.String()
		}
	}
	f.images[img.ID] = img
	return img
}

// Resolve finds an added image by id, id prefix, tag or digest.
func (f *Fake) Resolve(ctx context.Context, refOrID string) (Image, error) {
	if err := ctx.Err(); err != nil {
		return Image{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.find(refOrID)
	if !ok {
		return Image{}, fmt.Errorf("resolve image %q: %w", refOrID, errdefs.ErrNotFound)
	}
	return img, nil
}

func (f *Fake) find(refOrID string) (Image, bool) {
	if img, ok := f.images[refOrID]; ok {
		return img, true
	}
	name := refOrID
	if n, err := NormalizeRef(refOrID); err == nil {
		name = n.String()
	}
	var prefixed []Image
	for _, img := range f.images {
		if slices.Contains(img.RepoTags, name) || slices.Contains(img.RepoDigests, name) {
			return img, true
		}
		if len(refOrID) >= 4 && strings.HasPrefix(strings.TrimPrefix(img.ID, "sha256:"), strings.TrimPrefix(refOrID, "sha256:")) {
			prefixed = append(prefixed, img)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], true
	}
	return Image{}, false
}

// PrepareRootfs records a rootfs of imageRef for containerID.
func (f *Fake) PrepareRootfs(ctx context.Context, containerID, imageRef string) ([]Mount, error) {
	if err := identifiers.Validate(containerID); err != nil {
		return nil, fmt.Errorf("prepare rootfs: container id %q: %w", containerID, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.find(imageRef)
	if !ok {
		return nil, fmt.Errorf("prepare rootfs of %q: image %q: %w", containerID, imageRef, errdefs.ErrNotFound)
	}
	if id, ok := f.rootfs[containerID]; ok && id != img.ID {
		return nil, fmt.Errorf("prepare rootfs of %q: exists on image %s: %w", containerID, id, errdefs.ErrAlreadyExists)
	}
	f.rootfs[containerID] = img.ID
	return f.mounts(), nil
}

// RootfsMounts returns the mounts of a prepared rootfs.
func (f *Fake) RootfsMounts(ctx context.Context, containerID string) ([]Mount, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rootfs[containerID]; !ok {
		return nil, fmt.Errorf("rootfs mounts of %q: %w", containerID, errdefs.ErrNotFound)
	}
	return f.mounts(), nil
}

// RemoveRootfs forgets a rootfs; an absent one is fine.
func (f *Fake) RemoveRootfs(ctx context.Context, containerID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	gate, failure := f.removeRootfsGate, f.removeRootfsErr
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if failure != nil {
		return failure
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.rootfs, containerID)
	return nil
}

// Rootfs reports the image id of a container's prepared rootfs.
func (f *Fake) Rootfs(containerID string) (imageID string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	imageID, ok = f.rootfs[containerID]
	return imageID, ok
}

func (f *Fake) mounts() []Mount {
	return []Mount{{Type: "bind", Source: f.RootfsSource, Options: []string{"rbind", "rw"}}}
}

// Pull "pulls" an image the Fake holds (added with Add): it answers its id
// and counts the pull; any other ref is not found in the registry.
func (f *Fake) Pull(ctx context.Context, ref string, _ *runtimeapi.AuthConfig) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.find(ref)
	if !ok {
		return "", fmt.Errorf("pull image %q: %w", ref, errdefs.ErrNotFound)
	}
	f.pulls++
	return img.ID, nil
}

// Pulls is how many Pull calls found their image.
func (f *Fake) Pulls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pulls
}

// Remove forgets an added image (its volumes and rootfs stay).
func (f *Fake) Remove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.images, id)
}

// PrepareImageVolume records the image volume of an added image; its mount
// is a read-only bind of RootfsSource.
func (f *Fake) PrepareImageVolume(ctx context.Context, imageID string) ([]Mount, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.images[imageID]; !ok {
		return nil, fmt.Errorf("image volume of %s: %w", imageID, errdefs.ErrNotFound)
	}
	f.volumes[ImageVolumeKey(imageID)] = true
	return []Mount{{Type: "bind", Source: f.RootfsSource, Options: []string{"rbind", "ro"}}}, nil
}

// RemoveImageVolume forgets an image volume; an absent one is fine.
func (f *Fake) RemoveImageVolume(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.volumes, key)
	return nil
}

// ImageVolumes lists the prepared image volumes.
func (f *Fake) ImageVolumes(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]string, 0, len(f.volumes))
	for k := range f.volumes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}
