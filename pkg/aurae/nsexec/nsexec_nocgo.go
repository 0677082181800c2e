//go:build !cgo

// Without cgo there is no C constructor, so the shim that joins namespaces
// before the Go runtime starts cannot exist: this file gives the package the
// same API, starts processes that join no namespace with the ptrace path
// (startTraced in spec.go), and refuses the rest with
// ErrNotSupported. The static auraed of the VM guest image is built this way.

package nsexec

import (
	"errors"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
)

// ErrNotSupported is returned for a Spec that joins, unshares or creates
// namespaces, or passes extra files, in a binary built without cgo.
var ErrNotSupported = fmt.Errorf("nsexec: namespaces need auraed built with cgo (this one is CGO_ENABLED=0): %w: %w",
	errors.ErrUnsupported, errdefs.ErrNotImplemented)

// Start starts the process; it returns once the command was exec'd (or
// failed to be). Only specs that join no namespace can be started.
func Start(spec Spec) (*os.Process, error) {
	if len(spec.Args) == 0 {
		return nil, errors.New("nsexec: no arguments")
	}
	if !spec.needsShim() {
		return startTraced(spec)
	}
	return nil, fmt.Errorf("start %s: %w", spec.Path, ErrNotSupported)
}
