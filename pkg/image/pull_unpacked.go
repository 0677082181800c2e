package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/aurae-runtime/aurae-cri/internal/timing"
)

// maxMetaBlob bounds the manifests, indexes and configs the pull of an
// unpacked image reads from a registry into memory; a larger one goes
// through containerd's pull.
const maxMetaBlob = 4 << 20

// errNotUnpacked says the image needs more than pullUnpacked does: its
// layers are not all unpacked, or it is of a kind (a nested index, a
// legacy config, a descriptor without a platform in an index) left to
// containerd's pull.
var errNotUnpacked = errors.New("the image is not one whose layers are unpacked already")

// unpackedPull is what pullUnpacked wrote: the image's target, its meta
// (id, chain id, size, config) for the cache.
type unpackedPull struct {
	target ocispec.Descriptor
	meta   imageMeta
}

// pullUnpacked pulls an image whose layers are unpacked already (another
// image shares them, or it is pulled again), as containerd's pull would,
// in fewer calls: it reads the index (if any), the manifest for the
// service's platform and the config from the registry into memory,
// computes the labels containerd's garbage collection follows (the
// index's and manifest's references to their children, the config's to
// the unpacked snapshot) and commits each blob with its labels in one
// message, all at once, beside a check that the snapshot of the image's
// layers is committed. containerd's pull re-reads each blob it wrote from
// the content store, labels it in a call of its own, asks containerd for
// the snapshotter's capabilities and prepares the top snapshot to learn
// that it exists: some twenty calls against six.
//
// The blobs are written in the context leased returns, which carries the
// lease that holds them until the image's records do. It fails with
// errNotUnpacked (wrapped) when the image needs containerd's pull; the
// blobs written by then stay, under the lease, for that pull to find. The
// target the reference resolved to is returned with any error after the
// resolution.
func (s *Service) pullUnpacked(ctx context.Context, resolver remotes.Resolver, ref string, leased func() (context.Context, error), steps *timing.Steps) (up unpackedPull, err error) {
	conn, ok := s.client.Conn().(*grpc.ClientConn)
	if !ok || conn == nil {
		return unpackedPull{}, fmt.Errorf("%w: no gRPC connection to write through", errNotUnpacked)
	}
	name, target, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return unpackedPull{}, fmt.Errorf("%w: resolve: %w", errNotUnpacked, err)
	}
	// Whatever follows, the caller learns what the reference resolved to.
	defer func() {
		if err != nil {
			up.target = target
		}
	}()
	steps.Done("resolve")
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return unpackedPull{}, fmt.Errorf("%w: fetcher: %w", errNotUnpacked, err)
	}
	blobs := &fetchedBlobs{fetcher: fetcher, data: map[digest.Digest][]byte{}}

	// The target, then the manifest for the platform, then its config:
	// the blobs containerd's pull (one manifest) writes.
	write := []ocispec.Descriptor{target}
	mdesc := target
	switch target.MediaType {
	case ocispec.MediaTypeImageIndex, images.MediaTypeDockerSchema2ManifestList:
		if mdesc, err = blobs.platformManifest(ctx, target, s.platform); err != nil {
			return unpackedPull{}, err
		}
		write = append(write, mdesc)
	case ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
	default:
		return unpackedPull{}, fmt.Errorf("%w: target media type %q", errNotUnpacked, target.MediaType)
	}
	var manifest ocispec.Manifest
	if err := blobs.decode(ctx, mdesc, &manifest); err != nil {
		return unpackedPull{}, err
	}
	switch manifest.Config.MediaType {
	case ocispec.MediaTypeImageConfig, images.MediaTypeDockerSchema2Config:
	default:
		return unpackedPull{}, fmt.Errorf("%w: config media type %q", errNotUnpacked, manifest.Config.MediaType)
	}
	write = append(write, manifest.Config)
	var spec ocispec.Image
	if err := blobs.decode(ctx, manifest.Config, &spec); err != nil {
		return unpackedPull{}, err
	}
	if err := checkUnpackable(manifest, spec); err != nil {
		return unpackedPull{}, err
	}
	size, err := (&images.Image{Target: target}).Size(ctx, blobs, s.platform)
	if err != nil {
		return unpackedPull{}, fmt.Errorf("%w: size: %w", errNotUnpacked, err)
	}
	meta := newImageMeta(manifest.Config.Digest, spec, size)

	// Each blob with the labels containerd's pull gives it, but the
	// distribution source (pullContentStore).
	labels := map[digest.Digest]map[string]string{
		manifest.Config.Digest: {"containerd.io/gc.ref.snapshot." + s.snapshotter: meta.chainID},
	}
	for _, d := range write[:len(write)-1] {
		l, err := childLabels(ctx, blobs, d)
		if err != nil {
			return unpackedPull{}, fmt.Errorf("%w: %w", errNotUnpacked, err)
		}
		labels[d.Digest] = l
	}
	steps.Done("fetch")
	if ctx, err = leased(); err != nil {
		return unpackedPull{}, err
	}
	steps.Done("lease")
	var g errgroup.Group
	var unpacked error
	g.Go(func() error {
		info, err := s.client.SnapshotService(s.snapshotter).Stat(ctx, meta.chainID)
		switch {
		case errdefs.IsNotFound(err):
			unpacked = fmt.Errorf("%w: no snapshot %s", errNotUnpacked, meta.chainID)
		case err != nil:
			unpacked = fmt.Errorf("%w: snapshot %s: %w", errNotUnpacked, meta.chainID, err)
		case info.Kind != snapshots.KindCommitted:
			unpacked = fmt.Errorf("%w: snapshot %s is %s", errNotUnpacked, meta.chainID, info.Kind)
		}
		return nil
	})
	store := contentapi.NewContentClient(conn)
	for _, d := range write {
		g.Go(func() error {
			return s.commitBlob(ctx, store, d, blobs.data[d.Digest], labels[d.Digest])
		})
	}
	if err := g.Wait(); err != nil {
		return unpackedPull{}, err
	}
	steps.Done("write")
	if unpacked != nil {
		return unpackedPull{}, unpacked
	}
	return unpackedPull{target: target, meta: meta}, nil
}

