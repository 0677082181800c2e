package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// critestParams is the benchmark's own params file for critest -benchmark
// (cri-tools' BenchmarkingParamsType): 50 pods and 50 containers, 5 at a
// time, 20 image pull/status/remove cycles and image listings one at a
// time (its cycles pull and remove the same image: at once they race, and
// containerd 1.6 fails a pull whose image another cycle removed).
const critestParams = `containersNumber: 50
containersNumberParallel: 5
containerBenchmarkTimeoutSeconds: 600
podsNumber: 50
podsNumberParallel: 5
podBenchmarkTimeoutSeconds: 600
imagesNumber: 20
imagesNumberParallel: 1
imageBenchmarkTimeoutSeconds: 600
podContainerStartBenchmarkTimeoutSeconds: 600
imagePullingBenchmarkImage: %s
imageListingBenchmarkImages: [%s]
`

// critestOp is one operation's durations in one runtime's critest run.
type critestOp struct {
	name string
	d    []time.Duration
}

var (
	critestOnce sync.Once
	critestRes  map[string][]critestOp // runtime key -> operations in file order
	critestKeys []string
	critestErr  error
)

// BenchmarkCritest runs critest -benchmark (cri-tools' own benchmarks,
// built by hack/critest/build.sh) with the params file above against
// aurae-cri and each peer of the same run (benchPeers), the images served
// by the benchmark's registry, and summarises critest's JSON results per
// operation (CreatePod, StatusPod, StopPod, RemovePod, CreateContainer,
// StartContainer, StatusContainer, StopContainer, RemoveContainer,
// PullImage, StatusImage, RemoveImage, ListImages) as p50/p99 per runtime
// and the ratio of aurae-cri's p50 to each peer's. The runtimes take turns,
// critestRounds times, each round in the reverse order of the last, and
// the samples of the rounds are pooled. The scenario runs once per `go
// test` run.
func BenchmarkCritest(b *testing.B) {
	critestOnce.Do(func() { critestKeys, critestRes, critestErr = measureCritest(b) })
	if critestErr != nil {
		b.Fatal(critestErr)
	}
	aurae := map[string][]time.Duration{}
	for _, op := range critestRes["aurae"] {
		aurae[op.name] = op.d
	}
	for _, k := range critestKeys {
		for _, op := range critestRes[k] {
			b.ReportMetric(ms(percentile(op.d, 0.5)), k+"-"+op.name+"-p50-ms")
			b.ReportMetric(ms(percentile(op.d, 0.99)), k+"-"+op.name+"-p99-ms")
			if a, ok := aurae[op.name]; ok && k != "aurae" {
				b.ReportMetric(ms(percentile(a, 0.5))/ms(percentile(op.d, 0.5)), op.name+"-p50-ratio-"+k)
			}
			b.Logf("critest %-14s %-16s p50 %8.2f ms  p99 %8.2f ms  (%d samples)", k, op.name, ms(percentile(op.d, 0.5)), ms(percentile(op.d, 0.99)), len(op.d))
		}
	}
}

