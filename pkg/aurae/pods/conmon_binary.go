package pods

import (
	"context"
	"log/slog"
	"os"
)

// PinnedConmon is where `make deps` installs the lean conmon
// (hack/conmon/build.sh: statically linked, 40% of the private memory of
// Debian's dynamically linked conmon per container). DefaultConmon takes it
// when it exists.
const PinnedConmon = "/opt/aurae/bin/conmon"

// DefaultConmon is the monitor used when none is configured: the pinned
// conmon when installed, else "conmon" on PATH (Debian's).
func DefaultConmon() string { return defaultConmon(PinnedConmon) }

func defaultConmon(pinned string) string {
	if fi, err := os.Stat(pinned); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return pinned
	}
	return "conmon"
}

// logConmon says which monitor binary the service runs: the configured one,
// the pinned one, or the fallback on PATH and why.
func logConmon(ctx context.Context, log *slog.Logger, configured bool, path string) {
	switch {
	case configured:
		log.InfoContext(ctx, "container monitor", "path", path, "source", "configured")
	case path == PinnedConmon:
		log.InfoContext(ctx, "container monitor", "path", path, "source", "pinned")
	default:
		log.InfoContext(ctx, "container monitor", "path", path, "source", "PATH",
			"pinned", PinnedConmon, "reason", "the pinned conmon is not installed (make conmon)")
	}
}
