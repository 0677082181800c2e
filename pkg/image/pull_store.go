package image

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
)

// distributionSourceLabel is the prefix of the labels containerd's pull
// puts on every blob, naming the registries and repositories it came
// from ("containerd.io/distribution.source.<host>").
const distributionSourceLabel = "labels.containerd.io/distribution.source."

// pullContentStore is the content store a pull writes through: containerd's,
// but for the distribution source labels. containerd's pull rewrites that
// label on every blob of the image at every pull, a metadata commit each
// (three of a pull's twelve for a one-layer image), for cross-repository
// blob mounts when pushing, which aurae-cri never does; nothing it or
// containerd's garbage collection reads depends on them.
type pullContentStore struct {
	content.Store
}

// Update is containerd's, except for an update of distribution source
// labels alone, which is dropped (the info asked for is returned; the
// pull does not read it).
func (s pullContentStore) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	if onlyDistributionSource(fieldpaths) {
		return info, nil
	}
	return s.Store.Update(ctx, info, fieldpaths...)
}

// onlyDistributionSource tells whether fieldpaths name distribution
// source labels and nothing else.
func onlyDistributionSource(fieldpaths []string) bool {
	if len(fieldpaths) == 0 {
		return false
	}
	for _, f := range fieldpaths {
		if !strings.HasPrefix(f, distributionSourceLabel) {
			return false
		}
	}
	return true
}
