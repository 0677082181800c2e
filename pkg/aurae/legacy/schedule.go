package legacy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
)

const (
	// scheduleFile is the scheduler's state under the state dir.
	scheduleFile = "schedule.json"
	// backoffMin and backoffMax pace the restarts of an executable that
	// exits; a run longer than backoffReset starts the pace over.
	backoffMin   = time.Second
	backoffMax   = time.Minute
	backoffReset = time.Minute
	// scheduledExec is the executable's name in its cell.
	scheduledExec = "main"
)

// validScheduleName: a scheduled executable's name becomes part of its
// cell's name, schedule-<name>.
var validScheduleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// scheduled is what the state keeps of a scheduled executable.
type scheduled struct {
	Command string `json:"command"`
	Comment string `json:"comment,omitempty"`
	Enabled bool   `json:"enabled"`
}

// Scheduler keeps the enabled executables running, each in a cell of its
// own (schedule-<name>): it starts one at once, again with backoff
// whenever it exits, and again when auraed starts (a process still running
// from before is adopted, as the cells outlive auraed). Its state is a
// JSON file under the state dir, replaced atomically.
type Scheduler struct {
	cells Runner
	log   *slog.Logger
	path  string

	// mu serializes the changes (Enable, Disable, Destroy, Close) and
	// guards recs and runs.
	mu     sync.Mutex
	recs   map[string]scheduled
	runs   map[string]*supervisor
	closed bool
}

type supervisor struct {
	rec    scheduled
	cancel context.CancelFunc
	done   chan struct{}
}

// NewScheduler loads the state in stateDir and starts the enabled
// executables.
func NewScheduler(cells Runner, stateDir string, log *slog.Logger) (*Scheduler, error) {
	s := &Scheduler{cells: cells, log: log, path: filepath.Join(stateDir, scheduleFile), recs: map[string]scheduled{}, runs: map[string]*supervisor{}}
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("schedule state: %w", err)
	default:
		if err := json.Unmarshal(b, &s.recs); err != nil {
			return nil, fmt.Errorf("schedule state %s: %w", s.path, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, rec := range s.recs {
		if rec.Enabled {
			s.startLocked(name, rec)
		}
	}
	return s, nil
}

// Close stops supervising; the executables keep running (a next auraed
// adopts them).
func (s *Scheduler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for name := range s.runs {
		s.stopLocked(name)
	}
	return nil
}

// notFound tells a NotFound of the cells, which answer gRPC statuses.
func notFound(err error) bool { return errdefs.IsNotFound(errgrpc.ToNative(err)) }

func cellOfSchedule(name string) string { return "schedule-" + name }

func checkScheduled(e *runtimeapi.Executable, needCommand bool) (string, error) {
	name := e.GetMeta().GetName()
	if !validScheduleName.MatchString(name) {
		return "", fmt.Errorf("meta.name %q: want 1 to 64 letters, digits, '_', '-' or '.', not starting with a punctuation mark: %w", name, errdefs.ErrInvalidArgument)
	}
	if needCommand && strings.TrimSpace(e.GetCommand()) == "" {
		return "", fmt.Errorf("executable %q: command is empty: %w", name, errdefs.ErrInvalidArgument)
	}
	return name, nil
}

// enable records the executable as enabled and runs it; a changed
// command replaces the running one.
func (s *Scheduler) enable(ctx context.Context, e *runtimeapi.Executable) error {
	name, err := checkScheduled(e, true)
	if err != nil {
		return err
	}
	rec := scheduled{Command: e.GetCommand(), Comment: e.GetComment(), Enabled: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("auraed is shutting down: %w", errdefs.ErrUnavailable)
	}
	if run, ok := s.runs[name]; ok && run.rec == rec {
		return nil
	}
	old, had := s.recs[name]
	s.recs[name] = rec
	if err := s.saveLocked(); err != nil {
		if had {
			s.recs[name] = old
		} else {
			delete(s.recs, name)
		}
		return err
	}
	if err := s.haltLocked(ctx, name); err != nil {
		return err
	}
	s.startLocked(name, rec)
	s.log.Info("scheduled executable enabled", "executable", name, "command", rec.Command)
	return nil
}

// disable stops the executable and keeps it, or forgets it (destroy).
func (s *Scheduler) disable(ctx context.Context, e *runtimeapi.Executable, forget bool) error {
	name, err := checkScheduled(e, false)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.recs[name]
	if !ok {
		return fmt.Errorf("scheduled executable %q: %w", name, errdefs.ErrNotFound)
	}
	if err := s.haltLocked(ctx, name); err != nil {
		return err
	}
	if forget {
		delete(s.recs, name)
	} else {
		rec.Enabled = false
		s.recs[name] = rec
	}
	if err := s.saveLocked(); err != nil {
		return err
	}
	s.log.Info("scheduled executable stopped", "executable", name, "forgotten", forget)
	return nil
}

// show lists the executables that are enabled (or not), by name.
func (s *Scheduler) show(enabled bool) []*runtimeapi.Executable {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*runtimeapi.Executable
	for name, rec := range s.recs {
		if rec.Enabled == enabled {
			out = append(out, &runtimeapi.Executable{Meta: metaOf(name), Command: rec.Command, Comment: rec.Comment})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetMeta().GetName() < out[j].GetMeta().GetName() })
	return out
}

// haltLocked stops supervising name and frees its cell (killing the
// executable).
func (s *Scheduler) haltLocked(ctx context.Context, name string) error {
	s.stopLocked(name)
	_, err := s.cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: cellOfSchedule(name)})
	if err != nil && !notFound(err) {
		return fmt.Errorf("stop scheduled executable %q: %w", name, err)
	}
	return nil
}

