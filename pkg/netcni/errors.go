package netcni

import (
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
)

// Sentinel errors. Status and Setup wrap them with the detail (the directory,
// the plugin) so that the CRI can report NetworkReady=false with a reason.
var (
	// ErrNoConfig: the conf dir is missing or holds no CNI network config.
	ErrNoConfig = errors.New("no CNI network config")
	// ErrInvalidConfig: a CNI config file in the conf dir does not parse.
	ErrInvalidConfig = errors.New("invalid CNI network config")
	// ErrPluginMissing: a plugin named by the loaded config is not in any bin dir.
	ErrPluginMissing = errors.New("CNI plugin binary missing")
	// ErrInvalidArgs: a CNI_ARGS name or value cannot be passed as it is
	// (';', '=', control characters); it is an invalid argument.
	ErrInvalidArgs = fmt.Errorf("invalid CNI argument: %w", errdefs.ErrInvalidArgument)
)
