package errmap

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToGRPC(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("cell %q: %w", "x", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("cell: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("cell: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("cell: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("pull: %w", errdefs.ErrUnauthenticated), codes.Unauthenticated},
		{fmt.Errorf("stop: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{status.Error(codes.Aborted, "as is"), codes.Aborted},
		{errors.New("plain"), codes.Internal},
	} {
		got := status.Code(ToGRPC(tc.err))
		if got != tc.code {
			t.Errorf("%v: got %v, want %v", tc.err, got, tc.code)
		}
		if tc.err != nil && status.Convert(ToGRPC(tc.err)).Message() != tc.err.Error() && tc.code != codes.Aborted {
			t.Errorf("%v: message lost", tc.err)
		}
	}
}
