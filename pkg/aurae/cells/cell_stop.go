package cells

import (
	"context"
	"fmt"
	"time"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
)

func (s *Service) stopRequest(ctx context.Context, req *cellsv0.CellServiceStopRequest) (*cellsv0.ExecutableStatus, error) {
	if req.CellName == nil {
		return nil, fmt.Errorf("cell_name is missing: %w", errInvalid)
	}
	if err := validCellName(req.GetCellName()); err != nil {
		return nil, err
	}
	if err := validName(req.GetExecutableName()); err != nil {
		return nil, fmt.Errorf("executable: %w", err)
	}
	c, err := s.lookup(req.GetCellName())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	e, ok := c.execs[req.GetExecutableName()]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("executable %q in cell %q: %w", req.GetExecutableName(), req.GetCellName(), errNotFound)
	}
	grace := s.cfg.StopGracePeriod
	if req.GracePeriodMs != nil {
		grace = time.Duration(req.GetGracePeriodMs()) * time.Millisecond
	}
	if err := s.stop(ctx, e, grace); err != nil {
		return nil, err
	}
	return e.status(), nil
}
