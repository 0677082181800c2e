// Package cells serves the Aurae CellService: cells are cgroups with limits
// and, when asked for, namespaces of their own; executables run inside them.
package cells

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
)

// Config configures the service.
type Config struct {
	// StateDir holds cells.db.
	StateDir string
	// CgroupRoot is the cgroup below which cells live ("aurae").
	CgroupRoot string
	// StopGracePeriod is the time between SIGTERM and SIGKILL when a Stop
	// request names none (default 10 s).
	StopGracePeriod time.Duration
	Hub             *observe.Hub
	Logger          *slog.Logger
}

// Service implements cellsv0.CellServiceServer.
type Service struct {
	cellsv0.UnimplementedCellServiceServer

	cfg   Config
	log   *slog.Logger
	hub   *observe.Hub
	store *store
	seq   atomic.Uint64

	mu    sync.RWMutex
	cells map[string]*cell
}

// NewService opens the state and reconciles it with the machine: cells whose
// cgroup still exists are served again, the others are dropped.
func NewService(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "aurae"
	}
	cfg.CgroupRoot = strings.Trim(path.Clean("/"+cfg.CgroupRoot), "/")
	if cfg.StopGracePeriod <= 0 {
		cfg.StopGracePeriod = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hub == nil {
		cfg.Hub = observe.NewHub(observe.HubConfig{})
	}
	st, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger, hub: cfg.Hub, store: st, cells: map[string]*cell{}}
	if err := s.recover(ctx); err != nil {
		_ = st.close()
		return nil, fmt.Errorf("recover cells: %w", err)
	}
	return s, nil
}

// Close releases the state file. Cells and their processes outlive auraed.
func (s *Service) Close() error { return s.store.close() }

func (s *Service) cgroupPath(name string) string { return s.cfg.CgroupRoot + "/" + name }

func (s *Service) lookup(name string) (*cell, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.cells[name]
	if !ok {
		return nil, fmt.Errorf("cell %q: %w", name, errNotFound)
	}
	return c, nil
}

// Allocate implements CellService.Allocate.
func (s *Service) Allocate(ctx context.Context, req *cellsv0.CellServiceAllocateRequest) (*cellsv0.CellServiceAllocateResponse, error) {
	resp, err := s.allocate(ctx, req)
	return resp, errmap.ToGRPC(err)
}

// Free implements CellService.Free.
func (s *Service) Free(ctx context.Context, req *cellsv0.CellServiceFreeRequest) (*cellsv0.CellServiceFreeResponse, error) {
	if err := validCellName(req.GetCellName()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	if err := s.free(ctx, req.GetCellName()); err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &cellsv0.CellServiceFreeResponse{}, nil
}

// Start implements CellService.Start.
func (s *Service) Start(ctx context.Context, req *cellsv0.CellServiceStartRequest) (*cellsv0.CellServiceStartResponse, error) {
	pid, err := s.start(ctx, req)
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &cellsv0.CellServiceStartResponse{Pid: int32(pid)}, nil
}

// Stop implements CellService.Stop.
func (s *Service) Stop(ctx context.Context, req *cellsv0.CellServiceStopRequest) (*cellsv0.CellServiceStopResponse, error) {
	st, err := s.stopRequest(ctx, req)
	if err != nil {
		return nil, errmap.ToGRPC(err)
	}
	return &cellsv0.CellServiceStopResponse{Status: st}, nil
}

// List implements CellService.List: the tree of cells, from memory.
func (s *Service) List(ctx context.Context, _ *cellsv0.CellServiceListRequest) (*cellsv0.CellServiceListResponse, error) {
	s.mu.RLock()
	all := make([]*cell, 0, len(s.cells))
	for _, c := range s.cells {
		all = append(all, c)
	}
	s.mu.RUnlock()
	sort.Slice(all, func(i, j int) bool { return all[i].name < all[j].name })
	nodes := map[string]*cellsv0.CellGraphNode{}
	resp := &cellsv0.CellServiceListResponse{}
	// Parents sort before their children ("a" < "a/b"), so a parent's node
	// exists when its child is placed.
	for _, c := range all {
		n := c.listNode()
		nodes[c.name] = n
		if p, ok := nodes[parentName(c.name)]; ok {
			p.Children = append(p.Children, n)
		} else {
			resp.Cells = append(resp.Cells, n)
		}
	}
	return resp, nil
}

// Count is how many cells exist (nested ones included), from memory.
func (s *Service) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.cells)
}
