package image

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is what the container code needs to know of a local image.
type Image struct {
	// ID is the digest of the image config, "sha256:...".
	ID string
	// ChainID identifies the image's top layer snapshot.
	ChainID string
	// RepoTags and RepoDigests are the normalized references of the image
	// ("docker.io/library/busybox:latest", "docker.io/library/busybox@sha256:...").
	RepoTags    []string
	RepoDigests []string
	// Size is the size of the image's content (manifest, config and
	// compressed layers), in bytes.
	Size int64
	// Config is the OCI image config: Entrypoint, Cmd, Env, WorkingDir,
	// User, ExposedPorts, Volumes, StopSignal, Labels.
	Config ocispec.ImageConfig
	// Spec is the whole image config document (platform, history, rootfs).
	Spec ocispec.Image
	// Target is the descriptor the image records point at (a manifest or an
	// index).
	Target ocispec.Descriptor
	// Pinned images are never garbage collected by the kubelet.
	Pinned bool

	// records are the names of the containerd image records of this image.
	records []string
}

// imageMeta is what is read from the content store for one target.
type imageMeta struct {
	id      string
	chainID string
	size    int64
	spec    ocispec.Image
}

// NormalizeRef parses a reference the way containerd's CRI plugin does:
// "busybox" becomes "docker.io/library/busybox:latest", and a reference with a
// digest keeps only the digest. It fails with errdefs.ErrInvalidArgument.
func NormalizeRef(ref string) (reference.Named, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty image reference: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := digest.Parse(ref); err == nil {
		return nil, fmt.Errorf("image reference %q is an image id, not a name: %w", ref, errdefs.ErrInvalidArgument)
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("parse image reference %q: %w: %w", ref, errdefs.ErrInvalidArgument, err)
	}
	return named, nil
}

// Resolve finds a local image by reference, by repo digest or by id (a full
// "sha256:..." id, or a unique prefix of its hex part). It fails with
// errdefs.ErrNotFound when there is none.
func (s *Service) Resolve(ctx context.Context, refOrID string) (Image, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	img, err := s.resolve(ctx, refOrID)
	if err != nil {
		return Image{}, fmt.Errorf("resolve image %q: %w", refOrID, err)
	}
	return img, nil
}

func (s *Service) resolve(ctx context.Context, refOrID string) (Image, error) {
	id, err := s.resolveID(ctx, refOrID)
	if err != nil {
		return Image{}, err
	}
	all, err := s.list(ctx)
	if err != nil {
		return Image{}, err
	}
	for _, img := range all {
		if img.ID == id {
			return img, nil
		}
	}
	return Image{}, fmt.Errorf("image %q: %w", refOrID, errdefs.ErrNotFound)
}

// resolveID maps an image spec to an image id.
func (s *Service) resolveID(ctx context.Context, refOrID string) (string, error) {
	if refOrID == "" {
		return "", fmt.Errorf("empty image reference: %w", errdefs.ErrInvalidArgument)
	}
	if d, err := digest.Parse(refOrID); err == nil {
		return d.String(), nil
	}
	if named, err := reference.ParseDockerRef(refOrID); err == nil {
		rec, err := s.record(ctx, named.String())
		switch {
		case err == nil:
			meta, err := s.metaFor(ctx, rec)
			if err != nil {
				return "", err
			}
			return meta.id, nil
		case !errdefs.IsNotFound(err):
			return "", fmt.Errorf("get image record %q: %w", named.String(), err)
		}
		// A repo digest of an image pulled by tag has no record of its
		// own (splitRef).
		if _, ok := named.(reference.Canonical); ok {
			all, err := s.list(ctx)
			if err != nil {
				return "", err
			}
			for _, img := range all {
				if slices.Contains(img.RepoDigests, named.String()) {
					return img.ID, nil
				}
			}
			return "", fmt.Errorf("image %q: %w", refOrID, errdefs.ErrNotFound)
		}
	}
	// A truncated id, as `crictl images` prints them.
	return s.idFromPrefix(ctx, refOrID)
}

