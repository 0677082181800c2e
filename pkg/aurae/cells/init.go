package cells

import (
	"fmt"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"os"
	"strings"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/nsexec"
	"golang.org/x/sys/unix"
)

// The cell init is auraed's own binary, started in the cell's new
// namespaces. It makes the mount namespace private and mounts a /proc of the
// cell's pid namespace, sets the hostname, brings up loopback, says it is
// ready and then reaps orphans as pid 1 until the cell is freed. Executables
// join its namespaces.
const (
	envCellInit     = "_AURAE_CELL_INIT"
	envCellHostname = "_AURAE_CELL_HOSTNAME"
)

// MaybeRunCellInit turns this process into a cell init when auraed started it
// as one, and never returns then. It must be the first call in main (and in
// TestMain of packages that allocate isolated cells).
func MaybeRunCellInit() {
	flags, ok := os.LookupEnv(envCellInit)
	if !ok {
		return
	}
	ready := os.NewFile(uintptr(nsexec.FirstExtraFD), "ready")
	if err := setupCellInit(flags, os.Getenv(envCellHostname)); err != nil {
		_, _ = fmt.Fprintf(ready, "cell init: %v", err)
		os.Exit(1)
	}
	// Only Free (SIGKILL) ends a cell.
	linux.ReadyAndReap(ready)
}

func setupCellInit(flags, hostname string) error {
	has := func(f string) bool {
		for _, x := range strings.Split(flags, ",") {
			if x == f {
				return true
			}
		}
		return false
	}
	if has("process") {
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make mounts private: %w", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
		if hostname != "" {
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				return fmt.Errorf("set hostname: %w", err)
			}
		}
	}
	if has("network") {
		if err := linux.LoopbackUp(); err != nil {
			return err
		}
	}
	return nil
}
