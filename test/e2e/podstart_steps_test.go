package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// baselineEnv names an aurae-cri binary to compare this tree's with in
// BenchmarkNativePodStartSteps (e.g. one built from main).
const baselineEnv = "AURAE_E2E_BASELINE_CRI"

// BenchmarkNativePodStartSteps measures native pod starts as
// BenchmarkPodStart does (30 one after another, 10 at once, and 3 more
// batches of 10 at once) on this tree's aurae-cri and reports, per step of RunPodSandbox, CreateContainer and
// StartContainer in both daemons, the median duration from their Debug
// "steps" lines. With AURAE_E2E_BASELINE_CRI set to another aurae-cri
// binary, that one starts pods too, the two taking turns pod after pod
// (and batch after batch), and the benchmark reports both p50s and their ratio (this tree's /
// baseline's): the effect of a change, measured in the same conditions.
func BenchmarkNativePodStartSteps(b *testing.B) {
	c := startCRI(b)
	targets := []startTarget{{rt: c.Runtime, image: c.pushBusybox(b, "bench/busybox:1", testimage.Options{}), logDir: c.LogDir}}
	if bin := os.Getenv(baselineEnv); bin != "" {
		base := startCRIBinary(b, bin)
		targets = append(targets, startTarget{rt: base.Runtime, image: base.pushBusybox(b, "bench/busybox:1", testimage.Options{}), logDir: base.LogDir})
	}
	b.ResetTimer()
	res, err := podStarts(b, targets...)
	if err != nil {
		b.Fatal(err)
	}
	report := func(prefix string, d []time.Duration) {
		b.ReportMetric(ms(percentile(d, 0.50)), prefix+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 0.99)), prefix+"-p99-ms")
	}
	// podStarts runs one batch of 10 on each target, one after the
	// other: more batches, taking turns, so that a drifting load weighs
	// on both alike.
	for round := range parRounds {
		for k, t := range targets {
			d, err := startAtOnce(b, t, fmt.Sprintf("r%d", round))
			if err != nil {
				b.Fatal(err)
			}
			res[k].concurrent = append(res[k].concurrent, d...)
		}
	}
	report("seq", res[0].sequential)
	report("par", res[0].concurrent)
	if len(res) > 1 {
		report("base-seq", res[1].sequential)
		report("base-par", res[1].concurrent)
		b.ReportMetric(ms(percentile(res[0].sequential, 0.5))/ms(percentile(res[1].sequential, 0.5)), "seq-p50-ratio")
		b.ReportMetric(ms(percentile(res[0].concurrent, 0.5))/ms(percentile(res[1].concurrent, 0.5)), "par-p50-ratio")
	}
	b.ReportMetric(monitorPSS(b, c, targets[0]), "conmon-pss-kib")
	if len(stepMedians(c.Records())) == 0 {
		b.Fatal("aurae-cri logged no steps lines at debug level")
	}
	printStepMedians("median step durations (sequential and concurrent starts together)", c.Records())
	printStepMedians("median step durations (sequential starts only)", recordsBefore(c.Records(), res[0].sequentialEnd))
}

