package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	discoveryv0 "github.com/aurae-runtime/aurae-cri/api/discovery/v0"
	"github.com/aurae-runtime/aurae-cri/pkg/aurae/client"
)

// Runs `sleep 100` in a cell limited to 256 MiB, then tears it down. (Not run
// as a test: it needs a running auraed.)
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := client.Dial(ctx, "unix:///run/aurae/aurae.sock")
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = c.Close() }()

	d, err := c.Discovery.Discover(ctx, &discoveryv0.DiscoverRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("auraed", d.GetVersion())

	cell := &cellsv0.Cell{Name: "demo", Memory: &cellsv0.MemoryController{Max: proto.Int64(256 << 20)}}
	if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: cell}); err != nil {
		log.Fatal(err)
	}
	started, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{
		CellName:   proto.String("demo"),
		Executable: &cellsv0.Executable{Name: "sleeper", Command: "sleep 100"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pid", started.GetPid())

	stopped, err := c.Cells.Stop(ctx, &cellsv0.CellServiceStopRequest{CellName: proto.String("demo"), ExecutableName: "sleeper"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ended by signal", stopped.GetStatus().GetSignal())
	if _, err := c.Cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: "demo"}); err != nil {
		log.Fatal(err)
	}
}