func (s *Service) idFromPrefix(ctx context.Context, prefix string) (string, error) {
	prefix = strings.TrimPrefix(prefix, digest.Canonical.String()+":")
	if _, err := hex.DecodeString(prefix + prefix[:len(prefix)%2]); err != nil || len(prefix) < 4 {
		return "", fmt.Errorf("image %q: %w", prefix, errdefs.ErrNotFound)
	}
	all, err := s.list(ctx)
	if err != nil {
		return "", err
	}
	var found []string
	for _, img := range all {
		if strings.HasPrefix(strings.TrimPrefix(img.ID, digest.Canonical.String()+":"), prefix) {
			found = append(found, img.ID)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("image %q: %w", prefix, errdefs.ErrNotFound)
	case 1:
		return found[0], nil
	default:
		return "", fmt.Errorf("image id prefix %q matches %d images: %w", prefix, len(found), errdefs.ErrInvalidArgument)
	}
}

// record is the image record name, from the index when it is valid, else
// from containerd.
func (s *Service) record(ctx context.Context, name string) (images.Image, error) {
	if rec, found, ok := s.idx.record(name); ok {
		if !found {
			return images.Image{}, fmt.Errorf("image record %q: %w", name, errdefs.ErrNotFound)
		}
		return rec, nil
	}
	return s.client.ImageService().Get(ctx, name)
}

// list returns every image of the namespace, in a stable order (by id):
// from the index when it is valid (the images built from its records are
// kept until a record changes), else from containerd.
func (s *Service) list(ctx context.Context) ([]Image, error) {
	recs, gen, built, ok := s.idx.records()
	if ok && built != nil {
		return slices.Clone(built), nil
	}
	if !ok {
		var err error
		if recs, err = s.client.ImageService().List(ctx); err != nil {
			return nil, fmt.Errorf("list image records: %w", err)
		}
	}
	out, complete, err := s.group(ctx, recs)
	if err != nil {
		return nil, err
	}
	if ok && complete {
		s.idx.keep(gen, out)
	}
	return slices.Clone(out), nil
}

// group groups image records by image id, in a stable order (by id);
// complete is false when a record was left out (its content could not be
// read).
func (s *Service) group(ctx context.Context, recs []images.Image) (out []Image, complete bool, err error) {
	complete = true
	byID := map[string]*Image{}
	seen := map[string]bool{}
	for _, rec := range recs {
		seen[rec.Target.Digest.String()] = true
		meta, err := s.metaFor(ctx, rec)
		if err != nil {
			if errors.Is(err, ctx.Err()) {
				return nil, false, err
			}
			// Content being removed, or a record someone else made
			// without content: not an image we can run.
			s.logger.DebugContext(ctx, "skip image record", "image", rec.Name, "error", err)
			complete = false
			continue
		}
		img, ok := byID[meta.id]
		if !ok {
			img = &Image{
				ID:      meta.id,
				ChainID: meta.chainID,
				Size:    meta.size,
				Config:  meta.spec.Config,
				Spec:    meta.spec,
				Target:  rec.Target,
			}
			byID[meta.id] = img
		}
		img.records = append(img.records, rec.Name)
		if rec.Labels[labelPinned] == "pinned" {
			img.Pinned = true
		}
		tag, dgst := splitRef(rec.Name, rec.Target.Digest.String())
		if tag != "" {
			img.RepoTags = append(img.RepoTags, tag)
		}
		if dgst != "" {
			img.RepoDigests = append(img.RepoDigests, dgst)
		}
		if dgst != "" && tag == "" {
			// The record named by the repo digest carries the target the
			// image was pulled as.
			img.Target = rec.Target
		}
	}
	s.forgetMeta(seen)

	out = make([]Image, 0, len(byID))
	for _, img := range byID {
		slices.Sort(img.RepoTags)
		slices.Sort(img.RepoDigests)
		img.RepoDigests = slices.Compact(img.RepoDigests)
		slices.Sort(img.records)
		out = append(out, *img)
	}
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.ID, b.ID) })
	return out, complete, nil
}

