package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

const (
	benchSequentialPods = 30
	benchConcurrentPods = 10
)

// podStartResults are the pod start latencies of one runtime.
type podStartResults struct {
	key                    string
	sequential, concurrent []time.Duration
	// sequentialEnd is when the last sequential start ended, before
	// any concurrent one began.
	sequentialEnd time.Time
}

var (
	podStartOnce sync.Once
	podStartRes  []podStartResults
	podStartErr  error
)

// BenchmarkPodStart measures pod start latency with the image present —
// RunPodSandbox + CreateContainer + StartContainer until the container runs —
// for 30 pods one after another and 10 at once, on aurae-cri, on an
// aurae-cri whose state is not fsynced (the test-only knob
// AURAE_CRI_TEST_NO_FSYNC: what the fsyncs cost) and, in the same run, on
// each peer that could be built and started (Debian's containerd 1.6,
// containerd 2.x and CRI-O, see benchPeers), all with the pinned runc. The
// runtimes take turns, pod after pod, so that the drifting load of a shared
// machine weighs on all alike. It reports the p50/p99 of each and the
// ratios of aurae-cri's p50s to each peer's. The scenario runs once per
// `go test` run, whatever b.N is; later rounds report the same figures.
func BenchmarkPodStart(b *testing.B) {
	podStartOnce.Do(func() { podStartRes, podStartErr = measurePodStarts(b) })
	if podStartErr != nil {
		b.Fatal(podStartErr)
	}
	report := func(prefix string, d []time.Duration) {
		b.ReportMetric(ms(percentile(d, 0.50)), prefix+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 0.99)), prefix+"-p99-ms")
	}
	aurae := podStartRes[0]
	for _, r := range podStartRes {
		report(r.key+"-seq", r.sequential)
		report(r.key+"-par", r.concurrent)
		if r.key == aurae.key || r.key == "aurae-nofsync" {
			continue
		}
		b.ReportMetric(ms(percentile(aurae.sequential, 0.5))/ms(percentile(r.sequential, 0.5)), "seq-p50-ratio-"+r.key)
		b.ReportMetric(ms(percentile(aurae.concurrent, 0.5))/ms(percentile(r.concurrent, 0.5)), "par-p50-ratio-"+r.key)
	}
}

func measurePodStarts(b *testing.B) ([]podStartResults, error) {
	c := startCRI(b)
	image := c.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	nosync := startCRIWith(b, []string{"AURAE_CRI_TEST_NO_FSYNC=1"})
	imageNoSync := nosync.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	runtimes := benchPeers(b, c, image, "sleep 300")
	targets := []startTarget{
		{rt: c.Runtime, image: image, logDir: c.LogDir},
		{rt: nosync.Runtime, image: imageNoSync, logDir: nosync.LogDir},
	}
	keys := []string{"aurae", "aurae-nofsync"}
	for _, r := range runtimes[1:] {
		targets = append(targets, startTarget{rt: r.rt, image: r.image, logDir: r.logDir})
		keys = append(keys, r.key)
	}
	res, err := podStarts(b, targets...)
	if err != nil {
		return nil, err
	}
	for i := range res {
		res[i].key = keys[i]
	}
	return res, nil
}

// startTarget is a runtime to start pods on, with its image and log dir.
type startTarget struct {
	rt            internalapi.RuntimeService
	image, logDir string
}

// podStarts measures the pod starts of each target: the sequential ones
// taking turns (pod i on each target, then pod i+1), then 10 at once on
// each target in turn. It removes the pods.
func podStarts(b *testing.B, targets ...startTarget) ([]podStartResults, error) {
	res := make([]podStartResults, len(targets))
	ids := make([][]string, len(targets))
	var mu sync.Mutex
	start := func(k int, name string) (time.Duration, error) {
		t := targets[k]
		// The kubelet's bound on a CRI call.
		ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
		defer cancel()
		pod := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: randomHex(b, 8)},
			Hostname:     name,
			LogDirectory: filepath.Join(t.logDir, name),
			// The kubelet's default: no shared PID namespace (CRI-O's
			// infra container of a shared one asks an oom_score_adj of
			// -998, which this machine refuses without CAP_SYS_RESOURCE).
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
			}},
		}
		t0 := time.Now()
		podID, err := t.rt.RunPodSandbox(ctx, pod, "")
		if err != nil {
			return 0, err
		}
		mu.Lock()
		ids[k] = append(ids[k], podID)
		mu.Unlock()
		ctr, err := t.rt.CreateContainer(ctx, podID, benchContainer(t.image, "sleep", "300"), pod)
		if err != nil {
			return 0, err
		}
		if err := t.rt.StartContainer(ctx, ctr); err != nil {
			return 0, err
		}
		for {
			st, err := t.rt.ContainerStatus(ctx, ctr, false)
			if err != nil {
				return 0, err
			}
			if st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING {
				return time.Since(t0), nil
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := 0; i < benchSequentialPods; i++ {
		for k := range targets {
			d, err := start(k, fmt.Sprintf("seq-%d", i))
			if err != nil {
				return res, fmt.Errorf("runtime %d: %w", k, err)
			}
			res[k].sequential = append(res[k].sequential, d)
		}
	}
	for k := range res {
		res[k].sequentialEnd = time.Now()
	}
	for k := range targets {
		var wg sync.WaitGroup
		errs := make(chan error, benchConcurrentPods)
		for i := 0; i < benchConcurrentPods; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := start(k, fmt.Sprintf("par-%d", i))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				res[k].concurrent = append(res[k].concurrent, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return res, fmt.Errorf("runtime %d: %w", k, err)
		}
	}
	// The pods' removal is not measured here (BenchmarkNodeScale times
	// it); a failed one fails the benchmark after its figures.
	var g errgroup.Group
	g.SetLimit(4)
	for k, t := range targets {
		for _, id := range ids[k] {
			g.Go(func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				_ = t.rt.StopPodSandbox(ctx, id)
				if err := t.rt.RemovePodSandbox(ctx, id); err != nil {
					return fmt.Errorf("runtime %d: remove pod %s: %w", k, id, err)
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		b.Error(err)
	}
	return res, nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1)+0.5)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
