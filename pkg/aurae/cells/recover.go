package cells

import (
	"context"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/internal/linux"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/cgroup"
)

// recover rebuilds the cells from the state file. A cell whose cgroup is gone
// is dropped; a cell whose init is gone keeps its cgroup (so it can be freed)
// but starts nothing; executables still running are watched again, those that
// ended while auraed was away get the state UNKNOWN.
func (s *Service) recover(ctx context.Context) error {
	records, execs, err := s.store.load()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(records))
	for n := range records {
		names = append(names, n)
	}
	// Parents before children.
	sort.Slice(names, func(i, j int) bool { return strings.Count(names[i], "/") < strings.Count(names[j], "/") })
	for _, name := range names {
		rec := records[name]
		spec := &cellsv0.Cell{}
		if err := protojson.Unmarshal(rec.Spec, spec); err != nil {
			s.log.Warn("dropping unreadable cell record", "cell", name, "error", err)
			_ = s.store.deleteCell(name)
			continue
		}
		_, parentKnown := s.cells[parentName(name)]
		if parentName(name) != "" && !parentKnown {
			s.log.Info("dropping cell whose parent is gone", "cell", name)
			_ = s.store.deleteCell(name)
			continue
		}
		cg, err := cgroup.Load(s.cgroupPath(name))
		if err != nil {
			s.log.Info("dropping cell whose cgroup is gone", "cell", name, "error", err)
			_ = s.store.deleteCell(name)
			continue
		}
		c := &cell{name: name, spec: spec, cg: cg, execs: map[string]*executable{}}
		if c.needsInit() {
			if fd, ok := linux.OpenPidfd(rec.InitPid, rec.InitStart); ok {
				ip := &initProc{pid: rec.InitPid, start: rec.InitStart, pidfd: fd, done: make(chan struct{})}
				go func() {
					linux.WaitPidfd(fd)
					unix.Close(fd)
					close(ip.done)
				}()
				c.init = ip
			} else {
				c.initLost = true
				s.log.Warn("cell init is gone; the cell can only be freed", "cell", name, "pid", rec.InitPid)
			}
		}
		for _, r := range execs[name] {
			s.adopt(c, r)
		}
		s.cells[name] = c
		s.log.Info("cell recovered", "cell", name, "executables", len(c.execs))
	}
	return nil
}

func (s *Service) adopt(c *cell, r execRecord) {
	if r.Seq > s.seq.Load() {
		s.seq.Store(r.Seq)
	}
	e := &executable{cell: c.name, rec: r, pidfd: -1, done: make(chan struct{})}
	c.execs[r.Name] = e
	if r.State != int32(cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING) {
		close(e.done)
		return
	}
	fd, ok := linux.OpenPidfd(r.Pid, r.PidStart)
	if !ok {
		s.finish(e, cellsv0.ExecutableState_EXECUTABLE_STATE_UNKNOWN, 0, 0)
		return
	}
	e.pidfd = fd
	dup, err := unix.Dup(fd)
	if err != nil {
		return
	}
	go func() {
		defer unix.Close(dup)
		s.watchAdopted(e, dup)
	}()
}
