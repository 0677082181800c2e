package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// benchNodePods is the kubelet's default max-pods;
// AURAE_BENCH_NODE_PODS=N changes it for a quick try of the harness.
var benchNodePods = func() int {
	if n, err := strconv.Atoi(os.Getenv("AURAE_BENCH_NODE_PODS")); err == nil && n > 0 {
		return n
	}
	return 110
}()

const (
	benchExecs = 200
	benchStats = 20
	// benchNodeWorkload is every container's command: the processes the
	// memory figures leave out.
	benchNodeWorkload = "sleep 86400"
	// benchSettle is how long the pods idle before their memory is read.
	benchSettle = 5 * time.Second
)

// nodeResults are one runtime's node-scale figures.
type nodeResults struct {
	key, name, version string
	// allRunning: from the start of the 110 pod starts to the last running.
	allRunning time.Duration
	// starts: each pod's time from that start to its container running.
	starts []time.Duration
	// The runtime's processes while the pods started: peak CPU (cores, the
	// largest one-second delta of its cgroup's CPU accounting), CPU time in
	// all (the same accounting), peak summed RSS.
	peakCores, cpuSeconds float64
	peakRSSKiB            int64
	// PSS with the pods idle: the processes that the pods added (shims,
	// pause, monitors, holders) and all of the runtime's processes, and
	// the latter before the pods.
	helpersKiB, totalKiB, baseKiB int64
	helperProcs                   int
	execs, stats, removals        []time.Duration
	allRemoved                    time.Duration
}

var (
	nodeOnce sync.Once
	nodeRes  []nodeResults
	nodeErr  error
)

// BenchmarkNodeScale starts 110 pods of one container each (the kubelet's
// default max-pods) at once on aurae-cri and then on each peer of the same
// run (benchPeers): the time until all run and each pod's p50/p99, the
// runtime's peak CPU and RSS while they start (all its processes: daemons,
// shims, monitors, holders, pause, runc), then with the pods idle the PSS
// of what the pods added to the host (per pod) and of the runtime in all;
// ExecSync of /bin/true (200 calls over the containers) and
// ListContainerStats (20 calls) p50/p99; then the 110 pods stopped and
// removed at once: the time until all are gone and each one's p50/p99. It
// reports each runtime's figures and aurae-cri's ratios to each peer. The
// scenario runs once per `go test` run, whatever b.N is.
func BenchmarkNodeScale(b *testing.B) {
	nodeOnce.Do(func() { nodeRes, nodeErr = measureNodeScale(b) })
	if nodeErr != nil {
		b.Fatal(nodeErr)
	}
	for _, r := range nodeRes {
		k := r.key
		b.ReportMetric(ms(r.allRunning), k+"-all-running-ms")
		b.ReportMetric(ms(percentile(r.starts, 0.5)), k+"-start-p50-ms")
		b.ReportMetric(ms(percentile(r.starts, 0.99)), k+"-start-p99-ms")
		b.ReportMetric(r.peakCores, k+"-peak-cores")
		b.ReportMetric(r.cpuSeconds, k+"-start-cpu-s")
		b.ReportMetric(float64(r.peakRSSKiB)/1024, k+"-peak-rss-MiB")
		b.ReportMetric(float64(r.helpersKiB)/1024/float64(benchNodePods), k+"-pss-per-pod-MiB")
		b.ReportMetric(float64(r.totalKiB-r.baseKiB)/1024/float64(benchNodePods), k+"-pss-growth-per-pod-MiB")
		b.ReportMetric(float64(r.totalKiB)/1024, k+"-pss-total-MiB")
		b.ReportMetric(ms(percentile(r.execs, 0.5)), k+"-exec-p50-ms")
		b.ReportMetric(ms(percentile(r.execs, 0.99)), k+"-exec-p99-ms")
		b.ReportMetric(ms(percentile(r.stats, 0.5)), k+"-stats-p50-ms")
		b.ReportMetric(ms(percentile(r.stats, 0.99)), k+"-stats-p99-ms")
		if r.removals != nil {
			b.ReportMetric(ms(r.allRemoved), k+"-all-removed-ms")
			b.ReportMetric(ms(percentile(r.removals, 0.5)), k+"-remove-p50-ms")
			b.ReportMetric(ms(percentile(r.removals, 0.99)), k+"-remove-p99-ms")
		}
	}
	a := nodeRes[0]
	for _, r := range nodeRes[1:] {
		b.ReportMetric(ms(a.allRunning)/ms(r.allRunning), "all-running-ratio-"+r.key)
		b.ReportMetric(float64(a.helpersKiB)/float64(max(r.helpersKiB, 1)), "pss-per-pod-ratio-"+r.key)
		b.ReportMetric(ms(percentile(a.execs, 0.5))/ms(percentile(r.execs, 0.5)), "exec-p50-ratio-"+r.key)
	}
	for _, r := range nodeRes {
		if r.removals == nil {
			r.removals = []time.Duration{0}
		}
		b.Logf("%-24s %-14s all running %7.0f ms, per pod p50/p99 %6.0f/%6.0f ms, peak %.2f cores %.0f MiB RSS, %.1f CPU-s; "+
			"PSS per pod %.2f MiB (%d procs), growth per pod %.2f MiB, total %.0f MiB; exec p50/p99 %.1f/%.1f ms; "+
			"stats p50/p99 %.0f/%.0f ms; all removed %.0f ms (p50/p99 %.0f/%.0f)",
			r.name, r.version, ms(r.allRunning), ms(percentile(r.starts, 0.5)), ms(percentile(r.starts, 0.99)),
			r.peakCores, float64(r.peakRSSKiB)/1024, r.cpuSeconds,
			float64(r.helpersKiB)/1024/float64(benchNodePods), r.helperProcs, float64(r.totalKiB-r.baseKiB)/1024/float64(benchNodePods), float64(r.totalKiB)/1024,
			ms(percentile(r.execs, 0.5)), ms(percentile(r.execs, 0.99)),
			ms(percentile(r.stats, 0.5)), ms(percentile(r.stats, 0.99)),
			ms(r.allRemoved), ms(percentile(r.removals, 0.5)), ms(percentile(r.removals, 0.99)))
	}
}

