package cri

import "github.com/containerd/errdefs"

var (
	errInvalid       = errdefs.ErrInvalidArgument
	errPrecondition  = errdefs.ErrFailedPrecondition
	errAlreadyExists = errdefs.ErrAlreadyExists
)
