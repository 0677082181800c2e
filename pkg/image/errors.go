package image

import (
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// toStatus maps an error to a gRPC status at the edge of the CRI RPCs,
// through the project's errmap. Registry credentials that are missing or
// rejected are Unauthenticated.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if errdefs.IsUnauthorized(err) {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	return errmap.ToGRPC(err)
}