func (s *Scheduler) stopLocked(name string) {
	if run, ok := s.runs[name]; ok {
		run.cancel()
		<-run.done
		delete(s.runs, name)
	}
}

func (s *Scheduler) startLocked(name string, rec scheduled) {
	ctx, cancel := context.WithCancel(context.Background())
	run := &supervisor{rec: rec, cancel: cancel, done: make(chan struct{})}
	s.runs[name] = run
	go func() {
		defer close(run.done)
		s.supervise(ctx, name, rec)
	}()
}

// supervise runs the executable again and again, with backoff, until ctx
// ends.
func (s *Scheduler) supervise(ctx context.Context, name string, rec scheduled) {
	log := s.log.With("executable", name, "cell", cellOfSchedule(name))
	backoff := backoffMin
	for {
		began := time.Now()
		st, err := s.runOnce(ctx, name, rec)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > backoffReset {
			backoff = backoffMin
		}
		if err != nil {
			log.Warn("scheduled executable failed to run", "error", err, "retry_in", backoff)
		} else {
			log.Info("scheduled executable exited", "exit_code", st.GetExitCode(), "signal", st.GetSignal(), "restart_in", backoff)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// runOnce runs the executable to its end in its cell: the process left
// running by an earlier auraed is adopted, else the cell is made anew.
// The cell is freed once the process ended, not when ctx ends (auraed
// stops; the process keeps running).
func (s *Scheduler) runOnce(ctx context.Context, name string, rec scheduled) (*cellsv0.ExecutableStatus, error) {
	cell := cellOfSchedule(name)
	running, exists, err := s.find(ctx, cell)
	if err != nil {
		return nil, err
	}
	if running {
		s.log.Info("scheduled executable adopted", "executable", name, "cell", cell)
	} else {
		if exists {
			if _, err := s.cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: cell}); err != nil && !notFound(err) {
				return nil, err
			}
		}
		if _, err := s.cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: cell}}); err != nil {
			return nil, err
		}
		_, err := s.cells.Start(ctx, &cellsv0.CellServiceStartRequest{CellName: proto.String(cell),
			Executable: &cellsv0.Executable{Name: scheduledExec, Command: rec.Command, Description: rec.Comment}})
		if err != nil {
			s.free(ctx, cell)
			return nil, err
		}
	}
	st, err := s.cells.Wait(ctx, cell, scheduledExec)
	if err != nil {
		return nil, err
	}
	s.free(ctx, cell)
	return st, nil
}

// find tells whether the cell exists and its executable runs.
func (s *Scheduler) find(ctx context.Context, cell string) (running, exists bool, err error) {
	resp, err := s.cells.List(ctx, &cellsv0.CellServiceListRequest{})
	if err != nil {
		return false, false, err
	}
	for _, n := range resp.GetCells() {
		if n.GetCell().GetName() != cell {
			continue
		}
		for _, e := range n.GetExecutables() {
			if e.GetName() == scheduledExec && e.GetState() == cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING {
				return true, true, nil
			}
		}
		return false, true, nil
	}
	return false, false, nil
}

func (s *Scheduler) free(ctx context.Context, cell string) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freeTimeout)
	defer cancel()
	if _, err := s.cells.Free(fctx, &cellsv0.CellServiceFreeRequest{CellName: cell}); err != nil && !notFound(err) {
		s.log.Warn("free the cell of a scheduled executable", "cell", cell, "error", err)
	}
}

// saveLocked writes the state: a temporary file, synced, renamed over.
func (s *Scheduler) saveLocked() error {
	b, err := json.Marshal(s.recs)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("save schedule state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("save schedule state: %w", err)
	}
	return nil
}
