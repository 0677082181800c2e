package image

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageStatus returns the image the spec names (by tag, digest or id), or
// no image (and no error) when it is not present.
func (s *Service) ImageStatus(ctx context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	spec := r.GetImage().GetImage()
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	img, err := s.resolve(ctx, spec)
	if errdefs.IsNotFound(err) {
		s.logger.DebugContext(ctx, "image not present", "image", spec)
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(fmt.Errorf("image status %q: %w", spec, err))
	}
	resp := &runtimeapi.ImageStatusResponse{Image: img.toCRI()}
	if r.GetVerbose() {
		resp.Info = img.verboseInfo()
	}
	return resp, nil
}

// toCRI converts an image to the CRI form: uid when the config's user is
// numeric, username otherwise.
func (img Image) toCRI() *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:          img.ID,
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        uint64(max(img.Size, 0)),
		Pinned:      img.Pinned,
	}
	uid, name := UserFromConfig(img.Config.User)
	if uid != nil {
		out.Uid = &runtimeapi.Int64Value{Value: *uid}
	}
	out.Username = name
	return out
}

// UserFromConfig splits an image config's User ("uid", "name", "uid:gid",
// "name:group") into a numeric uid or a user name.
func UserFromConfig(user string) (uid *int64, name string) {
	if user == "" {
		return nil, ""
	}
	user, _, _ = strings.Cut(user, ":")
	if n, err := strconv.ParseInt(user, 10, 64); err == nil {
		return &n, ""
	}
	return nil, user
}

// verboseInfo is the "info" entry of a verbose ImageStatus, as containerd's
// CRI plugin writes it.
func (img Image) verboseInfo() map[string]string {
	b, err := json.Marshal(struct {
		ChainID   string        `json:"chainID"`
		ImageSpec ocispec.Image `json:"imageSpec"`
	}{img.ChainID, img.Spec})
	if err != nil {
		return map[string]string{"info": err.Error()}
	}
	return map[string]string{"info": string(b)}
}
