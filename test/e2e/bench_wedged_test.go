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

const (
	// benchWedgedPods is the kubelet's default max-pods.
	benchWedgedPods = 110
	// benchExits is how many containers are made to exit, one at a time,
	// for the exit-to-status latency.
	benchExits = 20
	// benchStatsEvery: ListContainerStats (which waits up to a second for
	// a wedged pod's figures) is measured every this many rounds.
	benchStatsEvery = 10
)

// BenchmarkListStatusWedged measures, with 110 pods of one idle container
// each (the kubelet's default max-pods) and one of them wedged (its
// container process and conmon SIGSTOPped), the latency of ListPodSandbox,
// ListContainers and ContainerStatus (one of each per round, a different
// container each time), of ListContainerStats (every tenth round), and,
// after the rounds, the time from a container's exit (a SIGKILL from the
// host, 20 containers one at a time) to its EXITED status: p50 and p99 of
// each. aurae-cri logs at info, as in production. The pods are removed in
// parallel at the end.
func BenchmarkListStatusWedged(b *testing.B) {
	c := startCRI(b, "--log-level", "info")
	ctx := b.Context()
	image := c.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	ids := make([]string, benchWedgedPods)
	pods := make([]string, benchWedgedPods)
	defer removePodsParallel(b, c, pods)
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
			pods[i] = podID
			id, err := c.Runtime.CreateContainer(ctx, podID, containerConfig("c", image, "sleep", "100000"), pod)
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
	wedgedPid := containerPid(b, c, ids[0])
	stopped := []int{wedgedPid, ppid(b, wedgedPid)}
	for _, p := range stopped {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			b.Fatalf("SIGSTOP %d: %v", p, err)
		}
	}
	defer func() {
		for _, p := range stopped {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	}()

	timed := func(d *[]time.Duration, f func(context.Context) error) {
		start := time.Now()
		if err := f(ctx); err != nil {
			b.Fatal(err)
		}
		*d = append(*d, time.Since(start))
	}
	var listPods, listCtrs, status, stats []time.Duration
	round := 0
	for b.Loop() {
		timed(&listPods, func(ctx context.Context) error {
			l, err := c.Runtime.ListPodSandbox(ctx, nil)
			if err == nil && len(l) != benchWedgedPods {
				err = fmt.Errorf("%d pods listed, want %d", len(l), benchWedgedPods)
			}
			return err
		})
		timed(&listCtrs, func(ctx context.Context) error {
			l, err := c.Runtime.ListContainers(ctx, nil)
			if err == nil && len(l) != benchWedgedPods {
				err = fmt.Errorf("%d containers listed, want %d", len(l), benchWedgedPods)
			}
			return err
		})
		timed(&status, func(ctx context.Context) error {
			_, err := c.Runtime.ContainerStatus(ctx, ids[round%len(ids)], false)
			return err
		})
		if round%benchStatsEvery == 0 {
			timed(&stats, func(ctx context.Context) error { _, err := c.Runtime.ListContainerStats(ctx, nil); return err })
		}
		round++
	}
	b.StopTimer()

	var exits []time.Duration
	for _, id := range ids[1 : 1+benchExits] {
		pid := containerPid(b, c, id)
		start := time.Now()
		// PID 1 of its namespace: only a SIGKILL from outside ends it.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatalf("SIGKILL %d: %v", pid, err)
		}
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
			time.Sleep(time.Millisecond)
		}
		exits = append(exits, time.Since(start))
	}
	report := func(name string, d []time.Duration) {
		b.ReportMetric(ms(percentile(d, 0.50)), name+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 0.99)), name+"-p99-ms")
	}
	report("ListPodSandbox", listPods)
	report("ListContainers", listCtrs)
	report("ContainerStatus", status)
	report("ListContainerStats", stats)
	report("exit-seen", exits)
}

// containerPid is a container's pid, from its verbose status.
func containerPid(tb testing.TB, c *CRI, id string) int {
	tb.Helper()
	st, err := c.Runtime.ContainerStatus(tb.Context(), id, true)
	if err != nil {
		tb.Fatal(err)
	}
	info := st.GetInfo()["info"]
	i := strings.Index(info, `"pid":`)
	if i < 0 {
		tb.Fatalf("no pid in verbose status: %s", info)
	}
	pid, err := strconv.Atoi(strings.TrimFunc(strings.SplitN(info[i+len(`"pid":`):], ",", 2)[0], func(r rune) bool { return r < '0' || r > '9' }))
	if err != nil || pid <= 1 {
		tb.Fatalf("pid in %s: %v", info, err)
	}
	return pid
}

// removePodsParallel stops and removes pods (ids; "" for none), a few at
// a time.
func removePodsParallel(b *testing.B, c *CRI, pods []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var g errgroup.Group
	g.SetLimit(4)
	for _, id := range pods {
		if id == "" {
			continue
		}
		g.Go(func() error {
			if err := c.Runtime.StopPodSandbox(ctx, id); err != nil {
				return fmt.Errorf("stop pod %s: %w", id, err)
			}
			if err := c.Runtime.RemovePodSandbox(ctx, id); err != nil {
				return fmt.Errorf("remove pod %s: %w", id, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Error(err)
	}
}
