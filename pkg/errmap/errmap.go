// Package errmap maps the sentinel errors of github.com/containerd/errdefs,
// which handlers wrap, to gRPC status codes, once, at the edge of a server.
package errmap

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code is the gRPC code for err.
func Code(err error) codes.Code {
	var se interface{ GRPCStatus() *status.Status }
	switch {
	case err == nil:
		return codes.OK
	case errors.As(err, &se):
		return se.GRPCStatus().Code()
	case errdefs.IsInvalidArgument(err):
		return codes.InvalidArgument
	case errdefs.IsNotFound(err):
		return codes.NotFound
	case errdefs.IsAlreadyExists(err):
		return codes.AlreadyExists
	case errdefs.IsFailedPrecondition(err), errdefs.IsConflict(err):
		return codes.FailedPrecondition
	case errdefs.IsUnavailable(err):
		return codes.Unavailable
	case errdefs.IsNotImplemented(err):
		return codes.Unimplemented
	case errdefs.IsUnauthorized(err):
		return codes.Unauthenticated
	case errdefs.IsPermissionDenied(err):
		return codes.PermissionDenied
	case errdefs.IsResourceExhausted(err):
		return codes.ResourceExhausted
	case errdefs.IsOutOfRange(err):
		return codes.OutOfRange
	case errdefs.IsAborted(err):
		return codes.Aborted
	case errors.Is(err, context.DeadlineExceeded), errdefs.IsDeadlineExceeded(err):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled), errdefs.IsCanceled(err):
		return codes.Canceled
	default:
		return codes.Internal
	}
}

// ToGRPC turns err into a gRPC status error carrying its message; a status
// error is returned as it is.
func ToGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}
