package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// removeRounds is how many containers BenchmarkContainerRemoveSteps removes
// and imageRounds how many ImageStatus and ListImages calls it makes.
const (
	removeRounds = 20
	imageRounds  = 50
)

// BenchmarkContainerRemoveSteps measures, one call at a time on an
// aurae-cri at debug level, RemoveContainer of a container just stopped
// (as critest's container benchmark does: create, start, stop, remove) and
// ImageStatus and ListImages of a pulled image, and critest's image cycle
// (PullImage, ImageStatus, RemoveImage of another image); it reports their p50/p99
// and prints the median of each step of the "remove container steps"
// (aurae-cri) and "container remove steps" (auraed) log lines. With
// AURAE_E2E_BASELINE_CRI set to another aurae-cri binary, that one is
// measured too (after this tree's), its figures prefixed "base-".
func BenchmarkContainerRemoveSteps(b *testing.B) {
	b.ResetTimer()
	removeSteps(b, "", startCRI(b))
	if bin := os.Getenv(baselineEnv); bin != "" {
		removeSteps(b, "base-", startCRIBinary(b, bin))
	}
}

func removeSteps(b *testing.B, prefix string, c *CRI) {
	image := c.pushBusybox(b, "bench/busybox:1", testimage.Options{})
	ctx := b.Context()
	cfg := c.podConfig(b, "remove")
	cfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
	}
	pod, err := c.Runtime.RunPodSandbox(ctx, cfg, "")
	if err != nil {
		b.Fatal(err)
	}
	var removes, statuses, lists []time.Duration
	for i := range removeRounds {
		id, err := c.Runtime.CreateContainer(ctx, pod, containerConfig(fmt.Sprintf("c%d", i), image, "sleep", "300"), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Runtime.StartContainer(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := c.Runtime.StopContainer(ctx, id, 0); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := c.Runtime.RemoveContainer(ctx, id); err != nil {
			b.Fatal(err)
		}
		removes = append(removes, time.Since(t0))
	}
	for range imageRounds {
		t0 := time.Now()
		st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: image}, false)
		if err != nil || st.GetImage() == nil {
			b.Fatalf("image status of %s: %v, %v", image, st, err)
		}
		statuses = append(statuses, time.Since(t0))
		t0 = time.Now()
		if _, err := c.Images.ListImages(ctx, nil); err != nil {
			b.Fatal(err)
		}
		lists = append(lists, time.Since(t0))
	}
	// critest's image cycle: pull, status, remove of an image no container
	// uses, one at a time.
	cycle := c.Registry.Push(b, "bench/cycle:1", testimage.MustBusybox(b, testimage.Options{Env: []string{"CYCLE=1"}}))
	var pulls, removals []time.Duration
	for range removeRounds {
		t0 := time.Now()
		if _, err := c.Images.PullImage(ctx, &runtimeapi.ImageSpec{Image: cycle}, nil, nil); err != nil {
			b.Fatal(err)
		}
		pulls = append(pulls, time.Since(t0))
		if st, err := c.Images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: cycle}, false); err != nil || st.GetImage() == nil {
			b.Fatalf("image status of %s: %v, %v", cycle, st, err)
		}
		t0 = time.Now()
		if err := c.Images.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: cycle}); err != nil {
			b.Fatal(err)
		}
		removals = append(removals, time.Since(t0))
	}
	for name, d := range map[string][]time.Duration{"remove-container": removes, "image-status": statuses, "list-images": lists, "pull-image": pulls, "remove-image": removals} {
		b.ReportMetric(ms(percentile(d, 0.5)), prefix+name+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 0.99)), prefix+name+"-p99-ms")
	}
	steps := stepMedians(c.Records())
	var names []string
	for k := range steps {
		if strings.HasPrefix(k, "remove container steps/") || strings.HasPrefix(k, "container remove steps/") ||
			strings.HasPrefix(k, "pull image steps/") || strings.HasPrefix(k, "remove image steps/") {
			names = append(names, k)
		}
	}
	if len(names) == 0 {
		if prefix != "" {
			return // a baseline from before the steps were logged
		}
		b.Fatal("no remove steps logged at debug level")
	}
	sort.Strings(names)
	var sum strings.Builder
	for _, k := range names {
		fmt.Fprintf(&sum, "  %-45s %8.2f ms\n", k, steps[k])
	}
	// On stderr: a benchmark's log is cut to a few lines.
	fmt.Fprintf(os.Stderr, "%smedian remove step durations:\n%s", prefix, sum.String())
}
