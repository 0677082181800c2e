package pods

import (
	"context"
	"fmt"
	"testing"
	"time"

	podsv0 "github.com/aurae-runtime/aurae-cri/api/pods/v0"
)

// BenchmarkPodStart measures Allocate (cgroup, namespaces pinned by a
// holder) plus Start of one container (conmon, runc create, runc start)
// until it runs; Free is outside the timer.
func BenchmarkPodStart(b *testing.B) {
	e := newEnv(b)
	sleep := spec(b, nil, "sleep", "1000")
	ctx := context.Background()
	var alloc, start time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if _, err := e.svc.Allocate(ctx, &podsv0.AllocateRequest{Pod: &podsv0.Pod{Id: id, Hostname: id}}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := e.svc.Start(ctx, &podsv0.StartRequest{PodId: id, Container: e.forPod(id, e.container(id+"-c", sleep))}); err != nil {
			b.Fatal(err)
		}
		alloc += t1.Sub(t0)
		start += time.Since(t1)
		b.StopTimer()
		if _, err := e.svc.Free(ctx, &podsv0.FreeRequest{PodId: id}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(alloc.Milliseconds())/float64(b.N), "allocate-ms/op")
	b.ReportMetric(float64(start.Milliseconds())/float64(b.N), "start-ms/op")
}
