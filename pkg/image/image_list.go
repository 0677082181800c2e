package image

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// streamChunk is how many images one StreamImages message carries.
const streamChunk = 100

// ListImages lists the images, or the one the filter's image spec names
// (by tag, digest or id).
func (s *Service) ListImages(ctx context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	imgs, err := s.listFiltered(ctx, r.GetFilter())
	if err != nil {
		return nil, toStatus(err)
	}
	return &runtimeapi.ListImagesResponse{Images: imgs}, nil
}

// StreamImages sends the images of ListImages in chunks.
func (s *Service) StreamImages(r *runtimeapi.StreamImagesRequest, stream runtimeapi.ImageService_StreamImagesServer) error {
	imgs, err := s.listFiltered(stream.Context(), r.GetFilter())
	if err != nil {
		return toStatus(err)
	}
	for len(imgs) > 0 {
		n := min(len(imgs), streamChunk)
		if err := stream.Send(&runtimeapi.StreamImagesResponse{Images: imgs[:n]}); err != nil {
			return toStatus(fmt.Errorf("stream images: %w", err))
		}
		imgs = imgs[n:]
	}
	return nil
}

// List returns every local image.
func (s *Service) List(ctx context.Context) ([]Image, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	imgs, err := s.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return imgs, nil
}

func (s *Service) listFiltered(ctx context.Context, filter *runtimeapi.ImageFilter) ([]*runtimeapi.Image, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	if spec := filter.GetImage().GetImage(); spec != "" {
		img, err := s.resolve(ctx, spec)
		if errdefs.IsNotFound(err) {
			return []*runtimeapi.Image{}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list images %q: %w", spec, err)
		}
		return []*runtimeapi.Image{img.toCRI()}, nil
	}
	imgs, err := s.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]*runtimeapi.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, img.toCRI())
	}
	s.logger.DebugContext(ctx, "listed images", "count", len(out))
	return out, nil
}