func measureNodeScale(b *testing.B) ([]nodeResults, error) {
	c := startCRI(b, "--log-level", "info")
	image := c.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	var out []nodeResults
	for _, r := range benchPeers(b, c, image, benchNodeWorkload) {
		res, err := nodeScale(b, r)
		if err != nil && r.key == "aurae" {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		if err != nil && res.execs == nil {
			b.Logf("peer %s left out of the node scale figures: %v", r.name, err)
			continue
		}
		if err != nil {
			b.Logf("peer %s: no removal figures: %v", r.name, err)
			res.removals = nil
		}
		out = append(out, res)
	}
	return out, nil
}

// nodeScale runs the scenario on one runtime and removes its pods.
func nodeScale(b *testing.B, r *benchRuntime) (nodeResults, error) {
	res := nodeResults{key: r.key, name: r.name, version: r.version}
	before := r.procs.pick(readProcs())
	res.baseKiB = pssKiBOf(before)
	pods := make([]string, benchNodePods)
	ctrs := make([]string, benchNodePods)
	starts := make([]time.Duration, benchNodePods)
	errs := make([]error, benchNodePods)
	removed := false
	defer func() {
		if !removed {
			removeAllPods(r.endpoint) //nolint:errcheck // best effort after a failure
		}
	}()

	// The runtime's processes (daemons, and what they run already) go into
	// a cgroup of their own, whose CPU accounting the figures come from.
	g, err := newCPUGroup(b, r.key)
	if err != nil {
		return res, fmt.Errorf("cpu accounting cgroup: %w", err)
	}
	if err := g.add(before); err != nil {
		return res, err
	}
	cpu, err := startCPUSampler(g)
	if err != nil {
		return res, fmt.Errorf("cpu accounting: %w", err)
	}
	sampler := startUsageSampler(r.procs, 250*time.Millisecond)
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := range benchNodePods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
			defer cancel()
			name := fmt.Sprintf("node-%03d", i)
			pod := &runtimeapi.PodSandboxConfig{
				Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: randomHex(b, 8)},
				Hostname:     name,
				LogDirectory: filepath.Join(r.logDir, name),
				// The kubelet's default: no shared PID namespace.
				Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
					NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
				}},
			}
			id, err := r.rt.RunPodSandbox(ctx, pod, "")
			if err != nil {
				errs[i] = fmt.Errorf("run pod %s: %w", name, err)
				return
			}
			pods[i] = id
			ctr, err := r.rt.CreateContainer(ctx, id, benchContainer(r.image, "sleep", "86400"), pod)
			if err != nil {
				errs[i] = fmt.Errorf("create container in %s: %w", name, err)
				return
			}
			ctrs[i] = ctr
			if err := r.rt.StartContainer(ctx, ctr); err != nil {
				errs[i] = fmt.Errorf("start container in %s: %w", name, err)
				return
			}
			for {
				st, err := r.rt.ContainerStatus(ctx, ctr, false)
				if err != nil {
					errs[i] = err
					return
				}
				if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING {
					starts[i] = time.Since(t0)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	res.allRunning = time.Since(t0)
	sampler.Stop()
	res.cpuSeconds, res.peakCores, err = cpu.Stop(t0)
	if err != nil {
		return res, fmt.Errorf("cpu accounting: %w", err)
	}
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	res.starts = starts
	res.peakRSSKiB = sampler.peakRSSKiB

	time.Sleep(benchSettle)
	now := r.procs.pick(readProcs())
	res.totalKiB = pssKiBOf(now)
	helpers := map[int]*benchProc{}
	for pid, p := range now {
		if _, ok := before[pid]; !ok {
			helpers[pid] = p
		}
	}
	res.helpersKiB, res.helperProcs = pssKiBOf(helpers), len(helpers)

	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	for i := range benchExecs {
		t := time.Now()
		if _, _, err := r.rt.ExecSync(ctx, ctrs[i%len(ctrs)], []string{"/bin/true"}, 30*time.Second); err != nil {
			return res, fmt.Errorf("exec in %s: %w", ctrs[i%len(ctrs)], err)
		}
		res.execs = append(res.execs, time.Since(t))
	}
	for range benchStats {
		t := time.Now()
		st, err := r.rt.ListContainerStats(ctx, nil)
		if err != nil {
			return res, fmt.Errorf("list container stats: %w", err)
		}
		if len(st) != benchNodePods {
			return res, fmt.Errorf("list container stats: %d containers, want %d", len(st), benchNodePods)
		}
		res.stats = append(res.stats, time.Since(t))
	}

	res.removals = make([]time.Duration, benchNodePods)
	rctx, rcancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer rcancel()
	t1 := time.Now()
	for i, id := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.rt.StopPodSandbox(rctx, id); err != nil {
				errs[i] = fmt.Errorf("stop pod %s: %w", id, err)
				return
			}
			if err := r.rt.RemovePodSandbox(rctx, id); err != nil {
				errs[i] = fmt.Errorf("remove pod %s: %w", id, err)
				return
			}
			res.removals[i] = time.Since(t1)
		}()
	}
	wg.Wait()
	res.allRemoved = time.Since(t1)
	removed = true
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	return res, nil
}
