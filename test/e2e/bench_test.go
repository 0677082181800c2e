package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cellsv0 "github.com/aurae-runtime/aurae-cri/api/cells/v0"
	observev0 "github.com/aurae-runtime/aurae-cri/api/observe/v0"
)

// BenchmarkCellCycle measures Allocate → Start(/bin/true) → wait for its
// exit (its output stream ends) → Free through auraed's socket, and reports
// the p50 and p99 of one cycle. Run with -benchtime=200x.
func BenchmarkCellCycle(b *testing.B) {
	a := startAuraed(b)
	c := a.Client()
	ctx := b.Context()
	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		name := fmt.Sprintf("bench-%d", i)
		if _, err := c.Cells.Allocate(ctx, &cellsv0.CellServiceAllocateRequest{Cell: &cellsv0.Cell{Name: name}}); err != nil {
			b.Fatal(err)
		}
		resp, err := c.Cells.Start(ctx, &cellsv0.CellServiceStartRequest{CellName: proto.String(name), Executable: &cellsv0.Executable{Name: "true", Command: "/bin/true"}})
		if err != nil {
			b.Fatal(err)
		}
		stream, err := c.Observe.GetSubProcessStream(ctx, &observev0.GetSubProcessStreamRequest{ChannelType: observev0.LogChannelType_LOG_CHANNEL_TYPE_STDOUT, ProcessId: int64(resp.GetPid())})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := stream.Recv(); err != nil {
				break
			}
		}
		if _, err := c.Cells.Free(ctx, &cellsv0.CellServiceFreeRequest{CellName: name}); err != nil {
			b.Fatal(err)
		}
		durations = append(durations, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(durations, func(i, j int) bool { return durations[i] < durations[j] })
	pct := func(p float64) time.Duration { return durations[int(p*float64(len(durations)-1))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
}