// labelPinned is the label containerd's CRI plugin uses for pinned images.
const labelPinned = "io.cri-containerd.pinned"

// splitRef sorts an image record name into a repo tag or a repo digest; an
// id record ("sha256:...") is neither. A tag record pointing at target
// also gives the repo digest "repo@target": a pull by tag records the tag
// alone.
func splitRef(name, target string) (tag, dgst string) {
	parsed, err := reference.ParseAnyReference(name)
	if err != nil {
		return "", ""
	}
	if _, ok := parsed.(reference.Canonical); ok {
		return "", parsed.String()
	}
	if tagged, ok := parsed.(reference.NamedTagged); ok {
		if d, err := digest.Parse(target); err == nil {
			if canonical, err := reference.WithDigest(reference.TrimNamed(tagged), d); err == nil {
				dgst = canonical.String()
			}
		}
		return parsed.String(), dgst
	}
	return "", ""
}

// metaFor reads the config, layers and size of a record's target, once per
// target digest.
func (s *Service) metaFor(ctx context.Context, rec images.Image) (imageMeta, error) {
	key := rec.Target.Digest.String()
	s.metaMu.Lock()
	m, ok := s.meta[key]
	s.metaMu.Unlock()
	if ok {
		return m, nil
	}
	img := containerdImage(s, rec)
	cfg, err := img.Config(ctx)
	if err != nil {
		return imageMeta{}, fmt.Errorf("image %q config descriptor: %w", rec.Name, err)
	}
	if m, err = s.readMeta(ctx, img, cfg); err != nil {
		return imageMeta{}, fmt.Errorf("image %q %w", rec.Name, err)
	}
	return m, nil
}

// readMeta reads the config (described by cfg) and the size of img at
// once, and keeps them by img's target digest.
func (s *Service) readMeta(ctx context.Context, img containerd.Image, cfg ocispec.Descriptor) (imageMeta, error) {
	var size int64
	var sizeErr error
	sized := make(chan struct{})
	go func() {
		defer close(sized)
		size, sizeErr = img.Size(ctx)
	}()
	blob, err := content.ReadBlob(ctx, img.ContentStore(), cfg)
	<-sized
	if err != nil {
		return imageMeta{}, fmt.Errorf("config: %w", err)
	}
	if sizeErr != nil {
		return imageMeta{}, fmt.Errorf("size: %w", sizeErr)
	}
	var spec ocispec.Image
	if err := json.Unmarshal(blob, &spec); err != nil {
		return imageMeta{}, fmt.Errorf("config %s: %w", cfg.Digest, err)
	}
	m := newImageMeta(cfg.Digest, spec, size)
	s.keepMeta(img.Target().Digest, m)
	return m, nil
}

// newImageMeta is the meta of an image of size bytes whose config, of
// digest cfg, is spec.
func newImageMeta(cfg digest.Digest, spec ocispec.Image, size int64) imageMeta {
	return imageMeta{
		id:      cfg.String(),
		chainID: identity.ChainID(spec.RootFS.DiffIDs).String(),
		size:    size,
		spec:    spec,
	}
}

// keepMeta keeps m as the meta of the images whose records point at
// target.
func (s *Service) keepMeta(target digest.Digest, m imageMeta) {
	s.metaMu.Lock()
	s.meta[target.String()] = m
	s.metaMu.Unlock()
}

// forgetMeta drops the cached metadata of targets no record points at.
func (s *Service) forgetMeta(seen map[string]bool) {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	for k := range s.meta {
		if !seen[k] {
			delete(s.meta, k)
		}
	}
}

func containerdImage(s *Service, rec images.Image) containerd.Image {
	return containerd.NewImageWithPlatform(s.client, rec, s.platform)
}
