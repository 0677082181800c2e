package cri

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/pkg/metrics"
)

// TestMetrics: the pods and containers gauges count the store at each
// scrape, an OOM-killed container's exit is counted once with its reason,
// and the recovery is recorded; every name passes promtool's lint.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixture(t, false)
	f.metrics = metrics.NewCRI(reg)
	f.rt = f.runtime(t)
	reg.MustRegister(f.rt.StateCollectors()...)
	if err := f.rt.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	podID := f.startContainers(t, 2)
	if _, err := f.rt.RunPodSandbox(t.Context(), &runtimeapi.RunPodSandboxRequest{Config: podConfig("other")}); err != nil {
		t.Fatal(err)
	}
	f.ctrl.exit("c1", 137, "OOMKilled")
	// The monitor records the exit; wait for it (no deadline of our own).
	for {
		c, err := f.store.Container("c1")
		if err != nil {
			t.Fatal(err)
		}
		if c.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := f.rt.StopPodSandbox(t.Context(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP aurae_cri_pods Pod sandboxes recorded, by state (ready, notready) and runtime handler (default: none named).
# TYPE aurae_cri_pods gauge
aurae_cri_pods{runtime_handler="default",state="notready"} 1
aurae_cri_pods{runtime_handler="default",state="ready"} 1
# HELP aurae_cri_containers Containers recorded, by state (created, running, exited, unknown) and their pod's runtime handler.
# TYPE aurae_cri_containers gauge
aurae_cri_containers{runtime_handler="default",state="created"} 0
aurae_cri_containers{runtime_handler="default",state="exited"} 2
aurae_cri_containers{runtime_handler="default",state="running"} 0
aurae_cri_containers{runtime_handler="default",state="unknown"} 0
# HELP aurae_cri_container_oom_kills_total Containers that exited killed by the OOM killer (reason OOMKilled).
# TYPE aurae_cri_container_oom_kills_total counter
aurae_cri_container_oom_kills_total 1
# HELP aurae_cri_recovered_objects Objects found in the state by the last recovery at start, by kind (pod or container).
# TYPE aurae_cri_recovered_objects gauge
aurae_cri_recovered_objects{kind="container"} 0
aurae_cri_recovered_objects{kind="pod"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"aurae_cri_pods", "aurae_cri_containers", "aurae_cri_container_oom_kills_total", "aurae_cri_recovered_objects"); err != nil {
		t.Error(err)
	}
	// c1 by the OOM killer, c0 by the stop of its pod (the fake's exit
	// has no reason: Error for its code).
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exits := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "aurae_cri_container_exits_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue() + " "
			}
			exits[strings.TrimSpace(labels)] = m.GetCounter().GetValue()
		}
	}
	if exits["reason=OOMKilled runtime_handler=default"] != 1 || len(exits) != 2 {
		t.Errorf("exits %v, want one OOMKilled and one other", exits)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
