package cells

import (
	"fmt"
	"sync"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// cell is an allocated cell. Its spec, cgroup and init never change after
// Allocate; mu guards the executables and serialises Start against Free.
type cell struct {
	name string
	spec *cellsv0.Cell
	cg   *cgroup.Cgroup
	// init holds the cell's namespaces; nil when the cell isolates nothing,
	// or when it was lost while auraed was away.
	init *initProc
	// initLost is set when the cell had an init that is gone: its
	// namespaces are gone too, and nothing can start in it.
	initLost bool

	mu      sync.Mutex
	freeing bool
	execs   map[string]*executable
}

// initProc is a cell's init process.
type initProc struct {
	pid   int
	start uint64
	pidfd int
	done  chan struct{}
}

// ownsProcessNS, ownsNetworkNS and ownsCgroupNS tell which namespaces the
// cell's init made.
func (c *cell) ownsProcessNS() bool { return c.spec.GetIsolateProcess() }
func (c *cell) ownsNetworkNS() bool { return c.spec.GetIsolateNetwork() }
func (c *cell) ownsCgroupNS() bool  { return c.spec.GetIsolateCgroup() }
func (c *cell) needsInit() bool     { return c.ownsProcessNS() || c.ownsNetworkNS() || c.ownsCgroupNS() }

// namespaces are the namespace files an executable of the cell joins: for
// each kind, the init's of the nearest cell (itself or an ancestor) that
// isolates that kind; none (auraed's own) when no cell does.
type namespaces struct {
	join []string // ipc, uts, net, cgroup, mnt
	pid  string
}

func nsPath(pid int, kind string) string { return fmt.Sprintf("/proc/%d/ns/%s", pid, kind) }

// errInitLost explains why nothing can start in a cell whose init died.
func errInitLost(name string) error {
	return fmt.Errorf("cell %q lost its namespaces (its init exited while auraed was not running); free it and allocate it again", name)
}

func (c *cell) listNode() *cellsv0.CellGraphNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := &cellsv0.CellGraphNode{Cell: c.spec}
	for _, e := range sortedExecs(c.execs) {
		n.Executables = append(n.Executables, e.status())
	}
	return n
}
