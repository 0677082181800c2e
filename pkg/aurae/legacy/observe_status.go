package legacy

import (
	"context"
	"fmt"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	observeapi "github.com/aurae-runtime/aurae-cri/api/observe"
	"github.com/aurae-runtime/aurae-cri/pkg/version"
)

// Observe serves observe.Observe/Status.
type Observe struct {
	observeapi.UnimplementedObserveServer
	cells Cells
}

// NewObserve returns the service; cells are counted in its message.
func NewObserve(cells Cells) *Observe { return &Observe{cells: cells} }

// Status answers the daemon's name and a message about its state.
func (s *Observe) Status(ctx context.Context, _ *observeapi.StatusRequest) (*observeapi.StatusResponse, error) {
	resp, err := s.cells.List(ctx, &cellsv0.CellServiceListRequest{})
	if err != nil {
		return nil, err
	}
	cells, running := 0, 0
	var count func([]*cellsv0.CellGraphNode)
	count = func(nodes []*cellsv0.CellGraphNode) {
		for _, n := range nodes {
			cells++
			for _, e := range n.GetExecutables() {
				if e.GetState() == cellsv0.ExecutableState_EXECUTABLE_STATE_RUNNING {
					running++
				}
			}
			count(n.GetChildren())
		}
	}
	count(resp.GetCells())
	return &observeapi.StatusResponse{Meta: &metaapi.AuraeMeta{
		Name:    "auraed",
		Message: fmt.Sprintf("serving, version %s: %d cells, %d executables running", version.Version, cells, running),
	}}, nil
}