// recordsBefore is the records logged before t (their "time").
func recordsBefore(records []map[string]any, t time.Time) []map[string]any {
	var out []map[string]any
	for _, r := range records {
		s, _ := r["time"].(string)
		if at, err := time.Parse(time.RFC3339Nano, s); err == nil && at.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// startCRIBinary is startCRI with another aurae-cri binary.
func startCRIBinary(t testing.TB, bin string) *CRI {
	t.Helper()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: %v", baselineEnv, err)
	}
	own := binaries["aurae-cri"]
	binaries["aurae-cri"] = bin
	defer func() { binaries["aurae-cri"] = own }()
	return startCRI(t)
}

// stepMedians is the median of every step of the "… steps" log records,
// keyed "<message>/<step>".
func stepMedians(records []map[string]any) map[string]float64 {
	all := map[string][]float64{}
	for _, r := range records {
		msg, _ := r["msg"].(string)
		if !strings.HasSuffix(msg, " steps") || r["ok"] != true {
			continue
		}
		if steps, ok := r["ms"].(map[string]any); ok {
			for k, v := range steps {
				if f, ok := v.(float64); ok {
					all[msg+"/"+k] = append(all[msg+"/"+k], f)
				}
			}
		}
		// Calls to containerd ("containerd_*"), or to containerd and a
		// registry (a pull's "remote_*").
		for _, remote := range []string{"containerd", "remote"} {
			if calls, ok := r[remote+"_ms"].(map[string]any); ok {
				for k, v := range calls {
					if f, ok := v.(float64); ok {
						all[msg+"/"+remote+" "+k] = append(all[msg+"/"+remote+" "+k], f)
					}
				}
			}
			if f, ok := r[remote+"_calls"].(float64); ok {
				all[msg+"/"+remote+" calls (number)"] = append(all[msg+"/"+remote+" calls (number)"], f)
			}
		}
		if f, ok := r["total_ms"].(float64); ok {
			all[msg+"/total"] = append(all[msg+"/total"], f)
		}
	}
	out := make(map[string]float64, len(all))
	for k, v := range all {
		sort.Float64s(v)
		out[k] = v[len(v)/2]
	}
	return out
}

// printStepMedians prints every step's median (stepMedians) of records on
// stderr, under title: a benchmark's own log is cut to a few lines.
func printStepMedians(title string, records []map[string]any) {
	steps := stepMedians(records)
	names := make([]string, 0, len(steps))
	for k := range steps {
		names = append(names, k)
	}
	sort.Strings(names)
	var sum strings.Builder
	for _, k := range names {
		fmt.Fprintf(&sum, "  %-55s %9.2f ms\n", k, steps[k])
	}
	fmt.Fprintf(os.Stderr, "%s:\n%s", title, sum.String())
}

// idlePods is how many idle pods monitorPSS measures.
const idlePods = 10

// monitorPSS starts idlePods pods of one idle container on t, and returns
// the median PSS (KiB) of their monitors: the conmon processes of c's
// state dir.
func monitorPSS(b *testing.B, c *CRI, t startTarget) float64 {
	b.Helper()
	var pods []string
	defer func() {
		for _, id := range pods {
			_ = t.rt.StopPodSandbox(context.Background(), id)
			if err := t.rt.RemovePodSandbox(context.Background(), id); err != nil {
				b.Error(err)
			}
		}
	}()
	for i := range idlePods {
		name := fmt.Sprintf("idle-%d", i)
		pod := &runtimeapi.PodSandboxConfig{
			Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: randomHex(b, 8)},
			LogDirectory: filepath.Join(t.logDir, name),
			Linux:        &runtimeapi.LinuxPodSandboxConfig{},
		}
		id, err := t.rt.RunPodSandbox(b.Context(), pod, "")
		if err != nil {
			b.Fatal(err)
		}
		pods = append(pods, id)
		ctr, err := t.rt.CreateContainer(b.Context(), id, containerConfig("c", t.image, "sleep", "300"), pod)
		if err != nil {
			b.Fatal(err)
		}
		if err := t.rt.StartContainer(b.Context(), ctr); err != nil {
			b.Fatal(err)
		}
	}
	var pss []float64
	ents, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0]) != "conmon" || !strings.Contains(string(cmd), c.StateDir) {
			continue
		}
		roll, err := os.ReadFile(filepath.Join("/proc", e.Name(), "smaps_rollup"))
		if err != nil {
			continue
		}
		var parts []string
		for _, line := range strings.Split(string(roll), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			switch f[0] {
			case "Pss:":
				v, _ := strconv.ParseFloat(f[1], 64)
				pss = append(pss, v)
			case "Rss:", "Pss_Anon:", "Pss_File:", "Private_Dirty:", "Private_Clean:":
				parts = append(parts, f[0]+f[1])
			}
		}
		if len(pss) == 1 {
			fmt.Fprintf(os.Stderr, "a conmon's memory (KiB): %s\n", strings.Join(parts, " "))
		}
	}
	if len(pss) != idlePods {
		b.Fatalf("found %d monitors of %d idle pods", len(pss), idlePods)
	}
	sort.Float64s(pss)
	fmt.Fprintf(os.Stderr, "conmon PSS of %d idle containers (KiB): %v\n", idlePods, pss)
	return pss[len(pss)/2]
}

// parRounds is how many more batches of benchConcurrentPods pods at once
// BenchmarkNativePodStartSteps starts on each target, taking turns.
const parRounds = 3

// startAtOnce starts benchConcurrentPods pods of one container at once on
// t and returns how long each took to run; it removes them.
func startAtOnce(b *testing.B, t startTarget, prefix string) ([]time.Duration, error) {
	ctx := b.Context()
	type result struct {
		d     time.Duration
		podID string
		err   error
	}
	results := make(chan result, benchConcurrentPods)
	for i := range benchConcurrentPods {
		go func() {
			name := fmt.Sprintf("%s-par-%d", prefix, i)
			pod := &runtimeapi.PodSandboxConfig{
				Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: randomHex(b, 8)},
				Hostname:     name,
				LogDirectory: filepath.Join(t.logDir, name),
				Linux:        &runtimeapi.LinuxPodSandboxConfig{},
			}
			t0 := time.Now()
			podID, err := t.rt.RunPodSandbox(ctx, pod, "")
			if err != nil {
				results <- result{err: err}
				return
			}
			ctr, err := t.rt.CreateContainer(ctx, podID, containerConfig("c", t.image, "sleep", "300"), pod)
			if err == nil {
				err = t.rt.StartContainer(ctx, ctr)
			}
			for err == nil {
				var st *runtimeapi.ContainerStatusResponse
				if st, err = t.rt.ContainerStatus(ctx, ctr, false); err == nil && st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING {
					break
				}
				time.Sleep(time.Millisecond)
			}
			results <- result{d: time.Since(t0), podID: podID, err: err}
		}()
	}
	var ds []time.Duration
	var errs []error
	for range benchConcurrentPods {
		r := <-results
		if r.podID != "" {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_ = t.rt.StopPodSandbox(cctx, r.podID)
			if err := t.rt.RemovePodSandbox(cctx, r.podID); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		ds = append(ds, r.d)
	}
	return ds, errors.Join(errs...)
}