// checkUnpackable checks what of a manifest and its config a pull of its
// unpacked layers writes or names: as many layers as diff ids, at least
// one, every digest valid (the layers' go into the manifest's labels
// unfetched). What fails goes through containerd's pull, which fetches
// and checks each layer it needs.
func checkUnpackable(manifest ocispec.Manifest, spec ocispec.Image) error {
	diffIDs := spec.RootFS.DiffIDs
	if len(diffIDs) == 0 || len(diffIDs) != len(manifest.Layers) {
		return fmt.Errorf("%w: %d layers, %d diff ids", errNotUnpacked, len(manifest.Layers), len(diffIDs))
	}
	for i, d := range diffIDs {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("%w: diff id %q: %w", errNotUnpacked, d, err)
		}
		if err := manifest.Layers[i].Digest.Validate(); err != nil {
			return fmt.Errorf("%w: layer %q: %w", errNotUnpacked, manifest.Layers[i].Digest, err)
		}
		if manifest.Layers[i].Size < 0 {
			return fmt.Errorf("%w: layer %s of %d bytes", errNotUnpacked, manifest.Layers[i].Digest, manifest.Layers[i].Size)
		}
	}
	return nil
}

// commitBlob writes data as the blob d with labels in one message: the
// content service takes a commit that carries the data, its size, its
// digest and the labels. A blob that exists already (the write is then
// refused, and the blob leased) gets the labels it lacks.
func (s *Service) commitBlob(ctx context.Context, store contentapi.ContentClient, d ocispec.Descriptor, data []byte, labels map[string]string) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stream's time (its opening is timed by the client's
	// interceptor as "Content/Write").
	defer func(t0 time.Time) { timing.CallsFrom(ctx).Add("Content/Commit", time.Since(t0)) }(time.Now())
	stream, err := store.Write(wctx)
	if err != nil {
		return fmt.Errorf("write blob %s: %w", d.Digest, errgrpc.ToNative(err))
	}
	err = stream.Send(&contentapi.WriteContentRequest{
		Action:   contentapi.WriteAction_COMMIT,
		Ref:      remotes.MakeRefKey(ctx, d),
		Total:    d.Size,
		Expected: d.Digest.String(),
		Data:     data,
		Labels:   labels,
	})
	if err == nil {
		_, err = stream.Recv()
	}
	_ = stream.CloseSend()
	err = errgrpc.ToNative(err)
	if !errdefs.IsAlreadyExists(err) {
		if err != nil {
			return fmt.Errorf("write blob %s: %w", d.Digest, err)
		}
		return nil
	}
	cs := s.client.ContentStore()
	info, err := cs.Info(ctx, d.Digest)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	var fields []string
	for k, v := range labels {
		if info.Labels[k] != v {
			fields = append(fields, "labels."+k)
		}
	}
	if len(fields) == 0 {
		return nil
	}
	if _, err := cs.Update(ctx, content.Info{Digest: d.Digest, Labels: labels}, fields...); err != nil {
		return fmt.Errorf("label blob %s: %w", d.Digest, err)
	}
	return nil
}

