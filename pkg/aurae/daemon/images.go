package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/legacy"
	"github.com/aurae-runtime/aurae-cri/pkg/containerdproc"
	"github.com/aurae-runtime/aurae-cri/pkg/image"
)

// ImageNamespace is the containerd namespace of the images auraed pulls
// for runtime.Core's RunCell, apart from aurae-cri's.
const ImageNamespace = "aurae-runtime"

// images opens the image store (pkg/image over containerd, started by
// containerdproc when none answers) on first use, and keeps it until Close.
type images struct {
	cfg ImagesConfig
	dir string
	log *slog.Logger

	mu    sync.Mutex
	ctrd  *containerdproc.Proc
	store *image.Service
}

// ImagesConfig says where auraed finds containerd and registries.
type ImagesConfig struct {
	// ContainerdAddress is the containerd to use when it answers; else
	// auraed starts one under its state dir. Empty with Disabled unset
	// always starts one.
	ContainerdAddress string
	// RegistryConfigDir is a hosts.toml directory (pkg/image).
	RegistryConfigDir string
	// Disabled: auraed pulls no images (RunCell answers FailedPrecondition).
	Disabled bool
}

func (i *images) open(ctx context.Context) (legacy.ImageStore, error) {
	if i.cfg.Disabled {
		return nil, fmt.Errorf("this auraed pulls no images (started without an image store): %w", errdefs.ErrFailedPrecondition)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.store != nil {
		return i.store, nil
	}
	ctrd, err := containerdproc.Ensure(ctx, containerdproc.Config{Address: i.cfg.ContainerdAddress, StateDir: i.dir, Logger: i.log})
	if err != nil {
		return nil, fmt.Errorf("containerd for images: %w: %w", err, errdefs.ErrFailedPrecondition)
	}
	store, err := image.New(ctx, image.Options{
		Address: ctrd.Address(), Namespace: ImageNamespace, RegistryConfigDir: i.cfg.RegistryConfigDir, Logger: i.log,
	})
	if err != nil {
		_ = ctrd.Close()
		return nil, fmt.Errorf("image store: %w", err)
	}
	i.ctrd, i.store = ctrd, store
	return store, nil
}

// Close closes the image store and stops a containerd auraed started.
func (i *images) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	var errs []error
	if i.store != nil {
		errs = append(errs, i.store.Close())
	}
	if i.ctrd != nil {
		errs = append(errs, i.ctrd.Close())
	}
	i.store, i.ctrd = nil, nil
	return errors.Join(errs...)
}
