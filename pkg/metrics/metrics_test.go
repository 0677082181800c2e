package metrics

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"

	"github.com/aurae-runtime/aurae-cri/internal/testpki"
)

// lint fails the test on any problem promtool's `check metrics` would
// report about reg's metrics.
func lint(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestGRPC(t *testing.T) {
	reg := NewRegistry()
	g := NewGRPC(reg, CRINamespace)
	const method = "/runtime.v1.RuntimeService/RunPodSandbox"
	end := g.Begin(method)
	inFlight := g.inFlight.WithLabelValues("runtime.v1.RuntimeService", "RunPodSandbox")
	if v := testutil.ToFloat64(inFlight); v != 1 {
		t.Fatalf("in flight during the call = %v, want 1", v)
	}
	end(codes.OK)
	g.Begin(method)(codes.NotFound)
	g.Begin("/runtime.v1.RuntimeService/Version")(codes.OK)
	if v := testutil.ToFloat64(inFlight); v != 0 {
		t.Errorf("in flight after the calls = %v, want 0", v)
	}
	if v := testutil.ToFloat64(g.requests.WithLabelValues("runtime.v1.RuntimeService", "RunPodSandbox")); v != 2 {
		t.Errorf("requests = %v, want 2", v)
	}
	if v := testutil.ToFloat64(g.errors.WithLabelValues("runtime.v1.RuntimeService", "RunPodSandbox", "NotFound")); v != 1 {
		t.Errorf("NotFound errors = %v, want 1", v)
	}
	if n := testutil.CollectAndCount(g.errors); n != 1 {
		t.Errorf("%d error series, want only NotFound's (an OK is no error)", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	h := find(t, mfs, "aurae_cri_grpc_request_duration_seconds", "method", "RunPodSandbox").GetHistogram()
	if h.GetSampleCount() != 2 || len(h.GetBucket()) != len(LatencyBuckets) {
		t.Errorf("histogram: %d samples, %d buckets; want 2, %d", h.GetSampleCount(), len(h.GetBucket()), len(LatencyBuckets))
	}
	if b := h.GetBucket(); b[0].GetUpperBound() != 0.001 || b[len(b)-1].GetUpperBound() != 120 {
		t.Errorf("buckets from %v to %v, want 1 ms to 2 min", b[0].GetUpperBound(), b[len(b)-1].GetUpperBound())
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		found := false
		for _, mf := range mfs {
			found = found || mf.GetName() == name
		}
		if !found {
			t.Errorf("%s missing: no Go runtime or process collector", name)
		}
	}
	lint(t, reg)
	var none *GRPC
	none.Begin(method)(codes.Internal) // a nil GRPC counts nothing, and does not panic
}

func find(t *testing.T, mfs []*dto.MetricFamily, name, label, value string) *dto.Metric {
	t.Helper()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return nil
}

func TestSplitMethod(t *testing.T) {
	for in, want := range map[string][2]string{
		"/runtime.v1.RuntimeService/Version": {"runtime.v1.RuntimeService", "Version"},
		"/aurae.vms.v0.VmService/Start":      {"aurae.vms.v0.VmService", "Start"},
		"odd":                                {"unknown", "odd"},
	} {
		if s, m := SplitMethod(in); s != want[0] || m != want[1] {
			t.Errorf("SplitMethod(%q) = %q, %q; want %q", in, s, m, want)
		}
	}
}

func TestCRI(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewCRI(reg)
	m.ContainerExited("default", "OOMKilled")
	m.ContainerExited("default", "Completed")
	m.ContainerExited("aurae-vm", "something a guest made up")
	m.ImagePulled(1.5, 1000, false)
	m.ImagePulled(0.5, 0, true)
	m.CNIFailed("setup")
	m.Recovered(2, 3, 4)
	m.MarkedUnknown()
	m.AuraeReconnected()
	m.GuestReconnected()
	want := `
# HELP aurae_cri_container_exits_total Container exits recorded, by runtime handler and reason (Completed, Error, OOMKilled, StartError, Unknown, Other).
# TYPE aurae_cri_container_exits_total counter
aurae_cri_container_exits_total{reason="Completed",runtime_handler="default"} 1
aurae_cri_container_exits_total{reason="OOMKilled",runtime_handler="default"} 1
aurae_cri_container_exits_total{reason="Other",runtime_handler="aurae-vm"} 1
# HELP aurae_cri_container_oom_kills_total Containers that exited killed by the OOM killer (reason OOMKilled).
# TYPE aurae_cri_container_oom_kills_total counter
aurae_cri_container_oom_kills_total 1
# HELP aurae_cri_image_pulls_total Image pulls, by result (success or failure).
# TYPE aurae_cri_image_pulls_total counter
aurae_cri_image_pulls_total{result="failure"} 1
aurae_cri_image_pulls_total{result="success"} 1
# HELP aurae_cri_image_pull_bytes_total Size (compressed content, in bytes) of the images pulled successfully.
# TYPE aurae_cri_image_pull_bytes_total counter
aurae_cri_image_pull_bytes_total 1000
# HELP aurae_cri_cni_failures_total CNI calls that failed, by operation (setup or teardown).
# TYPE aurae_cri_cni_failures_total counter
aurae_cri_cni_failures_total{operation="setup"} 1
aurae_cri_cni_failures_total{operation="teardown"} 0
# HELP aurae_cri_recovered_objects Objects found in the state by the last recovery at start, by kind (pod or container).
# TYPE aurae_cri_recovered_objects gauge
aurae_cri_recovered_objects{kind="container"} 4
aurae_cri_recovered_objects{kind="pod"} 3
# HELP aurae_cri_containers_marked_unknown_total Running containers marked UNKNOWN by a recovery because their runtime could not tell their state.
# TYPE aurae_cri_containers_marked_unknown_total counter
aurae_cri_containers_marked_unknown_total 1
# HELP aurae_cri_aurae_reconnects_total Times the connection to auraed became ready again after it had been ready before.
# TYPE aurae_cri_aurae_reconnects_total counter
aurae_cri_aurae_reconnects_total 1
# HELP aurae_cri_vm_guest_reconnects_total Times the connection to a VM pod's guest auraed became ready again after it had been ready before.
# TYPE aurae_cri_vm_guest_reconnects_total counter
aurae_cri_vm_guest_reconnects_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"aurae_cri_container_exits_total", "aurae_cri_container_oom_kills_total", "aurae_cri_image_pulls_total",
		"aurae_cri_image_pull_bytes_total", "aurae_cri_cni_failures_total", "aurae_cri_recovered_objects",
		"aurae_cri_containers_marked_unknown_total", "aurae_cri_aurae_reconnects_total", "aurae_cri_vm_guest_reconnects_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.pullDuration); n != 1 {
		t.Errorf("pull duration: %d series", n)
	}
	if v := testutil.ToFloat64(m.recoverySecs); v != 2 {
		t.Errorf("recovery duration = %v, want 2", v)
	}
	lint(t, reg)
	var none *CRI // counts nothing, and does not panic
	none.ContainerExited("default", "OOMKilled")
	none.ImagePulled(1, 1, false)
	none.CNIFailed("setup")
	none.Recovered(1, 1, 1)
	none.MarkedUnknown()
	none.AuraeReconnected()
	none.GuestReconnected()
}

func TestCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	states := []string{"ready", "ready", "notready"}
	reg.MustRegister(NewCounts("aurae_cri_test_pods", "Pods by state.", []string{"state", "runtime_handler"},
		func(add func(float64, ...string)) {
			for _, s := range states {
				add(1, s, "default")
			}
			add(1, "too few labels") // dropped, never a malformed series
		}).Zero([]string{"ready", "aurae-vm"}, []string{"ready", "default"}),
		NewCounts("auraed_test_cells", "Cells.", nil, func(add func(float64, ...string)) { add(7) }))
	want := `
# HELP aurae_cri_test_pods Pods by state.
# TYPE aurae_cri_test_pods gauge
aurae_cri_test_pods{runtime_handler="aurae-vm",state="ready"} 0
aurae_cri_test_pods{runtime_handler="default",state="notready"} 1
aurae_cri_test_pods{runtime_handler="default",state="ready"} 2
# HELP auraed_test_cells Cells.
# TYPE auraed_test_cells gauge
auraed_test_cells 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	lint(t, reg)
}

func TestCheckAddress(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9898", "127.1.2.3:0", "[::1]:9898", "localhost:0"} {
		if err := CheckAddress(addr, false); err != nil {
			t.Errorf("CheckAddress(%q, no TLS) = %v", addr, err)
		}
	}
	for _, addr := range []string{"0.0.0.0:9898", ":9898", "[::]:9898", "10.0.0.1:9898", "node.example:9898"} {
		if err := CheckAddress(addr, false); !errors.Is(err, ErrNotLoopback) {
			t.Errorf("CheckAddress(%q, no TLS) = %v, want ErrNotLoopback", addr, err)
		}
		if err := CheckAddress(addr, true); err != nil {
			t.Errorf("CheckAddress(%q, TLS) = %v", addr, err)
		}
	}
	if err := CheckAddress("9898", false); err == nil {
		t.Error("an address without a port accepted")
	}
}

func TestServePlainHTTP(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	if _, err := Serve("0.0.0.0:0", nil, NewRegistry(), logger); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("plain HTTP on every interface: %v, want ErrNotLoopback", err)
	}
	reg := NewRegistry()
	NewGRPC(reg, AuraedNamespace).Begin("/aurae.cells.v0.CellService/Allocate")(codes.AlreadyExists)
	s, err := Serve("127.0.0.1:0", nil, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	client := &http.Client{Timeout: time.Minute}
	families := scrape(t, client, "http://"+s.Addr().String()+"/metrics")
	mf := families["auraed_grpc_errors_total"]
	if mf == nil || len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Fatalf("auraed_grpc_errors_total = %v", mf)
	}
	resp, err := client.Get("http://" + s.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / = %s, want 404: only /metrics is served", resp.Status)
	}
}

func TestServeMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "aurae")
	srv, cl := ca.Server("auraed"), ca.Client("prometheus")
	cfg := serverTLS(t, srv, ca.CertFile)
	s, err := Serve("127.0.0.1:0", cfg, NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	url := "https://" + s.Addr().String() + "/metrics"
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(cl.CertFile, cl.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	with := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
	}}}
	if families := scrape(t, with, url); families["go_goroutines"] == nil {
		t.Error("no go_goroutines over mutual TLS")
	}
	without := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	if resp, err := without.Get(url); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("a client without a certificate was served: %s", resp.Status)
	}
	if resp, err := (&http.Client{Timeout: time.Minute}).Get("http://" + s.Addr().String() + "/metrics"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP served beside mutual TLS")
		}
	}
}

func serverTLS(t *testing.T, p testpki.Pair, caFile string) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS13}
}

func scrape(t *testing.T, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return families
}
