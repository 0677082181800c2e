// Package roles chooses, in one place, the role the daemon binary plays.
//
// auraed and aurae-cri (which embeds auraed) re-execute themselves
// (/proc/self/exe) as helpers. As with runc's `runc init`, a helper learns
// its role at the top of main, in Run, plays it and exits without reaching
// the rest of main; no init function decides a role. Test binaries whose
// tests start helpers (pods, cells) call Run first in their TestMain.
//
// The roles, in the order they are checked:
//
//   - nsexec (_AURAE_NSEXEC, pkg/aurae/nsexec): puts a process in a cell's
//     namespaces and execs its command. It is the one role that runs before
//     main: nsexec.c's C constructor plays it before the Go runtime starts,
//     because a multi-threaded process cannot join a mount namespace. Any
//     binary that links pkg/aurae/nsexec with cgo can play it; Run never sees it.
//   - tty exec shim (pods.ExecShimEnv): pods.RunExecShim, started by a tty
//     exec to run `runc exec --detach --tty` and reap the command.
//   - pod namespace holder (pods.HolderEnv): pods.RunHolder, started in a
//     pod's new namespaces to set them up; it then confines itself and
//     execs a minimal reaper from a sealed memfd, which keeps them.
//   - cell init (cells.InitEnv): cells.RunInit, started through nsexec in
//     an isolated cell's new namespaces to set them up and reap orphans.
//   - virtiofsd launcher (hypervisor.VirtiofsdEnv): hypervisor.RunVirtiofsd,
//     started by a VM's start for each of its shares: it confines its view
//     of the share and itself (a seccomp filter), then execs virtiofsd.
//   - guest serving auraed (guest.ServeEnv), with Guest only:
//     guest.RunServer, started by the guest init to serve the Aurae API in a
//     microVM.
//   - guest init (PID 1, or --guest as the first argument), with Guest only:
//     guest.RunInit, auraed as a microVM's init. It is checked last: a holder
//     or cell init in a new pid namespace is PID 1 too.
//
// The environment variables' names are a contract between a parent and the
// helpers it started, which may outlive it (holders and cell inits do, across
// an auraed upgrade): they do not change.
package roles

import (
	"os"
	"slices"

	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cells"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/guest"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/pods"
	"github.com/aurae-runtime/aurae-cri/pkg/hypervisor"
)

// Option widens the set of roles Run chooses from.
type Option int

// Guest lets Run choose the guest roles too, the guest init and the guest's
// serving auraed. auraed passes it; aurae-cri does not, so it stays itself
// when it is PID 1 (in a container).
const Guest Option = 1

// role is one helper role: chosen says whether this process plays it, run
// plays it and never returns.
type role struct {
	name   string
	guest  bool // only with the Guest option
	chosen func() bool
	run    func()
}

// table lists the roles Run dispatches, in the order they are checked (see
// the package comment; nsexec is not here, it runs before main).
var table = []role{
	{name: "tty exec shim", chosen: envSet(pods.ExecShimEnv), run: pods.RunExecShim},
	{name: "pod namespace holder", chosen: envSet(pods.HolderEnv), run: pods.RunHolder},
	{name: "cell init", chosen: envSet(cells.InitEnv), run: cells.RunInit},
	{name: "virtiofsd launcher", chosen: envSet(hypervisor.VirtiofsdEnv), run: hypervisor.RunVirtiofsd},
	{name: "guest serving auraed", guest: true, chosen: func() bool { return os.Getenv(guest.ServeEnv) != "" }, run: guest.RunServer},
	{name: "guest init", guest: true, chosen: isGuestInit, run: guest.RunInit},
}

// Run plays the helper role this process was started in, if any, and then
// never returns; otherwise it returns and main goes on as the daemon. It
// must be the first call in main, and in TestMain of the packages whose
// tests start helpers (pods' holders and exec shims, cells' inits).
func Run(opts ...Option) {
	withGuest := slices.Contains(opts, Guest)
	for _, r := range table {
		if (!r.guest || withGuest) && r.chosen() {
			r.run()
			panic("roles: the " + r.name + " role returned")
		}
	}
}

func envSet(name string) func() bool {
	return func() bool {
		_, ok := os.LookupEnv(name)
		return ok
	}
}

func isGuestInit() bool {
	return os.Getpid() == 1 || (len(os.Args) > 1 && os.Args[1] == "--guest")
}
