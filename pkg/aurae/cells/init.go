package cells

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/nsexec"
)

// The cell init is auraed's own binary, started in the cell's new
// namespaces. It makes the mount namespace private and mounts a /proc of the
// cell's pid namespace, sets the hostname, brings up loopback, says it is
// ready and then reaps orphans as pid 1 until the cell is freed. Executables
// join its namespaces.
const (
	// InitEnv selects the cell init role (see pkg/aurae/roles) and carries
	// the namespaces the cell owns ("process", "network"). The name is a
	// contract between an auraed and the cell inits it started: keep it.
	InitEnv         = "_AURAE_CELL_INIT"
	envCellHostname = "_AURAE_CELL_HOSTNAME"
)

// RunInit is the cell init role: the life of this binary when Allocate
// started it (through nsexec, with InitEnv set) in an isolated cell's new
// namespaces. It sets the cell up, reports on the ready pipe and then reaps
// orphans until Free kills it; it never returns. Only roles.Run calls it.
func RunInit() {
	flags := os.Getenv(InitEnv)
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
