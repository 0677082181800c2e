package legacy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	metaapi "github.com/aurae-runtime/aurae-cri/api/meta"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	runtimeapi "github.com/aurae-runtime/aurae-cri/api/runtime"
	"github.com/aurae-runtime/aurae-cri/pkg/errmap"
	"github.com/aurae-runtime/aurae-cri/pkg/ocispec"
)

const (
	// runTimeout bounds RunExecutable when the call's deadline is later.
	runTimeout = 5 * time.Minute
	// maxOutput is the most of each output stream RunExecutable answers.
	maxOutput = 1 << 20
	// freeTimeout bounds the removal of the throwaway cell.
	freeTimeout = 30 * time.Second
	// execName is the executable's name in its throwaway cell.
	execName = "executable"
)

// Runner is what RunExecutable needs of the cells: the CellService and a
// wait for an executable's end.
type Runner interface {
	Cells
	Wait(ctx context.Context, cell, name string) (*cellsv0.ExecutableStatus, error)
}

// Output follows a process's output (observe.Hub).
type Output interface {
	Follow(ctx context.Context, pid int, ch observev0.LogChannelType, send func(line string, at int64) error) error
}

// Core serves runtime.Core.
type Core struct {
	runtimeapi.UnimplementedCoreServer
	cells  Runner
	output Output
	// vms, vmImageDir and what reaps spawned VMs: see WithVMs.
	vms         VMs
	vmImageDir  string
	log         *slog.Logger
	reapCtx     context.Context
	stopReaping context.CancelFunc
	reaping     sync.WaitGroup
	// cellStore, capabilities and host serve RunCell: see WithCells.
	cellStore    *cellStore
	capabilities []string
	host         ocispec.HostFeatures
}

// NewCore returns the service over the cells and their output.
func NewCore(cells Runner, output Output) *Core { return &Core{cells: cells, output: output} }

// RunExecutable runs the command in a throwaway cell to completion.
func (s *Core) RunExecutable(ctx context.Context, req *runtimeapi.Executable) (*runtimeapi.ExecutableStatus, error) {
	resp, err := s.run(ctx, req)
	return resp, errmap.ToGRPC(err)
}

func (s *Core) run(ctx context.Context, req *runtimeapi.Executable) (_ *runtimeapi.ExecutableStatus, retErr error) {
	if strings.TrimSpace(req.GetCommand()) == "" {
		return nil, fmt.Errorf("command is empty: %w", errdefs.ErrInvalidArgument)
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	cell := "run-" + hex.EncodeToString(suffix)
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	if _, err := s.cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: cell}}); err != nil {
		return nil, err
	}
	// Free kills whatever the command left in its cell.
	freed := false
	free := func() error {
		if freed {
			return nil
		}
		freed = true
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freeTimeout)
		defer cancel()
		_, err := s.cells.Free(fctx, &cellsv0.CellServiceFreeRequest{CellName: cell})
		return err
	}
	defer func() {
		if err := free(); err != nil && retErr == nil {
			retErr = fmt.Errorf("remove the cell of the run: %w", err)
		}
	}()
	started, err := s.cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String(cell),
		Executable: &cellsv0.Executable{Name: execName, Command: req.GetCommand(), Description: req.GetComment()},
	})
	if err != nil {
		return nil, err
	}
	pid := int(started.GetPid())
	var outputs [2]capped
	var wg sync.WaitGroup
	for i, ch := range []observev0.LogChannelType{observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT, observev0.LogChannelType_LOG_CHANNEL_TYPE_STDERR} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outputs[i].err = s.output.Follow(ctx, pid, ch, outputs[i].add)
		}()
	}
	st, waitErr := s.cells.Wait(ctx, cell, execName)
	// What the command left behind would hold its output open.
	freeErr := free()
	wg.Wait()
	if waitErr != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%q ran longer than its bound and was killed: %w", req.GetCommand(), context.DeadlineExceeded)
		}
		return nil, waitErr
	}
	if freeErr != nil {
		return nil, fmt.Errorf("remove the cell of the run: %w", freeErr)
	}
	resp := &runtimeapi.ExecutableStatus{
		Meta:     &metaapi.AuraeMeta{Name: req.GetMeta().GetName()},
		Proc:     &metaapi.ProcessMeta{Pid: started.GetPid()},
		Status:   metaapi.Status_STATUS_COMPLETE,
		Stdout:   outputs[0].String(),
		Stderr:   outputs[1].String(),
		ExitCode: strconv.Itoa(int(st.GetExitCode())),
	}
	var notes []string
	if st.GetSignal() != 0 {
		resp.Status, resp.ExitCode = metaapi.Status_STATUS_ERROR, strconv.Itoa(128+int(st.GetSignal()))
		notes = append(notes, fmt.Sprintf("killed by signal %d", st.GetSignal()))
	}
	for i, name := range []string{"stdout", "stderr"} {
		if outputs[i].truncated {
			notes = append(notes, name+" cut at 1 MiB")
		}
		if outputs[i].err != nil {
			notes = append(notes, fmt.Sprintf("%s incomplete: %v", name, outputs[i].err))
		}
	}
	resp.Meta.Message = strings.Join(notes, "; ")
	return resp, nil
}

// capped keeps the lines of an output stream up to maxOutput bytes.
type capped struct {
	b         strings.Builder
	truncated bool
	err       error
}

func (c *capped) add(line string, _ int64) error {
	if c.b.Len()+len(line)+1 > maxOutput {
		c.truncated = true
		return nil // keep reading: the command must not block on a full pipe
	}
	c.b.WriteString(line)
	c.b.WriteByte('\n')
	return nil
}

func (c *capped) String() string { return c.b.String() }
