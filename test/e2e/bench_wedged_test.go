package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

const benchWedgedPods = 110

// BenchmarkListStatusWedged measures, with 110 pods of one container each
// (the kubelet's default max-pods) and one of them wedged (its process and
// conmon SIGSTOPped), the latency of ListPodSandbox, ListContainers,
// ContainerStatus (p50/p99 over b.N rounds each) and ListContainerStats,
// and the time from a container's exit to its EXITED status.
func BenchmarkListStatusWedged(b *testing.B) {
	c := startCRI(b)
	ctx := b.Context()
	image := c.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	ids := make([]string, benchWedgedPods)
	var g errgroup.Group
	g.SetLimit(2)
	for i := range benchWedgedPods {
		g.Go(func() error {
			pod := c.podConfig(b, fmt.Sprintf("w%03d", i))
			// The kubelet's default: no shared pid namespace, no holder.
			pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}}
			podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
			if err != nil {
				return err
			}
			cfg := containerConfig("c", image, "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.2; done; exit 3")
			id, err := c.Runtime.CreateContainer(ctx, podID, cfg, pod)
			if err != nil {
				return err
			}
			ids[i] = id
			return c.Runtime.StartContainer(ctx, id)
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	st, err := c.Runtime.ContainerStatus(ctx, ids[0], true)
	if err != nil {
		b.Fatal(err)
	}
	info := st.GetInfo()["info"]
	i := strings.Index(info, `"pid":`)
	pid, _ := strconv.Atoi(strings.TrimFunc(strings.SplitN(info[i+6:], ",", 2)[0], func(r rune) bool { return r < '0' || r > '9' }))
	if pid <= 1 {
		b.Fatalf("no pid in %s", info)
	}
	stopped := []int{pid, ppid(b, pid)}
	for _, p := range stopped {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
	defer func() {
		for _, p := range stopped {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	}()

	measure := func(n int, f func(context.Context) error) []time.Duration {
		var d []time.Duration
		for range n {
			start := time.Now()
			if err := f(ctx); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(start))
		}
		return d
	}
	b.ResetTimer()
	report := func(name string, d []time.Duration) {
		b.ReportMetric(ms(percentile(d, 0.50)), name+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 0.99)), name+"-p99-ms")
	}
	report("ListPodSandbox", measure(b.N, func(ctx context.Context) error { _, err := c.Runtime.ListPodSandbox(ctx, nil); return err }))
	report("ListContainers", measure(b.N, func(ctx context.Context) error { _, err := c.Runtime.ListContainers(ctx, nil); return err }))
	k := 0
	report("ContainerStatus", measure(b.N, func(ctx context.Context) error {
		k++
		_, err := c.Runtime.ContainerStatus(ctx, ids[k%len(ids)], false)
		return err
	}))
	report("ListContainerStats", measure(min(b.N, 20), func(ctx context.Context) error { _, err := c.Runtime.ListContainerStats(ctx, nil); return err }))

	var exits []time.Duration
	for _, id := range ids[1:6] {
		if _, _, err := c.Runtime.ExecSync(ctx, id, []string{"touch", "/tmp/go"}, 5*time.Second); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for {
			st, err := c.Runtime.ContainerStatus(ctx, id, false)
			if err != nil {
				b.Fatal(err)
			}
			if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("exit of %s not seen", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
		// From the touch to the status: the container polls every 0.2 s.
		exits = append(exits, time.Since(start))
	}
	report("exit-seen", exits)
}
