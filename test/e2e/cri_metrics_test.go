package e2e

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/aurae-runtime/aurae-cri/test/testimage"
)

// scrapeMetrics GETs url and parses the Prometheus text format.
func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return families
}

// sample is the metric of family name whose labels include want, or nil.
func sample(families map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	mf := families[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// TestCRIMetrics: after an image pull, a pod lifecycle, a container that
// completes, one the OOM killer kills and a call that fails, /metrics
// (over HTTP, in the text format) shows them: method counters, the error
// by code, latency histogram counts, pods and containers by state, the OOM
// kill and the exits by reason, the embedded auraed's calls, the Go
// runtime; and every name passes promtool's lint.
func TestCRIMetrics(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := startCRI(t, "--metrics-address", addr)
	ctx := t.Context()
	img := c.pushBusybox(t, "e2e/busybox:metrics", testimage.Options{})

	pod := c.podConfig(t, "metrics")
	podID, err := c.Runtime.RunPodSandbox(ctx, pod, "")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := runToExit(t, c, podID, pod, containerConfig("done", img, "true")); st.GetReason() != "Completed" {
		t.Fatalf("status %v, want Completed", st)
	}
	oom := containerConfig("oom", img, "busybox", "tail", "/dev/zero")
	oom.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
	if st, _ := runToExit(t, c, podID, pod, oom); st.GetReason() != "OOMKilled" {
		t.Fatalf("status %v, want OOMKilled", st)
	}
	// A second pod, run and stopped: one pod ready, one not.
	gone := c.podConfig(t, "metrics-stopped")
	goneID, err := c.Runtime.RunPodSandbox(ctx, gone, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Runtime.StopPodSandbox(ctx, goneID); err != nil {
		t.Fatal(err)
	}
	// The failing call.
	if _, err := c.Runtime.ContainerStatus(ctx, "no-such-container", false); status.Code(err) != codes.NotFound {
		t.Fatalf("status of an unknown container: %v, want NotFound", err)
	}

	families := scrapeMetrics(t, "http://"+addr+"/metrics")
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		m := sample(families, name, labels)
		if m == nil {
			t.Errorf("no %s%v", name, labels)
			return -1
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
		return m.GetUntyped().GetValue()
	}
	expect := func(name string, labels map[string]string, want float64) {
		t.Helper()
		if got := value(name, labels); got != want {
			t.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
	}
	rt := "runtime.v1.RuntimeService"
	run := map[string]string{"service": rt, "method": "RunPodSandbox"}
	expect("aurae_cri_grpc_requests_total", run, 2)
	expect("aurae_cri_grpc_request_duration_seconds", run, 2)
	expect("aurae_cri_grpc_requests_in_flight", run, 0)
	expect("aurae_cri_grpc_errors_total", map[string]string{"service": rt, "method": "ContainerStatus", "code": "NotFound"}, 1)
	if m := sample(families, "aurae_cri_grpc_errors_total", map[string]string{"method": "RunPodSandbox"}); m != nil {
		t.Errorf("RunPodSandbox errors counted: %v", m)
	}
	if h := sample(families, "aurae_cri_grpc_request_duration_seconds", run).GetHistogram(); h != nil {
		// The text format adds the +Inf bucket.
		if b := h.GetBucket(); len(b) < 2 || b[0].GetUpperBound() != 0.001 || b[len(b)-2].GetUpperBound() != 120 || !math.IsInf(b[len(b)-1].GetUpperBound(), 1) {
			t.Errorf("latency buckets %v, want 1 ms … 2 min, +Inf", b)
		} else if b[len(b)-1].GetCumulativeCount() != 2 {
			t.Errorf("+Inf bucket counts %d, want 2", b[len(b)-1].GetCumulativeCount())
		}
	}
	pulls := value("aurae_cri_grpc_requests_total", map[string]string{"service": "runtime.v1.ImageService", "method": "PullImage"})
	expect("aurae_cri_image_pulls_total", map[string]string{"result": "success"}, pulls)
	if v := value("aurae_cri_image_pull_bytes_total", nil); v <= 0 {
		t.Errorf("aurae_cri_image_pull_bytes_total = %v, want the image's size", v)
	}
	handler := map[string]string{"runtime_handler": "default"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range m {
			out[a] = b
		}
		return out
	}
	expect("aurae_cri_pods", with(handler, "state", "ready"), 1)
	expect("aurae_cri_pods", with(handler, "state", "notready"), 1)
	expect("aurae_cri_containers", with(handler, "state", "exited"), 2)
	expect("aurae_cri_containers", with(handler, "state", "running"), 0)
	expect("aurae_cri_container_oom_kills_total", nil, 1)
	expect("aurae_cri_container_exits_total", with(handler, "reason", "OOMKilled"), 1)
	expect("aurae_cri_container_exits_total", with(handler, "reason", "Completed"), 1)
	expect("aurae_cri_cni_failures_total", map[string]string{"operation": "setup"}, 0)
	expect("aurae_cri_recovered_objects", map[string]string{"kind": "pod"}, 0)
	if v := value("aurae_cri_recovery_duration_seconds", nil); v <= 0 {
		t.Errorf("aurae_cri_recovery_duration_seconds = %v", v)
	}
	// The embedded auraed's own calls, on the same endpoint.
	var auraedCalls float64
	for _, m := range families["auraed_grpc_requests_total"].GetMetric() {
		auraedCalls += m.GetCounter().GetValue()
	}
	if auraedCalls == 0 {
		t.Error("no auraed_grpc_requests_total from the embedded auraed")
	}
	expect("auraed_vms", map[string]string{"state": "running"}, 0)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "auraed_cells"} {
		if families[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	// No label carries a pod or container id or name.
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				for _, id := range []string{podID, goneID, "metrics"} {
					if strings.Contains(l.GetValue(), id) {
						t.Errorf("%s has label %s=%q", name, l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
	mfs := make([]*dto.MetricFamily, 0, len(families))
	for _, mf := range families {
		mfs = append(mfs, mf)
	}
	sort.Slice(mfs, func(i, j int) bool { return mfs[i].GetName() < mfs[j].GetName() })
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	if t.Failed() {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			t.Logf("metrics:\n%s", b)
		}
	}
}

// TestMetricsAddressRefused: both daemons refuse, at start and before
// touching anything, to serve metrics in plain HTTP on an address that is
// not loopback, and say why.
func TestMetricsAddressRefused(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		bin  string
		args []string
	}{
		{"aurae-cri", []string{"--socket", filepath.Join(dir, "cri.sock"), "--state-dir", filepath.Join(dir, "cri-state"), "--metrics-address", "0.0.0.0:9"}},
		{"auraed", []string{"--socket", filepath.Join(dir, "aurae.sock"), "--state-dir", filepath.Join(dir, "auraed-state"), "--metrics-address", "0.0.0.0:9"}},
		{"auraed", []string{"--socket", filepath.Join(dir, "aurae.sock"), "--state-dir", filepath.Join(dir, "auraed-state"), "--metrics-address", ":9"}},
	} {
		out, err := exec.Command(binaries[tc.bin], tc.args...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "loopback") || !strings.Contains(string(out), "metrics-address") {
			t.Errorf("%s %q: %v: %s; want exit 2 saying loopback", tc.bin, tc.args, err, out)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("a refused start left %v", entries)
	}
}