// childLabels are the labels containerd's pull puts on the index or
// manifest d, naming its children for the garbage collection: those
// images.SetChildrenMappedLabels computes, caught instead of sent.
func childLabels(ctx context.Context, p content.Provider, d ocispec.Descriptor) (map[string]string, error) {
	var caught labelCatcher
	if _, err := images.SetChildrenMappedLabels(&caught, images.ChildrenHandler(p), nil)(ctx, d); err != nil {
		return nil, fmt.Errorf("children of %s: %w", d.Digest, err)
	}
	return caught.labels, nil
}

// labelCatcher is a content.Manager whose Update keeps the labels it is
// given; nothing else of it is called.
type labelCatcher struct {
	content.Manager
	labels map[string]string
}

func (c *labelCatcher) Update(_ context.Context, info content.Info, _ ...string) (content.Info, error) {
	c.labels = info.Labels
	return info, nil
}

// fetchedBlobs is a content.Provider of the blobs read from a registry by
// one pull, each read once, whole, of at most maxMetaBlob bytes, and
// checked against its descriptor's size and digest.
type fetchedBlobs struct {
	fetcher remotes.Fetcher
	mu      sync.Mutex
	data    map[digest.Digest][]byte
}

func (b *fetchedBlobs) get(ctx context.Context, d ocispec.Descriptor) ([]byte, error) {
	b.mu.Lock()
	data, ok := b.data[d.Digest]
	b.mu.Unlock()
	if ok {
		return data, nil
	}
	if err := d.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%w: digest %q: %w", errNotUnpacked, d.Digest, err)
	}
	if d.Size <= 0 || d.Size > maxMetaBlob {
		return nil, fmt.Errorf("%w: %s of %d bytes", errNotUnpacked, d.Digest, d.Size)
	}
	rc, err := b.fetcher.Fetch(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("%w: fetch %s: %w", errNotUnpacked, d.Digest, err)
	}
	defer func() { _ = rc.Close() }()
	data, err = io.ReadAll(io.LimitReader(rc, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", errNotUnpacked, d.Digest, err)
	}
	if int64(len(data)) != d.Size || d.Digest.Algorithm().FromBytes(data) != d.Digest {
		return nil, fmt.Errorf("%w: %s: %d bytes of another digest from the registry", errNotUnpacked, d.Digest, len(data))
	}
	b.mu.Lock()
	b.data[d.Digest] = data
	b.mu.Unlock()
	return data, nil
}

func (b *fetchedBlobs) decode(ctx context.Context, d ocispec.Descriptor, v any) error {
	data, err := b.get(ctx, d)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %s: %w", errNotUnpacked, d.Digest, err)
	}
	return nil
}

// platformManifest is the manifest of index d that containerd's pull
// picks for platform: the best of those whose descriptor names a platform
// it matches.
func (b *fetchedBlobs) platformManifest(ctx context.Context, d ocispec.Descriptor, platform platforms.MatchComparer) (ocispec.Descriptor, error) {
	var idx ocispec.Index
	if err := b.decode(ctx, d, &idx); err != nil {
		return ocispec.Descriptor{}, err
	}
	var match []ocispec.Descriptor
	for _, m := range idx.Manifests {
		switch m.MediaType {
		case ocispec.MediaTypeImageManifest, images.MediaTypeDockerSchema2Manifest:
		case ocispec.MediaTypeImageIndex, images.MediaTypeDockerSchema2ManifestList:
			return ocispec.Descriptor{}, fmt.Errorf("%w: nested index", errNotUnpacked)
		default:
			continue
		}
		if m.Platform == nil {
			return ocispec.Descriptor{}, fmt.Errorf("%w: manifest %s names no platform", errNotUnpacked, m.Digest)
		}
		// Every manifest's digest goes into the index's labels.
		if err := m.Digest.Validate(); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%w: manifest %q: %w", errNotUnpacked, m.Digest, err)
		}
		if platform.Match(*m.Platform) {
			match = append(match, m)
		}
	}
	if len(match) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("%w: no manifest for the platform", errNotUnpacked)
	}
	slices.SortStableFunc(match, func(a, b ocispec.Descriptor) int {
		switch {
		case platform.Less(*a.Platform, *b.Platform):
			return -1
		case platform.Less(*b.Platform, *a.Platform):
			return 1
		}
		return 0
	})
	return match[0], nil
}

// ReaderAt is the content.Provider of the fetched blobs.
func (b *fetchedBlobs) ReaderAt(ctx context.Context, d ocispec.Descriptor) (content.ReaderAt, error) {
	data, err := b.get(ctx, d)
	if err != nil {
		return nil, err
	}
	return blobReader{bytes.NewReader(data)}, nil
}

type blobReader struct{ *bytes.Reader }

func (blobReader) Close() error { return nil }