// critestRounds is how many times each runtime runs critest -benchmark
// (AURAE_BENCH_CRITEST_ROUNDS, 2 unless set).
func critestRounds() int {
	if n, err := strconv.Atoi(os.Getenv("AURAE_BENCH_CRITEST_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 2
}

func measureCritest(b *testing.B) ([]string, map[string][]critestOp, error) {
	critest, err := buildPeer("hack/critest/build.sh")
	if err != nil {
		if os.Getenv("CI") == "true" {
			return nil, nil, err
		}
		b.Skipf("critest not built: %v", err)
	}
	// Info, as a node runs it; AURAE_BENCH_LOG_LEVEL=debug prints the
	// step medians of aurae-cri's calls (at some cost).
	level := cmp.Or(os.Getenv("AURAE_BENCH_LOG_LEVEL"), "info")
	c := startCRI(b, "--log-level", level)
	image := c.pushBusybox(b, "bench/critest:1", testimage.Options{})
	pull := c.Registry.Push(b, "bench/pull:1", testimage.MustBusybox(b, testimage.Options{Env: []string{"PULL=1"}}))
	var list []string
	for i := range 3 {
		list = append(list, c.Registry.Push(b, fmt.Sprintf("bench/list-%d:1", i), testimage.MustBusybox(b, testimage.Options{Env: []string{fmt.Sprintf("LIST=%d", i)}})))
	}
	dir := b.TempDir()
	params := filepath.Join(dir, "params.yaml")
	if err := os.WriteFile(params, fmt.Appendf(nil, critestParams, pull, strings.Join(list, ", ")), 0o644); err != nil {
		return nil, nil, err
	}
	images := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(images, fmt.Appendf(nil, "defaultTestContainerImage: %s\nwebServerTestImage: %s\n", image, image), 0o644); err != nil {
		return nil, nil, err
	}
	// The runtimes take turns, in one order and then the other (each
	// round reverses the last), and each operation's samples of all
	// rounds are pooled: a machine that gets busier or quieter along the
	// run weighs on all of them alike.
	runtimes := benchPeers(b, c, image)
	rounds := critestRounds()
	samples := map[string]map[string][]time.Duration{} // runtime -> op -> durations
	order := map[string][]string{}                     // runtime -> op names in file order
	failed := map[string]bool{}
	for round := range rounds {
		turn := slices.Clone(runtimes)
		if round%2 == 1 {
			slices.Reverse(turn)
		}
		for _, r := range turn {
			if failed[r.key] {
				continue
			}
			out := filepath.Join(dir, fmt.Sprintf("%s-%d", r.key, round))
			if err := os.MkdirAll(out, 0o755); err != nil {
				return nil, nil, err
			}
			ctx, cancel := context.WithTimeout(b.Context(), 30*time.Minute)
			cmd := exec.CommandContext(ctx, filepath.Join(critest, "critest"), "-benchmark",
				"-runtime-endpoint", r.endpoint, "-image-endpoint", r.endpoint,
				"-benchmarking-params-file", params, "-benchmarking-output-dir", out,
				"-test-images-file", images)
			cmd.Dir = out
			start := time.Now()
			log, err := cmd.CombinedOutput()
			cancel()
			if err != nil && r.key == "aurae" {
				return nil, nil, fmt.Errorf("critest -benchmark on %s: %w\n%s", r.name, err, tailString(string(log), 8000))
			}
			if err != nil {
				b.Logf("peer %s left out of critest -benchmark: %v: %s", r.name, err, critestFailure(log))
				failed[r.key] = true
				continue
			}
			b.Logf("critest -benchmark round %d/%d on %s %s: %v", round+1, rounds, r.name, r.version, time.Since(start).Round(time.Second))
			ops, err := readCritestResults(out)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", r.name, err)
			}
			if samples[r.key] == nil {
				samples[r.key] = map[string][]time.Duration{}
			}
			for _, op := range ops {
				if _, ok := samples[r.key][op.name]; !ok {
					order[r.key] = append(order[r.key], op.name)
				}
				samples[r.key][op.name] = append(samples[r.key][op.name], op.d...)
			}
		}
	}
	if level == "debug" {
		printStepMedians("aurae-cri's median step durations under critest -benchmark", c.Records())
	}
	res := map[string][]critestOp{}
	var keys []string
	for _, r := range runtimes {
		if failed[r.key] || samples[r.key] == nil {
			continue
		}
		for _, name := range order[r.key] {
			res[r.key] = append(res[r.key], critestOp{name: name, d: samples[r.key][name]})
		}
		keys = append(keys, r.key)
	}
	return keys, res, nil
}

// readCritestResults reads the *_benchmark_data.json files critest wrote
// into dir: per operation, the durations of its datapoints.
func readCritestResults(dir string) ([]critestOp, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_benchmark_data.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("critest wrote no *_benchmark_data.json into %s", dir)
	}
	sort.Strings(files)
	var ops []critestOp
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var set struct {
			OperationsNames []string `json:"operationsNames"`
			Datapoints      []struct {
				OperationsDurationsNs []int64 `json:"operationsDurationsNs"`
			} `json:"datapoints"`
		}
		if err := json.Unmarshal(b, &set); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if len(set.Datapoints) == 0 {
			return nil, fmt.Errorf("%s: no datapoints", f)
		}
		for i, name := range set.OperationsNames {
			op := critestOp{name: name}
			for _, p := range set.Datapoints {
				if i < len(p.OperationsDurationsNs) {
					op.d = append(op.d, time.Duration(p.OperationsDurationsNs[i]))
				}
			}
			ops = append(ops, op)
		}
	}
	return ops, nil
}

// critestFailure is the first error critest printed (the gRPC one of the
// call that failed), or its last lines.
func critestFailure(log []byte) string {
	for _, l := range strings.Split(string(log), "\n") {
		if i := strings.Index(l, "rpc error:"); i >= 0 {
			return strings.TrimSpace(l[i:])
		}
	}
	return tailString(string(log), 2000)
}
