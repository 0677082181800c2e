package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
	"github.com/aurae-runtime/aurae-cri/pkg/controller/native"
)

// guest is the one long-lived client of a VM's guest auraed (its channel
// serves one client at a time); its pods are native pods of the guest.
type guest struct {
	*client.Client
	pods *native.Controller
	// ctx lives as long as the client: it ends the following of events.
	ctx    context.Context
	cancel context.CancelFunc
}

// Close ends the following of the guest's events and the client.
func (g *guest) Close() error {
	if g.cancel != nil {
		g.cancel()
	}
	return g.Client.Close()
}

// dialGuest dials the guest auraed, retrying while it boots.
func dialGuest(ctx context.Context, addr string, timeout time.Duration) (*guest, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(dctx, 15*time.Second)
		c, err := client.Dial(actx, addr)
		acancel()
		if err == nil {
			_, err = c.Discovery.Discover(dctx, &discoveryv0.DiscoverRequest{})
			if err == nil {
				gctx, gcancel := context.WithCancel(context.Background())
				return &guest{Client: c, pods: native.New(c.Conn), ctx: gctx, cancel: gcancel}, nil
			}
			_ = c.Close()
		}
		last = err
		select {
		case <-dctx.Done():
			return nil, fmt.Errorf("guest auraed at %s did not answer within %s: %w: %w", addr, timeout, last, errdefs.ErrUnavailable)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// run runs a shell script in a fresh cell of the guest and waits for it;
// its output (stdout and stderr) is in the error when it fails.
func (g *guest) run(ctx context.Context, name, script string) error {
	cell := "aurae-vm-" + name
	if _, err := g.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: cell}}); err != nil {
		return fmt.Errorf("guest cell %s: %w", cell, err)
	}
	defer func() {
		_, _ = g.Cells.Free(context.WithoutCancel(ctx), &cellsv0.CellServiceFreeRequest{CellName: cell})
	}()
	const marker = "aurae-vm-exit="
	started, err := g.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String(cell),
		Executable: &cellsv0.Executable{Name: name, Command: shellQuote([]string{"sh", "-c", "{ " + script + "; } 2>&1; echo " + marker + "$?"})},
	})
	if err != nil {
		return fmt.Errorf("guest %s: %w", name, err)
	}
	stream, err := g.Observe.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{
		ChannelType: observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT,
		ProcessId:   int64(started.GetPid()),
	})
	if err != nil {
		return fmt.Errorf("guest %s output: %w", name, err)
	}
	var out []string
	for {
		item, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("guest %s output: %w", name, err)
		}
		out = append(out, strings.TrimRight(item.GetLine(), "\n"))
	}
	if n := len(out); n > 0 && out[n-1] == marker+"0" {
		return nil
	}
	return fmt.Errorf("guest %s failed: %s", name, strings.Join(out, "; "))
}

// shellQuote joins argv with shell word rules (what the cell service splits).
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// isNotFound: the Aurae client gives errors their errdefs kind back.
func isNotFound(err error) bool { return errdefs.IsNotFound(err) }
